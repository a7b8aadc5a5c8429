"""FinerCAM, RefineCAM and SESS against plain references of their formulas, written here.

* FinerCAM == Grad-CAM by hand on the FinerCAM score computed by hand (float64, numpy picks the classes
  whose logits are closest to the main class's); one forward pass per call.
* RefineCAM == the product of per-layer Grad-CAM++ maps computed by hand, each normalised, normalised
  again; one forward pass for all layers.
* SESS == a plain loop over scales and windows: per-patch scores, pre-filtering, weights, the library's
  base method per patch (the per-patch oracle), pasting into a frame of zeros, cv2/torch resizing, the
  thresholded mean (or max), a Gaussian blur and min-max normalisation, all re-implemented here.
* Optional black-box comparison of the three with grad-cam 1.5.7 (a subprocess with
  PYTHONPATH=GRAD_CAM_REFERENCE_PATH).
"""

import functools
import warnings

import numpy as np
import pytest
import torch
import torchvision

from pytorch_grad_cam import SESS, FinerCAM, GradCAM, GradCAMPlusPlus, RefineCAM, ScoreCAM
from pytorch_grad_cam.finer_cam import FinerCAM as FinerCAMPath
from pytorch_grad_cam.refine_cam import RefineCAM as RefineCAMPath
from pytorch_grad_cam.sess import SESS as SESSPath
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from tests.models import CountCalls, TinyPyramid, seeded_input, tiny_net
from tests.reference_library import REFERENCE_PATH, TESTS_DIR, reference_has, run_reference
from tests.references.composite import (
    assert_nontrivial,
    cam_patch_map_by_hand,
    finer_by_hand,
    full_map,
    layer_map_by_hand,
    normalize,
    refine_by_hand,
    sess_by_hand,
)


@pytest.fixture
def finer_case():
    # seed 0, classes 5; input seed 3: the top classes differ per image.
    return tiny_net(2, seed=0), seeded_input(2, 3, 12, 16, seed=3)


@pytest.mark.parametrize(
    ("options", "hand"),
    [
        ({}, {}),
        ({"alpha": 0.4}, {"alpha": 0.4}),
        ({"comparison_categories": [2, 4]}, {"ranks": (2, 4)}),
        ({"target_idx": 2}, {"mains": [2, 2]}),
        ({"comparison_classes": [[0, 4], [3]], "alpha": 0.7}, {"classes": [[0, 4], [3]], "alpha": 0.7}),
        ({"comparison_classes": [1]}, {"classes": [[1], [1]]}),
    ],
    ids=["default", "alpha", "ranks", "target_idx", "per-image-classes", "shared-classes"],
)
def test_finercam_is_gradcam_of_the_finer_score(finer_case, options, hand):
    model, x = finer_case
    expected = finer_by_hand(model, x, "conv2", **hand)  # negative activations too
    assert_nontrivial(expected)
    got = FinerCAM(model, [model.conv2])(x, **options)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_finercam_class_targets_become_the_main_class(finer_case):
    model, x = finer_case
    expected = finer_by_hand(model, x, "relu3", mains=[4, 1], alpha=0.5)
    assert_nontrivial(expected)
    cam = FinerCAM(model, [model.relu3], alpha=0.5)  # constructor default alpha
    np.testing.assert_allclose(cam(x, targets=[4, ClassifierOutputTarget(1)]), expected, atol=1e-5)
    # A FinerWeightedTarget or any other callable is used as given.
    with torch.no_grad():
        y = model(x)
    picked = [
        FinerWeightedTarget(4, [int(c) for c in np.argsort((y[0] - y[0, 4]).abs().numpy())[1:4]], 0.5),
        FinerWeightedTarget(1, [int(c) for c in np.argsort((y[1] - y[1, 1]).abs().numpy())[1:4]], 0.5),
    ]
    np.testing.assert_allclose(cam(x, targets=picked), expected, atol=1e-5)
    # Class 2's score has no positive evidence at relu3 for either image: both maps are zeros (warned).
    constant = r"the CAM of layer 'relu3' is constant for image\(s\) \[0, 1\]"
    with pytest.warns(RuntimeWarning, match=constant):
        plain = GradCAM(model, [model.relu3])(x, targets=[lambda out: out[2]] * 2)
    with pytest.warns(RuntimeWarning, match=constant):
        np.testing.assert_allclose(cam(x, targets=[lambda out: out[2]] * 2), plain, atol=1e-6)
    # alpha = 0 is the plain logit: FinerCAM == the base method (with any comparison classes).
    np.testing.assert_allclose(
        cam(x, targets=[4, 1], alpha=0.0), GradCAM(model, [model.relu3])(x, [4, 1]), atol=1e-5
    )
    assert np.abs(cam(x, targets=[4, 1]) - GradCAM(model, [model.relu3])(x, [4, 1])).max() > 0.1


