"""Both generations of the public API, as users write them, on a random-weight resnet18.

First generation: ``Cls(model=..., target_layer=..., use_cuda=False)`` and
``cam(input_tensor=..., target_category=...)``. Second: ``target_layers=[...]``, ``targets=[...]`` with
``ClassifierOutputTarget``, the context manager and the positional call. Each old spelling must give the
same maps as its new equivalent; mixing both names of one argument is a TypeError.
"""

import importlib

import numpy as np
import pytest
import torch
import torchvision

from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

ALL_CLASSES = [GradCAM, ScoreCAM, GradCAMPlusPlus, AblationCAM, XGradCAM, EigenCAM]
PERTURBATION = (ScoreCAM, AblationCAM)
SIZE = 64  # resnet18's layer4 gives a 2x2 map


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def rgb_img():
    """A smooth random RGB float image in [0, 1], (64, 64, 3)."""
    rng = np.random.default_rng(0)
    coarse = rng.random((8, 8, 3))
    return np.clip(np.kron(coarse, np.ones((8, 8, 1))), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def x(rgb_img):
    return preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def x2():
    """A batch of two different images with different top classes (381 and 128; this random resnet18
    gives class 381 to nearly every input, noise included, but not to a horizontal ramp)."""
    noise = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    ramp = torch.linspace(-2, 2, SIZE).repeat(3, SIZE, 1)
    return torch.stack([noise, ramp])


def top_classes(model, x):
    with torch.no_grad():
        return model(x).argmax(1).tolist()


def check_maps(maps, batch, size=SIZE):
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (batch, size, size)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0
    for m in maps:
        assert m.min() == 0
        assert m.max() == pytest.approx(1, abs=1e-4)


# ------------------------------------------------------------------------------ the first generation


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_first_generation_equals_second(model, x, cls):
    if cls in PERTURBATION:
        x = x[:, :, :33, :33]  # still a 2x2 map; ScoreCAM costs 512 forward passes per call
    cam = cls(model=model, target_layer=model.layer4[-1], use_cuda=False)
    if cls in PERTURBATION:
        cam.batch_size = 32
    old = cam(input_tensor=x, target_category=281)
    check_maps(old, 1, x.shape[-1])

    with cls(model=model, target_layers=[model.layer4[-1]]) as cam:
        if cls in PERTURBATION:
            cam.batch_size = 32
        new = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])
    np.testing.assert_array_equal(old, new)
    if cls is not EigenCAM:  # EigenCAM is class-agnostic
        with torch.no_grad():
            assert model(x).argmax(1).item() != 281  # so the class really is the one asked for
        top = cls(model, [model.layer4[-1]])(x)
        assert np.abs(top - new).max() > 0.05, "target_category=281 gave the map of the top class"


def test_first_generation_smoothing_call(model, x):
    cam = GradCAM(model=model, target_layer=model.layer4[-1], use_cuda=False)
    grayscale_cam = cam(input_tensor=x, target_category=None, aug_smooth=True, eigen_smooth=True)
    assert grayscale_cam.shape == (1, SIZE, SIZE)
    assert grayscale_cam.dtype == np.float32
    assert np.isfinite(grayscale_cam).all()
    assert grayscale_cam.min() >= 0
    assert grayscale_cam.max() <= 1 + 1e-6
    assert grayscale_cam.max() - grayscale_cam.min() > 0.1
    # The same as the second generation's spelling.
    new = GradCAM(model, [model.layer4[-1]])(x, targets=None, aug_smooth=True, eigen_smooth=True)
    np.testing.assert_array_equal(grayscale_cam, new)


def test_first_generation_positional_constructor(model, x):
    cam = GradCAM(model, model.layer4[-1], False)  # GradCAM(model, target_layer, use_cuda)
    assert cam.target_layers == [model.layer4[-1]]
    assert cam.reshape_transform is None
    reference = GradCAM(model, target_layers=[model.layer4[-1]])(x, targets=[ClassifierOutputTarget(281)])
    np.testing.assert_array_equal(cam(x, 281), reference)


def test_first_generation_reshape_transform():
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(weights=None, image_size=32).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    layer = vit.encoder.layers[-1].ln_1
    reshape_transform = vit_reshape_transform
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))

    cam = GradCAM(model=vit, target_layer=layer, reshape_transform=reshape_transform)
    old = cam(input_tensor=x, target_category=7)
    new = GradCAM(vit, target_layers=[layer], reshape_transform=reshape_transform)(
        x, [ClassifierOutputTarget(7)]
    )
    assert old.shape == (1, 32, 32)
    assert old.max() == pytest.approx(1, abs=1e-4)
    assert old.min() == 0
    np.testing.assert_array_equal(old, new)