def test_finercam_one_forward_pass_and_any_base_method(finer_case):
    model, x = finer_case
    counted = CountCalls(model)
    FinerCAM(counted, [model.relu2])(x)
    assert counted.calls == 1  # the classes are picked from the pass the base method uses
    # Another base method (class or name): the base method on the FinerCAM targets built by hand.
    with torch.no_grad():
        y = model(x)
    targets = []
    for i, main in enumerate(y.argmax(-1).tolist()):
        order = np.argsort((y[i] - y[i, main]).abs().numpy(), kind="stable")
        targets.append(FinerWeightedTarget(main, [int(c) for c in order[1:4] if c != main], 1.0))
    for base in (ScoreCAM, "gradcam++"):
        expected = (
            ScoreCAM(model, [model.relu2], batch_size=4)
            if base is ScoreCAM
            else GradCAMPlusPlus(model, [model.relu2])
        )(x, targets)
        assert_nontrivial(expected, peak=0.9)
        got = FinerCAM(model, [model.relu2], base_method=base, batch_size=4)(x)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_finercam_aug_smooth_uses_the_classes_of_the_unaugmented_image(finer_case):
    model, x = finer_case
    with torch.no_grad():
        y = model(x)
    targets = []
    for i, main in enumerate(y.argmax(-1).tolist()):
        order = np.argsort((y[i] - y[i, main]).abs().numpy(), kind="stable")
        targets.append(FinerWeightedTarget(main, [int(c) for c in order[1:4]], 1.0))
    tta = None  # the default: flips x multiply
    expected = GradCAM(model, [model.relu2], tta_transforms=tta)(x, targets, aug_smooth=True)
    got = FinerCAM(model, [model.relu2])(x, aug_smooth=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_finercam_reference_call_order_and_errors(finer_case):
    model, x = finer_case
    cam = FinerCAM(model, [model.relu2])
    # The reference's positional order: (input, targets, eigen_smooth, alpha, comparison_categories).
    np.testing.assert_allclose(
        cam(x, None, True, 0.5, [1, 2]), cam(x, eigen_smooth=True, alpha=0.5, comparison_categories=[1, 2])
    )
    np.testing.assert_allclose(cam.forward(x, None, False, 0.5), cam(x, alpha=0.5))
    counted = CountCalls(model)
    cam = FinerCAM(counted, [model.relu2])
    for kwargs, error, match in [
        ({"targets": [1, 2], "target_idx": 1}, TypeError, "targets or target_idx"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite float, got nan"),
        ({"comparison_categories": [0, 1]}, ValueError, "rank 0 is the main class"),
        ({"comparison_categories": [1], "comparison_classes": [2]}, TypeError, "not both"),
        ({"comparison_classes": [[1], [2], [3]]}, ValueError, "3 lists but the batch has 2"),
        ({"comparison_classes": [-1]}, ValueError, "indices >= 0"),
        ({"target_idx": -1}, ValueError, "target_idx must be an int >= 0, got -1"),
    ]:
        with pytest.raises(error, match=match):
            cam(x, **kwargs)
    assert counted.calls == 0  # refused before any forward pass
    with pytest.raises(ValueError, match="category 7 is out of range"):
        cam(x, comparison_classes=[7])
    with pytest.raises(ValueError, match="category 5 is out of range"):
        cam(x, target_idx=5)
    with pytest.raises(TypeError, match="alpha must be a finite float"):
        FinerCAM(model, [model.relu2], alpha=True)
    with pytest.raises(TypeError, match="base_method must be a plain CAM method"):
        FinerCAM(model, [model.relu2], base_method=SESS)
    assert FinerCAMPath is FinerCAM
    assert RefineCAMPath is RefineCAM
    assert SESSPath is SESS


@pytest.mark.parametrize(
    ("dim", "shape", "layers"),
    [
        (2, (2, 3, 12, 16), ["relu1", "relu2", "relu3"]),
        (2, (2, 3, 12, 16), ["conv2", "relu3"]),
        (1, (2, 2, 40), ["relu1", "relu3"]),
        (3, (2, 1, 6, 8, 10), ["relu1", "relu2"]),
    ],
    ids=["2d-three", "2d-two", "1d", "3d"],
)
def test_refinecam_is_the_product_of_the_normalised_layer_maps(dim, shape, layers):
    model = tiny_net(dim, seed=dim, in_channels=shape[1])
    x = seeded_input(*shape, seed=7)
    classes = [1, 3]
    expected = refine_by_hand(model, x, layers, classes)
    assert_nontrivial(expected, peak=0.9)
    counted = CountCalls(model)
    got = RefineCAM(counted, [getattr(model, name) for name in layers])(x, targets=classes)
    assert counted.calls == 1  # every layer from one forward (and one backward) pass
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The same with the library's base method run once per layer, and with Grad-CAM as the base.
    per_layer = [GradCAMPlusPlus(model, [getattr(model, n)])(x, classes) for n in layers]
    np.testing.assert_allclose(got, normalize(torch.from_numpy(np.prod(per_layer, 0))).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        RefineCAM(model, [getattr(model, n) for n in layers], base_method=GradCAM)(x, classes),
        refine_by_hand(model, x, layers, classes, method="gradcam"),
        atol=1e-5,
    )


def pyramid_to_tensor(output):
    """A tensor passes; the levels dict becomes (B, 8, 8, 8): the coarse level repeated to the fine grid."""
    if isinstance(output, torch.Tensor):
        return output
    coarse = output["coarse"].repeat_interleave(2, -1).repeat_interleave(2, -2)
    return torch.cat([output["fine"], coarse], 1)


def test_refinecam_on_a_layer_returning_a_dict_of_levels():
    """A target layer returning a dict (a feature pyramid) with a reshape_transform: RefineCAM is the
    product of the stem's and the pyramid's Grad-CAM++ maps, the pyramid's from the gradients of both
    levels put through the same transform (float64, by hand)."""
    model, x, classes = TinyPyramid(seed=3).eval(), seeded_input(2, 3, 8, 8, seed=4), [1, 3]
    copy = TinyPyramid(seed=3).double().eval()
    copy.load_state_dict(model.state_dict())
    xd = x.double()
    stem = copy.stem(xd).detach().requires_grad_(True)
    levels = {k: v.detach().requires_grad_(True) for k, v in copy.pyramid(stem).items()}
    # Two graphs: the stem's gradient through the pyramid, the levels' gradient from the head alone.
    logits_from_stem = copy.head(copy.pyramid(stem))
    (grad_stem,) = torch.autograd.grad(logits_from_stem[torch.arange(2), classes].sum(), stem)
    logits = copy.head(levels)
    grad_levels = dict(
        zip(levels, torch.autograd.grad(logits[torch.arange(2), classes].sum(), list(levels.values())))
    )
    with torch.no_grad():
        stem_map = full_map(layer_map_by_hand(stem, grad_stem, "gradcam++"), (8, 8))
        pyramid_map = full_map(
            layer_map_by_hand(pyramid_to_tensor(levels), pyramid_to_tensor(grad_levels), "gradcam++"), (8, 8)
        )
    assert_nontrivial(stem_map.numpy(), peak=0.9)
    assert_nontrivial(pyramid_map.numpy(), peak=0.9)
    expected = normalize(stem_map * pyramid_map).numpy()
    assert_nontrivial(expected, peak=0.9)
    got = RefineCAM(model, [model.stem, model.pyramid], pyramid_to_tensor)(x, classes)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_refinecam_differs_from_the_average_and_keeps_aug_smooth():
    model, x = tiny_net(2, seed=0), seeded_input(2, 3, 12, 16, seed=1)
    layers = [model.relu1, model.relu3]
    refined = RefineCAM(model, layers)(x, [1, 3])
    averaged = GradCAMPlusPlus(model, layers)(x, [1, 3])
    assert np.abs(refined - averaged).max() > 0.1
    # aug_smooth: the mean of the de-augmented refined maps (one horizontal flip here).
    import ttach as tta

    flip = tta.Compose([tta.HorizontalFlip()])
    got = RefineCAM(model, layers, tta_transforms=flip)(x, [1, 3], aug_smooth=True)
    flipped = RefineCAM(model, layers)(torch.flip(x, [-1]), [1, 3])
    np.testing.assert_allclose(got, (refined + np.flip(flipped, -1)) / 2, atol=1e-6)


@pytest.fixture
def sess_case():
    # 1 image per target class: one whose top class is 1, the other 3.
    return tiny_net(2, seed=0), seeded_input(2, 3, 12, 16, seed=1)


@pytest.mark.parametrize(
    ("kwargs", "hand"),
    [
        ({"num_scales": 3}, {"scales": [12, 15, 18], "window": 12, "step": 12}),
        (
            {
                "scales": [10, 13, 17],
                "window_size": 10,
                "step_size": 5,
                "pre_filter_ratio": 0.5,
                "theta": 0.1,
            },
            {"scales": [10, 13, 17], "window": 10, "step": 5, "pre_filter_ratio": 0.5, "theta": 0.1},
        ),
        (
            {"num_scales": 2, "window_size": 8, "step_size": 3, "pool": "max", "smooth": False},
            {"scales": [8, 10], "window": 8, "step": 3, "pool": "max", "smooth": False},
        ),
        (
            {"num_scales": 3, "scale_step_ratio": 0.5, "use_softmax_scores": False},
            {"scales": [12, 18, 24], "window": 12, "step": 12, "softmax": False},
        ),
    ],
    ids=["defaults", "overlap-prefilter-theta", "max-no-smooth", "raw-scores"],
)
def test_sess_is_the_plain_loop(sess_case, kwargs, hand):
    model, x = sess_case
    classes = [1, 3]
    expected = sess_by_hand(model, [model.relu2], x, classes, **hand)
    assert_nontrivial(expected)
    got = SESS(model, [model.relu2], batch_size=5, **kwargs)(x, targets=classes)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.abs(got - GradCAM(model, [model.relu2])(x, classes)).max() > 0.1  # not the plain map


def test_sess_conventions_match_cv2():
    # torch's half-pixel bilinear resize and mirrored blur are cv2.resize and cv2.GaussianBlur.
    model, x = tiny_net(2, seed=0), seeded_input(1, 3, 16, 20, seed=4)
    hand = dict(scales=[16, 21, 26], window=16, step=16, theta=0.0)
    expected = sess_by_hand(model, [model.relu2], x, [4], use_cv2=True, **hand)
    assert_nontrivial(expected)
    np.testing.assert_allclose(expected, sess_by_hand(model, [model.relu2], x, [4], **hand), atol=1e-5)
    np.testing.assert_allclose(SESS(model, [model.relu2], num_scales=3)(x, [4]), expected, atol=2e-5)


@pytest.mark.parametrize(("dim", "shape"), [(1, (2, 2, 40)), (3, (1, 1, 6, 8, 10))], ids=["1d", "3d"])
def test_sess_1d_and_3d(dim, shape):
    model = tiny_net(dim, seed=4, in_channels=shape[1])
    x = seeded_input(*shape, seed=5)
    classes = [0, 2][: shape[0]]
    window = min(shape[2:]) if dim == 3 else 16
    increment = round(window * 2 / 7)
    scales = [window + increment * k for k in range(3)]
    step = window // 2 if dim == 1 else window
    expected = sess_by_hand(model, [model.relu2], x, classes, scales, window, step)
    assert_nontrivial(expected)
    got = SESS(
        model,
        [model.relu2],
        num_scales=3,
        window_size=window if dim == 1 else None,
        step_size=window // 2 if dim == 1 else None,
    )(x, classes)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_sess_batches_are_bounded_and_patches_are_counted(sess_case):
    model, x = sess_case
    counted = CountCalls(model)
    sizes = []
    counted.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    cam = SESS(counted, [model.relu2], num_scales=3, batch_size=4, pre_filter_ratio=0.5)
    maps = cam(x, targets=[1, 3])
    # Windows per image: scale 12 -> 12x16: 1x2; 15 -> 15x20: 2x2; 18 -> 18x24: 2x2 => 10; two images.
    patches = 2 * 10
    kept = 2 * 5
    assert sizes[0] == 2  # the whole input first (targets and layers checked)
    assert max(sizes[1:]) <= 4
    assert sum(sizes[1:]) == patches + kept  # scored once each, the base method on the kept ones
    expected = sess_by_hand(model, [model.relu2], x, [1, 3], [12, 15, 18], 12, 12, pre_filter_ratio=0.5)
    np.testing.assert_allclose(maps, expected, atol=2e-5)
    # Without pre-filtering (and theta == 0) the scores come from the base method's own pass: each patch
    # runs once.
    sizes.clear()
    maps = SESS(counted, [model.relu2], num_scales=3, batch_size=4)(x, targets=[1, 3])
    assert sizes[0] == 2
    assert max(sizes[1:]) <= 4
    assert sum(sizes[1:]) == patches
    expected = sess_by_hand(model, [model.relu2], x, [1, 3], [12, 15, 18], 12, 12)
    np.testing.assert_allclose(maps, expected, atol=2e-5)


def test_sess_top_class_by_default_and_half_precision_with_max_fusion(sess_case):
    model, x = sess_case
    with torch.no_grad():
        top = model(x).argmax(-1).tolist()
    cam = SESS(model, [model.relu2], num_scales=3)
    np.testing.assert_allclose(cam(x), cam(x, top), atol=1e-6)
    # Half precision: with the continuous max fusion the map is the float32 one up to rounding (the
    # thresholded mean is not: rounding moves tiny values across theta).
    expected = SESS(model, [model.relu2], num_scales=3, pool="max")(x, top)
    half = tiny_net(2, seed=0).to(torch.bfloat16)
    got = SESS(half, [half.relu2], num_scales=3, pool="max")(x, top)
    np.testing.assert_allclose(got, expected, atol=4e-2)


def test_sess_errors_before_any_forward_pass(sess_case):
    model, x = sess_case
    counted = CountCalls(model)
    for kwargs, error, match in [
        ({"pool": "median"}, ValueError, r"pool must be one of \('mean', 'max'\), got 'median'"),
        ({"pre_filter_ratio": 1.0}, ValueError, r"pre_filter_ratio must be a float in \[0, 1\)"),
        ({"num_scales": 0}, ValueError, "num_scales must be an int >= 1, got 0"),
        ({"scales": []}, ValueError, "scales must be a non-empty list"),
        ({"window_size": 2.5}, TypeError, "window_size must be an int >= 1, got float 2.5"),
    ]:
        with pytest.raises(error, match=match):
            SESS(counted, [model.relu2], **kwargs)
    with pytest.raises(ValueError, match="window_size 13 is larger than the input's shorter side 12"):
        SESS(counted, [model.relu2], window_size=13)(x)
    with pytest.raises(ValueError, match=r"every scale must be at least the window size 12"):
        SESS(counted, [model.relu2], scales=[11, 14])(x)
    assert counted.calls == 0


def test_argument_checks_type_error_for_the_type_value_error_for_the_range(sess_case):
    model, x = sess_case
    counted = CountCalls(model)
    layers = [model.relu2]
    for cls, kwargs, error, match in [
        (SESS, {"theta": float("nan")}, ValueError, r"theta must be a finite float, got nan"),
        (SESS, {"theta": "0.1"}, TypeError, r"theta must be a finite float, got str '0.1'"),
        (
            SESS,
            {"pre_filter_ratio": -0.1},
            ValueError,
            r"pre_filter_ratio must be a float in \[0, 1\), got -0.1",
        ),
        (SESS, {"pre_filter_ratio": "0.5"}, TypeError, r"pre_filter_ratio must be a finite float, got str"),
        (SESS, {"pre_filter_ratio": True}, TypeError, r"pre_filter_ratio must be a finite float, got bool"),
        (
            SESS,
            {"scale_step_ratio": 0.0},
            ValueError,
            r"scale_step_ratio must be a finite float > 0, got 0.0",
        ),
        (SESS, {"smooth_sigma": "5"}, TypeError, r"smooth_sigma must be a finite float > 0, got str"),
        (SESS, {"smooth_kernel_size": 0}, ValueError, r"smooth_kernel_size must be an int >= 1, got 0"),
        (SESS, {"step_size": True}, TypeError, r"step_size must be an int >= 1, got bool"),
        (SESS, {"scales": [12, 14.0]}, TypeError, r"scales\[1\] must be an int, got float 14.0"),
        (FinerCAM, {"num_comparisons": 0}, ValueError, r"num_comparisons must be an int >= 1, got 0"),
        (FinerCAM, {"num_comparisons": 1.5}, TypeError, r"num_comparisons must be an int >= 1, got float"),
        (FinerCAM, {"alpha": "1"}, TypeError, r"alpha must be a finite float, got str"),
        (FinerCAM, {"alpha": float("inf")}, ValueError, r"alpha must be a finite float, got inf"),
    ]:
        with pytest.raises(error, match=match):
            cls(counted, layers, **kwargs)
    cam = FinerCAM(counted, layers)
    for kwargs, error, match in [
        ({"target_idx": 1.0}, TypeError, r"target_idx must be an int >= 0, got float"),
        ({"comparison_classes": [1, "2"]}, TypeError, r"comparison_classes\[1\] must be an int, got str"),
        ({"comparison_classes": [[1], [2.0]]}, TypeError, r"comparison_classes\[1\]\[0\] must be an int"),
        ({"comparison_categories": [1, None]}, TypeError, r"comparison_categories\[1\] must be an int"),
    ]:
        with pytest.raises(error, match=match):
            cam(x, **kwargs)
    assert counted.calls == 0
    # numpy numbers are accepted as ints and floats
    sess = SESS(
        model, layers, num_scales=np.int64(2), theta=np.float32(0.25), pre_filter_ratio=np.float64(0.5)
    )
    assert (sess.num_scales, sess.theta, sess.pre_filter_ratio) == (2, 0.25, 0.5)
    assert type(sess.num_scales) is int
    assert type(sess.theta) is float


def test_sess_constant_map_warns_once_and_is_zeros():
    model = tiny_net(2, seed=0)
    with torch.no_grad():
        model.fc.weight.copy_(-model.fc.weight.abs())  # relu3 >= 0 and negative weights: no evidence
    x = seeded_input(1, 3, 12, 16, seed=1)
    with pytest.warns(RuntimeWarning) as record:
        maps = SESS(model, [model.relu3], num_scales=2)(x, [0])
    assert [str(w.message) for w in record if "constant" in str(w.message)] == [
        "the SESS map is constant for image(s) [0] (no patch has positive evidence for the target); its map "
        "is all zeros"
    ]
    np.testing.assert_array_equal(maps, np.zeros((1, 12, 16), np.float32))


def test_sess_with_cam_as_base_method(sess_case):
    # CAM's head check used a list made only in CAM._compute; SESS runs the base method's _forward itself.
    model, x = sess_case
    classes = [1, 3]
    expected = sess_by_hand(
        model,
        [model.relu3],
        x,
        classes,
        [12, 15, 18],
        12,
        12,
        patch_map=functools.partial(cam_patch_map_by_hand, model),
    )
    assert_nontrivial(expected)
    for kwargs in ({}, {"pre_filter_ratio": 0.5}):  # one pass, and scoring pass + kept patches
        hand = (
            expected
            if not kwargs
            else sess_by_hand(
                model,
                [model.relu3],
                x,
                classes,
                [12, 15, 18],
                12,
                12,
                pre_filter_ratio=0.5,
                patch_map=functools.partial(cam_patch_map_by_hand, model),
            )
        )
        got = SESS(model, [model.relu3], base_method="cam", num_scales=3, batch_size=3, **kwargs)(x, classes)
        np.testing.assert_allclose(got, hand, atol=2e-5)


def test_sess_with_smooth_gradcampp_weights_patches_by_their_clean_score(sess_case):
    # Smooth Grad-CAM++ scores the clean batch, then its noisy copies: SESS must weigh each patch by the
    # clean patch's score (the plain loop's), not by its first noisy copy's. batch_size=1: each patch is
    # its own batch, so the seeded noise of a patch is that of SmoothGradCAMPlusPlus called on it alone.
    from pytorch_grad_cam import SmoothGradCAMPlusPlus

    model, x = sess_case
    classes = [1, 3]
    base = SmoothGradCAMPlusPlus(model, [model.relu2], num_samples=3, std=0.5, seed=7)
    expected = sess_by_hand(
        model,
        [model.relu2],
        x,
        classes,
        [12, 15, 18],
        12,
        12,
        smooth=False,
        patch_map=lambda patch, cls: base(patch, [cls])[0],
    )
    assert_nontrivial(expected)
    got = SESS(
        model,
        [model.relu2],
        base_method=SmoothGradCAMPlusPlus,
        num_scales=3,
        smooth=False,
        batch_size=1,
        num_samples=3,
        std=0.5,
        seed=7,
    )(x, classes)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_sess_constant_map_warning_points_at_the_callers_line():
    model = tiny_net(2, seed=0)
    with torch.no_grad():
        model.fc.weight.copy_(-model.fc.weight.abs())  # relu3 >= 0 and negative weights: no evidence
    x = seeded_input(1, 3, 12, 16, seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        SESS(model, [model.relu3], num_scales=2)(x, [0])
    constant = [w for w in record if "SESS map is constant" in str(w.message)]
    assert len(constant) == 1
    assert constant[0].category is RuntimeWarning
    assert constant[0].filename == __file__, "the warning should point at the caller's line"


# ============================================================================================ grad-cam 1.5.7

DRIVER = r"""
import json, sys
import numpy as np, torch, torchvision
import pytorch_grad_cam
work, tests_dir, reference_path = sys.argv[1:4]
assert pytorch_grad_cam.__file__.startswith(reference_path), pytorch_grad_cam.__file__
sys.path.append(tests_dir)
from models import TinyConvNet
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.refine_cam import RefineCAM
from pytorch_grad_cam.sess import SESS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

tiny = TinyConvNet(2)
tiny.load_state_dict(torch.load(f"{work}/tiny.pt"))
tiny.eval()
resnet = torchvision.models.resnet18(weights=None)
resnet.load_state_dict(torch.load(f"{work}/resnet18.pt"))
resnet.eval()
x_tiny, x_res = torch.load(f"{work}/x_tiny.pt"), torch.load(f"{work}/x_res.pt")
out = {}
out["finer-default"] = FinerCAM(tiny, [tiny.relu2])(x_tiny)
out["finer-alpha-idx"] = FinerCAM(tiny, [tiny.conv2])(x_tiny, alpha=0.6, target_idx=4,
                                                       comparison_categories=[1, 3])
out["finer-resnet"] = FinerCAM(resnet, [resnet.layer4[-1]])(x_res)
out["refine-tiny"] = RefineCAM(tiny, [tiny.relu1, tiny.relu2, tiny.relu3])(
    x_tiny, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
out["refine-resnet"] = RefineCAM(resnet, [resnet.layer3[-1], resnet.layer4[-1]])(
    x_res, [ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
out["sess-default"] = SESS(tiny, [tiny.relu2], num_scales=3, batch_size=5)(x_tiny, targets)
out["sess-options"] = SESS(tiny, [tiny.relu2], scales=[10, 13, 17], window_size=10, step_size=5,
                           pre_filter_ratio=0.5, theta=0.1)(x_tiny, targets)
out["sess-max"] = SESS(tiny, [tiny.relu2], num_scales=2, window_size=8, step_size=3, pool="max",
                       smooth=False)(x_tiny, None)
np.savez(f"{work}/reference.npz", **out)
"""


def _reference_inputs():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    return (
        tiny_net(2, seed=0),
        resnet,
        seeded_input(2, 3, 12, 16, seed=3),
        seeded_input(2, 3, 64, 64, seed=11),
    )


@pytest.fixture(scope="module")
def reference_maps(tmp_path_factory):
    if not reference_has("finer_cam.py"):
        pytest.skip(f"no reference pytorch_grad_cam with FinerCAM under {REFERENCE_PATH}")
    work = tmp_path_factory.mktemp("refcam_composite")
    tiny, resnet, x_tiny, x_res = _reference_inputs()
    torch.save(tiny.state_dict(), work / "tiny.pt")
    torch.save(resnet.state_dict(), work / "resnet18.pt")
    torch.save(x_tiny, work / "x_tiny.pt")
    torch.save(x_res, work / "x_res.pt")
    run_reference(DRIVER, work, TESTS_DIR, REFERENCE_PATH, cwd=work)
    return dict(np.load(work / "reference.npz"))


@pytest.mark.reference
def test_matches_reference_library(reference_maps):
    tiny, resnet, x_tiny, x_res = _reference_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = {
            "finer-default": FinerCAM(tiny, [tiny.relu2])(x_tiny),
            "finer-alpha-idx": FinerCAM(tiny, [tiny.conv2])(
                x_tiny, alpha=0.6, target_idx=4, comparison_categories=[1, 3]
            ),
            "finer-resnet": FinerCAM(resnet, [resnet.layer4[-1]])(x_res),
            "refine-tiny": RefineCAM(tiny, [tiny.relu1, tiny.relu2, tiny.relu3])(x_tiny, [1, 3]),
            "refine-resnet": RefineCAM(resnet, [resnet.layer3[-1], resnet.layer4[-1]])(x_res, [3, 7]),
            "sess-default": SESS(tiny, [tiny.relu2], num_scales=3)(x_tiny, [1, 3]),
            "sess-options": SESS(
                tiny,
                [tiny.relu2],
                scales=[10, 13, 17],
                window_size=10,
                step_size=5,
                pre_filter_ratio=0.5,
                theta=0.1,
            )(x_tiny, [1, 3]),
            "sess-max": SESS(
                tiny, [tiny.relu2], num_scales=2, window_size=8, step_size=3, pool="max", smooth=False
            )(x_tiny),
        }
    assert sorted(ours) == sorted(reference_maps)
    for case, theirs in reference_maps.items():
        assert_nontrivial(theirs, peak=0.9)
        np.testing.assert_allclose(ours[case], theirs, atol=1e-4, err_msg=case)