def test_target_category_list_is_one_class_per_image(model, x2):
    cam = GradCAM(model=model, target_layer=model.layer4[-1])
    old = cam(input_tensor=x2, target_category=[3, 281])
    new = cam(input_tensor=x2, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(281)])
    check_maps(old, 2)
    np.testing.assert_array_equal(old, new)
    # Image by image: each image got its own class.
    np.testing.assert_allclose(old[0], cam(x2[:1], [ClassifierOutputTarget(3)])[0], atol=2e-4)
    np.testing.assert_allclose(old[1], cam(x2[1:], [ClassifierOutputTarget(281)])[0], atol=2e-4)
    swapped = cam(input_tensor=x2, target_category=[281, 3])
    assert np.abs(swapped - old).max() > 0.05


def test_target_category_int_means_that_class_for_every_image(model, x2):
    cam = GradCAM(model=model, target_layer=model.layer4[-1])
    old = cam(input_tensor=x2, target_category=281)
    both = cam(input_tensor=x2, targets=[ClassifierOutputTarget(281), ClassifierOutputTarget(281)])
    np.testing.assert_array_equal(old, both)
    np.testing.assert_array_equal(cam(x2, 281), both)  # an int as the new `targets` too


def test_no_target_means_each_images_top_class(model, x2):
    classes = top_classes(model, x2)
    assert classes[0] != classes[1]  # the two images really have different top classes
    cam = GradCAM(model, target_layers=[model.layer4[-1]])
    explicit = cam(x2, [ClassifierOutputTarget(k) for k in classes])
    np.testing.assert_array_equal(cam(x2), explicit)  # targets optional
    np.testing.assert_array_equal(cam(input_tensor=x2, targets=None), explicit)
    np.testing.assert_array_equal(cam(input_tensor=x2, target_category=None), explicit)


# ------------------------------------------------------------------------------ the second generation


def test_second_generation_verbatim(model, x, rgb_img):
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        grayscale_cam = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])
    check_maps(grayscale_cam, 1)
    positional = cam(x, [ClassifierOutputTarget(281)])  # still usable after the with block
    np.testing.assert_array_equal(positional, grayscale_cam)

    visualization = show_cam_on_image(rgb_img, grayscale_cam[0], use_rgb=True)
    assert visualization.shape == (SIZE, SIZE, 3)
    assert visualization.dtype == np.uint8
    # The JET colormap: red where the map is 1, blue where it is 0 (RGB order with use_rgb=True).
    hot = np.unravel_index(grayscale_cam[0].argmax(), grayscale_cam[0].shape)
    cold = np.unravel_index(grayscale_cam[0].argmin(), grayscale_cam[0].shape)
    blend = np.float32(visualization) / 255
    heat_hot = blend[hot] - 0.5 * rgb_img[hot]  # up to the final rescaling by the max
    heat_cold = blend[cold] - 0.5 * rgb_img[cold]
    assert heat_hot[0] > heat_hot[2] + 0.1
    assert heat_cold[2] > heat_cold[0] + 0.1


def test_batch_size_attribute(model):
    """Only the speed depends on it (AblationCAM here; ScoreCAM uses it in the test above)."""
    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(5))  # a 2x2 map
    cam = AblationCAM(model=model, target_layers=[model.layer4[-1]])
    cam.batch_size = 32
    assert cam.batch_size == 32
    small = cam(x, [ClassifierOutputTarget(281)])
    cam.batch_size = 512  # all 512 channels at once: the same maps
    np.testing.assert_allclose(cam(x, [ClassifierOutputTarget(281)]), small, atol=1e-3)
    assert small.max() == pytest.approx(1, abs=1e-4)


def test_single_module_target_layers_is_that_module(model, x):
    layer4 = model.layer4  # an nn.Sequential: iterable, but one module
    cam = GradCAM(model=model, target_layers=layer4)
    assert cam.target_layers == [layer4]
    one = cam(x, [ClassifierOutputTarget(281)])
    np.testing.assert_array_equal(one, GradCAM(model, [layer4])(x, [ClassifierOutputTarget(281)]))
    # Not its two blocks: those give a different (fused) map.
    children = GradCAM(model, list(layer4))(x, [ClassifierOutputTarget(281)])
    assert np.abs(children - one).max() > 0.05
    # The same for the first generation's name.
    np.testing.assert_array_equal(GradCAM(model, target_layer=layer4)(x, 281), one)


# ------------------------------------------------------------------------------ mixing, devices, imports


def test_mixing_old_and_new_names_is_a_type_error(model, x):
    layer = model.layer4[-1]
    with pytest.raises(TypeError, match="target_layer"):
        GradCAM(model=model, target_layer=layer, target_layers=[layer])
    with pytest.raises(TypeError, match="use_cuda"):
        GradCAM(model=model, target_layers=[layer], use_cuda=False, device="cpu")
    with pytest.raises(TypeError, match="use_cuda"):
        GradCAM(model, layer, False, use_cuda=False)
    cam = GradCAM(model=model, target_layers=[layer])
    with pytest.raises(TypeError, match="target_category"):
        cam(input_tensor=x, targets=[ClassifierOutputTarget(281)], target_category=281)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_use_cuda_without_cuda_is_a_clear_value_error(model):
    with pytest.raises(ValueError, match="CUDA"):
        GradCAM(model=model, target_layer=model.layer4[-1], use_cuda=True)
    with pytest.raises(ValueError, match="CUDA"):
        GradCAM(model, target_layers=[model.layer4[-1]], device="cuda")


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("pytorch_grad_cam.grad_cam", "GradCAM"),
        ("pytorch_grad_cam.grad_cam_plusplus", "GradCAMPlusPlus"),
        ("pytorch_grad_cam.xgrad_cam", "XGradCAM"),
        ("pytorch_grad_cam.eigen_cam", "EigenCAM"),
        ("pytorch_grad_cam.score_cam", "ScoreCAM"),
        ("pytorch_grad_cam.ablation_cam", "AblationCAM"),
        ("pytorch_grad_cam.hirescam", "HiResCAM"),
        ("pytorch_grad_cam.layer_cam", "LayerCAM"),
        ("pytorch_grad_cam.eigen_grad_cam", "EigenGradCAM"),
        ("pytorch_grad_cam.grad_cam_elementwise", "GradCAMElementWise"),
        ("pytorch_grad_cam.kpca_cam", "KPCA_CAM"),
        ("pytorch_grad_cam.fem", "FEM"),
        ("pytorch_grad_cam.random_cam", "RandomCAM"),
        ("pytorch_grad_cam.seg_eigen_cam", "SegEigenCAM"),
        ("pytorch_grad_cam.shapley_cam", "ShapleyCAM"),
        ("pytorch_grad_cam.fullgrad_cam", "FullGrad"),
        ("pytorch_grad_cam.guided_backprop", "GuidedBackpropReLUModel"),
        ("pytorch_grad_cam.finer_cam", "FinerCAM"),
        ("pytorch_grad_cam.refine_cam", "RefineCAM"),
        ("pytorch_grad_cam.sess", "SESS"),
        ("pytorch_grad_cam.feature_factorization.deep_feature_factorization", "DeepFeatureFactorization"),
    ],
)
def test_reference_import_paths(module, name):
    import pytorch_grad_cam

    assert getattr(importlib.import_module(module), name) is getattr(pytorch_grad_cam, name)


def test_reference_utils_import_paths():
    from pytorch_grad_cam import utils
    from pytorch_grad_cam.utils.image import deprocess_image, scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, RawScoresOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    assert utils.ClassifierOutputTarget is ClassifierOutputTarget
    assert utils.ClassifierOutputSoftmaxTarget is ClassifierOutputSoftmaxTarget
    assert utils.RawScoresOutputTarget is RawScoresOutputTarget
    assert utils.show_cam_on_image is show_cam_on_image
    assert utils.preprocess_image is preprocess_image
    assert utils.deprocess_image is deprocess_image
    assert utils.scale_cam_image is scale_cam_image
    assert utils.vit_reshape_transform is vit_reshape_transform
    assert utils.swinT_reshape_transform is swinT_reshape_transform


# ------------------------------------------------------------------------------ aug_smooth, by hand


def test_aug_smooth_is_the_mean_of_the_six_deaugmented_maps(model, x2):
    """Default augmentations: horizontal flip x multiply by 0.9, 1, 1.1; each map is flipped back."""
    cam = GradCAM(model=model, target_layer=model.layer4[-1])
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(281)]
    by_hand = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            augmented = (torch.flip(x2, dims=[3]) if flip else x2) * factor
            maps = cam(augmented, targets)  # (2, H, W)
            by_hand.append(maps[:, :, ::-1] if flip else maps)
    expected = np.mean(by_hand, axis=0)
    smoothed = cam(input_tensor=x2, target_category=[3, 281], aug_smooth=True)
    assert smoothed.shape == (2, SIZE, SIZE)
    assert smoothed.dtype == np.float32
    # The engine runs the 12 augmented images as one batch; float32 noise between batch sizes only.
    np.testing.assert_allclose(smoothed, expected, rtol=0, atol=2e-4)
    # ... and it is not just the unsmoothed map (flipping really changes the map of a random net).
    assert np.abs(smoothed - cam(x2, targets)).max() > 0.02

    # targets=None: every copy explains the top class of the unaugmented image.
    classes = top_classes(model, x2)
    np.testing.assert_allclose(cam(x2, aug_smooth=True), cam(x2, classes, aug_smooth=True), atol=1e-6)
