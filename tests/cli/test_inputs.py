"""The CLI's input reading: image sizes read from headers before decoding (image bombs refused), the
folder walk's skipped files, and both through the command line with a tiny random resnet18."""

import json
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pytorch_grad_cam.cli import build_parser, inputs, main
from pytorch_grad_cam.cli.inputs import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    collect_inputs,
    gather_inputs,
    image_size,
    read_image,
    skipped_summary,
)

WIDTH, HEIGHT = 37, 23  # odd and unequal: a swapped width and height shows
NO_SIZE = (
    "cannot read its width and height before decoding (not a PNG, JPEG, BMP, GIF, TIFF, WebP or PNM "
    "file, or its header is cut short)"
)


# ------------------------------------------------------------------------------------------ images
def _bgr() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _gray() -> np.ndarray:
    return _bgr()[..., 0].copy()


def _encoded(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` RGB, with a small real zlib IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 frame header (3 components), EOI: no tables, no scan."""
    components = b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + components + b"\xff\xd9"


def _jpeg_with_segments_before_the_frame() -> bytes:
    """A real JPEG with a 60 kB APP1, fill bytes, a parameterless TEM marker and a comment before SOF0."""
    jpeg = _encoded(".jpg", _bgr())
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 60_000) + b"not exif, just bytes".ljust(60_000, b"x")
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 7) + b"comment"
    return jpeg[:2] + b"\xff\xff" + app1 + b"\xff\x01" + b"\xff\xff\xff" + comment + jpeg[2:]


def _gif() -> bytes:
    """GIF89a, 2 colours, LZW codes of 3 bits throughout: a clear code before every 2 pixels."""
    pixels = [(x + y) % 2 for y in range(HEIGHT) for x in range(WIDTH)]
    codes = []
    for i in range(0, len(pixels), 2):
        codes += [4, *pixels[i : i + 2]]  # 4: clear (minimum code size 2), so the table never grows
    codes.append(5)  # end of information
    value = sum(code << (3 * i) for i, code in enumerate(codes))  # codes packed from the lowest bit
    data = value.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", WIDTH, HEIGHT, 0x80, 0, 0)  # global colour table of 2 entries
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, WIDTH, HEIGHT, 0)
        + b"\x02"
        + blocks
        + b"\x00\x3b"
    )


def _tiff(order: str, big: bool) -> bytes:
    """An uncompressed 8-bit grey TIFF, one strip: the width as LONG (LONG8 in BigTIFF), the height SHORT."""
    pixels = _gray().tobytes()
    value_size, entry_format, count_format = (8, "HHQ", "Q") if big else (4, "HHI", "H")
    header = (b"II" if order == "<" else b"MM") + (
        struct.pack(order + "HHHQ", 43, 8, 0, 16) if big else struct.pack(order + "HI", 42, 8)
    )
    width_type = (16, "Q") if big else (4, "I")
    tags = [
        (256, *width_type, WIDTH),
        (257, 3, "H", HEIGHT),
        (258, 3, "H", 8),
        (259, 3, "H", 1),
        (262, 3, "H", 1),
        (273, 4, "I", 0),  # the strip's offset, filled in below
        (277, 3, "H", 1),
        (278, 3, "H", HEIGHT),
        (279, 4, "I", len(pixels)),
    ]
    entry_size = 4 + value_size * 2
    data_offset = len(header) + struct.calcsize(order + count_format) + len(tags) * entry_size + value_size
    directory = struct.pack(order + count_format, len(tags))
    for tag, kind, value_format, value in tags:
        value = data_offset if tag == 273 else value
        directory += struct.pack(order + entry_format, tag, kind, 1)
        directory += struct.pack(order + value_format, value).ljust(value_size, b"\0")
    return header + directory + bytes(value_size) + pixels


def _bmp_core() -> bytes:
    """BMP with the 12-byte BITMAPCOREHEADER (uint16 width and height), 24-bit, rows bottom-up."""
    row = (3 * WIDTH + 3) // 4 * 4
    rows = b"".join(line.tobytes().ljust(row, b"\0") for line in _bgr()[::-1])
    return (
        b"BM"
        + struct.pack("<IHHI", 26 + len(rows), 0, 0, 26)
        + struct.pack("<IHHHH", 12, WIDTH, HEIGHT, 1, 24)
        + rows
    )


def _bmp_top_down() -> bytes:
    """BMP with a BITMAPINFOHEADER and a negative height: rows top-down."""
    row = (3 * WIDTH + 3) // 4 * 4
    rows = b"".join(line.tobytes().ljust(row, b"\0") for line in _bgr())
    info = struct.pack("<IiiHHIIiiII", 40, WIDTH, -HEIGHT, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(rows), 0, 0, 54) + info + rows


def _webp_extended() -> bytes:
    """A VP8X chunk (canvas size) before the lossy VP8 chunk cv2 writes."""
    lossy = _encoded(".webp", _bgr(), cv2.IMWRITE_WEBP_QUALITY, 90)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (WIDTH - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + (HEIGHT - 1).to_bytes(3, "little") + lossy[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _ppm_with_comments() -> bytes:
    rgb = cv2.cvtColor(_bgr(), cv2.COLOR_BGR2RGB)
    return f"P6\n# made by hand\n{WIDTH} # the width\n# the height:\n{HEIGHT}\n255\n".encode() + rgb.tobytes()


def _plain_pbm() -> bytes:
    bits = " ".join(str((x * y) % 2) for y in range(HEIGHT) for x in range(WIDTH))
    return f"P1\n# plain PBM\n{WIDTH} {HEIGHT}\n{bits}\n".encode()


def _pam() -> bytes:
    header = f"P7\n# a PAM\nWIDTH {WIDTH}\nHEIGHT {HEIGHT}\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n"
    return header.encode() + _gray().tobytes()


def _pfm() -> bytes:
    """Colour PFM, little-endian (a negative scale)."""
    return f"PF\n{WIDTH} {HEIGHT}\n-1.0\n".encode() + np.full(WIDTH * HEIGHT * 3, 0.5, "<f4").tobytes()


LOSSLESS = {  # name: (bytes, whether the decoded RGB equals _bgr())
    "png": (lambda: _encoded(".png", _bgr()), True),
    "bmp": (lambda: _encoded(".bmp", _bgr()), True),
    "bmp-core-header": (_bmp_core, True),
    "bmp-top-down": (_bmp_top_down, True),
    "tiff": (lambda: _encoded(".tiff", _bgr()), True),
    "tiff-big-endian": (lambda: _tiff(">", big=False), False),
    "bigtiff": (lambda: _tiff("<", big=True), False),
    "bigtiff-big-endian": (lambda: _tiff(">", big=True), False),
    "webp-lossless": (lambda: _encoded(".webp", _bgr(), cv2.IMWRITE_WEBP_QUALITY, 101), True),
    "ppm": (lambda: _encoded(".ppm", _bgr()), True),
    "ppm-with-comments": (_ppm_with_comments, True),
    "pgm": (lambda: _encoded(".pgm", _gray()), False),
    "pbm": (lambda: _encoded(".pbm", _gray()), False),
    "pbm-plain": (_plain_pbm, False),
    "pam": (_pam, False),
    "pfm": (_pfm, False),
    "gif": (_gif, False),
}
LOSSY = {
    "jpeg": lambda: _encoded(".jpg", _bgr()),
    "jpeg-progressive": lambda: _encoded(".jpg", _bgr(), cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "jpeg-segments-before-the-frame": _jpeg_with_segments_before_the_frame,
    "webp-lossy": lambda: _encoded(".webp", _bgr(), cv2.IMWRITE_WEBP_QUALITY, 90),
    "webp-extended": _webp_extended,
}


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------------------------------ header sizes
@pytest.mark.parametrize("name", [*LOSSLESS, *LOSSY])
def test_header_size_is_the_decoded_size(tmp_path, name):
    make, exact = LOSSLESS[name] if name in LOSSLESS else (LOSSY[name], False)
    path = _write(tmp_path, f"image-{name}", make())  # no extension: the format is found from the bytes
    assert image_size(path) == (WIDTH, HEIGHT)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image.dtype == np.float32
    if exact:
        np.testing.assert_array_equal(image, cv2.cvtColor(_bgr(), cv2.COLOR_BGR2RGB) / np.float32(255))


def test_decoded_values_of_handcrafted_formats(tmp_path):
    """The handcrafted files decode to what they hold (so their headers are not read by luck)."""
    gray = _gray() / np.float32(255)
    for name in ("tiff-big-endian", "bigtiff", "bigtiff-big-endian", "pam"):
        image = read_image(_write(tmp_path, name, LOSSLESS[name][0]()))
        np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))
    gif = read_image(_write(tmp_path, "gif", _gif()))[..., 0]
    np.testing.assert_array_equal(gif, np.add.outer(np.arange(HEIGHT), np.arange(WIDTH)) % 2)
    pbm = read_image(_write(tmp_path, "pbm", _plain_pbm()))[..., 0]
    np.testing.assert_array_equal(pbm, 1 - np.multiply.outer(np.arange(HEIGHT), np.arange(WIDTH)) % 2)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        pytest.param(_png_declaring(30000, 20000), (30000, 20000), id="png"),
        pytest.param(_jpeg_declaring(12000, 9000), (12000, 9000), id="jpeg"),
        pytest.param(b"GIF87a" + struct.pack("<HH", 65535, 2), (65535, 2), id="gif87a"),
        pytest.param(b"BM" + bytes(12) + struct.pack("<Iii", 124, 70000, -3), (70000, 3), id="bmp-v5"),
        pytest.param(
            b"II*\0"
            + struct.pack("<IH", 8, 2)
            + struct.pack("<HHII", 256, 4, 1, 9) * 1
            + struct.pack("<HHIHH", 257, 3, 1, 7, 0),
            (9, 7),
            id="tiff-two-tags",
        ),
        pytest.param(
            b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f" + ((99 - 1) | (5 - 1) << 14).to_bytes(4, "little") + bytes(5),
            (99, 5),
            id="webp-lossless",
        ),
        pytest.param(b"P7\nHEIGHT 4\n# WIDTH 1\nWIDTH 3\nENDHDR\n", (3, 4), id="pam-comment"),
        pytest.param(b"Pf\n5\n6\n-1\n", (5, 6), id="pfm-grey"),
        pytest.param(b"P4 8 2 \xff\xff", (8, 2), id="pbm-one-line"),
    ],
)
def test_declared_sizes_read_from_headers_alone(tmp_path, data, size):
    assert image_size(_write(tmp_path, "header", data)) == size


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"this is not an image", id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0", id="png-cut-short"),
        pytest.param(_png_declaring(0, 5), id="png-zero-width"),
        pytest.param(b"\xff\xd8\xff\xe0\x00\x10JFIF", id="jpeg-cut-before-the-frame"),
        pytest.param(b"\xff\xd8\xff\xda\x00\x08" + bytes(6) + b"\xff\xc0", id="jpeg-scan-before-the-frame"),
        pytest.param(b"\xff\xd8 not really a jpeg", id="jpeg-no-marker"),
        pytest.param(b"\xff\xd8\xff\xe0\x00\x01", id="jpeg-bad-segment-length"),
        pytest.param(b"BM" + bytes(12) + struct.pack("<Iii", 8, 5, 5), id="bmp-unknown-header"),
        pytest.param(b"GIF89a\x05", id="gif-cut-short"),
        pytest.param(b"II*\0" + struct.pack("<I", 4096), id="tiff-directory-past-the-end"),
        pytest.param(
            b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 256, 5, 1, 9), id="tiff-no-length"
        ),
        pytest.param(
            b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 256, 16, 1, 9),
            id="tiff-long8-in-classic",
        ),
        pytest.param(b"II+\0" + struct.pack("<HHQ", 4, 0, 16), id="bigtiff-bad-offset-size"),
        pytest.param(b"RIFF\0\0\0\0WAVEfmt " + bytes(16), id="riff-not-webp"),
        pytest.param(b"RIFF\0\0\0\0WEBPVP8 " + bytes(14), id="webp-no-start-code"),
        pytest.param(b"P6\n37 twenty-three\n255\n", id="pnm-not-a-number"),
        pytest.param(b"P3\n# only a comment", id="pnm-cut-short"),
        pytest.param(b"P7\nWIDTH 3\nHEIGHT 4\n", id="pam-no-endhdr"),
        pytest.param(b"P9\n3 4\n", id="pnm-unknown-kind"),
    ],
)
def test_files_without_a_readable_size_are_refused_undecoded(tmp_path, monkeypatch, data):
    path = _write(tmp_path, "file.png", data)
    assert image_size(path) is None
    monkeypatch.setattr(cv2, "imdecode", _must_not_decode)
    with pytest.raises(ValueError, match=re.escape(NO_SIZE)):
        read_image(path)


def _must_not_decode(*args):
    pytest.fail("cv2.imdecode was called")


def test_a_readable_header_on_a_broken_body_is_a_decoding_failure(tmp_path):
    path = _write(tmp_path, "broken.png", _png_declaring(WIDTH, HEIGHT)[:33] + b"broken")
    assert image_size(path) == (WIDTH, HEIGHT)
    with pytest.raises(ValueError, match=r"^not an image OpenCV can decode$"):
        read_image(path)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"^the file is empty$"):
        read_image(_write(tmp_path, "empty.png", b""))
    with pytest.raises(ValueError, match=r"^no such file$"):
        read_image(str(tmp_path / "nowhere.png"))


# ------------------------------------------------------------------------------------------ bombs
BOMB_REFUSED = (
    "declares 30000 x 30000 = 900,000,000 pixels, above the limit of 100,000,000 (--max-pixels to raise it)"
)


def test_png_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path, "bomb.png", _png_declaring(30000, 30000))
    assert os.path.getsize(path) < 1000
    assert image_size(path) == (30000, 30000)
    monkeypatch.setattr(cv2, "imdecode", _must_not_decode)
    with pytest.raises(ValueError, match=f"^{re.escape(BOMB_REFUSED)}$"):
        read_image(path)


def test_jpeg_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path, "bomb.jpg", _jpeg_declaring(12000, 12000))
    assert image_size(path) == (12000, 12000)
    monkeypatch.setattr(cv2, "imdecode", _must_not_decode)
    with pytest.raises(
        ValueError, match=re.escape("declares 12000 x 12000 = 144,000,000 pixels, above the limit")
    ):
        read_image(path)


def test_max_pixels_is_the_largest_accepted(tmp_path):
    path = _write(tmp_path, "small.png", _encoded(".png", _bgr()))
    assert MAX_PIXELS == 100_000_000
    assert read_image(path, max_pixels=WIDTH * HEIGHT).shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match=re.escape("declares 37 x 23 = 851 pixels, above the limit of 850")):
        read_image(path, max_pixels=WIDTH * HEIGHT - 1)


def test_a_decoded_size_above_the_limit_is_refused_too(tmp_path, monkeypatch):
    """Should a header be read differently from OpenCV's decoder, the decoded size is checked as well."""
    path = _write(tmp_path, "small.png", _encoded(".png", _bgr()))
    monkeypatch.setattr(inputs, "image_size", lambda path: (1, 1))
    with pytest.raises(ValueError, match=re.escape("decodes to 37 x 23 = 851 pixels, above the limit of 10")):
        read_image(path, max_pixels=10)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (MemoryError(), "not enough memory to decode its 37 x 23 pixels"),
        (cv2.error("a decoder failure"), "OpenCV cannot decode it (a decoder failure)"),
    ],
)
def test_decoding_errors_are_value_errors(tmp_path, monkeypatch, error, message):
    path = _write(tmp_path, "small.png", _encoded(".png", _bgr()))

    def failing_imdecode(*args):
        raise error

    monkeypatch.setattr(cv2, "imdecode", failing_imdecode)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        read_image(path)


# ------------------------------------------------------------------------------------------ folder walks
@pytest.fixture
def mixed_folder(tmp_path):
    """Two images (one in a sub-folder), a GIF, a text file and hidden files."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.png").write_bytes(_encoded(".png", _bgr()))
    (folder / "sub" / "other.jpg").write_bytes(_encoded(".jpg", _bgr()))
    (folder / "anim.gif").write_bytes(_gif())
    (folder / "CREDITS.md").write_text("photos by me")
    (folder / ".hidden.png").write_bytes(_encoded(".png", _bgr()))
    (folder / "sub" / ".DS_Store").write_bytes(b"\0")
    return folder


def test_gather_inputs_lists_skipped_files_with_why(mixed_folder):
    found = gather_inputs([str(mixed_folder)])
    assert [(Path(i.path).relative_to(mixed_folder).as_posix(), i.key) for i in found.images] == [
        ("good.png", "good"),
        ("sub/other.jpg", "sub/other"),
    ]
    assert found.problems == []
    assert found.skipped == {
        str(mixed_folder): [
            (".hidden.png", "hidden file"),
            ("CREDITS.md", "not an image extension"),
            ("anim.gif", "not an image extension"),
            (os.path.join("sub", ".DS_Store"), "hidden file"),
        ]
    }
    # collect_inputs keeps its (images, problems) pair
    assert collect_inputs([str(mixed_folder)]) == (found.images, [])
    # a file named explicitly is taken whatever its name; a glob skips nothing it reports
    explicit = gather_inputs([str(mixed_folder / "anim.gif"), str(mixed_folder / "*.md")])
    assert [i.key for i in explicit.images] == ["anim", "CREDITS"]
    assert explicit.skipped == {}


def test_skipped_summary_lists_ten_names_then_a_count():
    skipped = [(f"notes{i:02d}.txt", "not an image extension") for i in range(12)]
    summary = skipped_summary("docs/", skipped)
    shown = ", ".join(f"notes{i:02d}.txt (not an image extension)" for i in range(10))
    assert summary == (
        f"skipped 12 file(s) in docs/: {shown}, and 2 more; image extensions taken in folders: "
        f"{', '.join(IMAGE_EXTENSIONS)}; name a file to try it anyway"
    )
    hidden_only = skipped_summary("photos", [(".DS_Store", "hidden file")])
    assert hidden_only == "skipped 1 file(s) in photos: .DS_Store (hidden file); name a file to try it anyway"


def _unlistable(monkeypatch, folder: Path) -> None:
    """os.scandir (os.walk lists folders with it) refuses ``folder``, as for a folder one cannot read."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_folder_that_cannot_be_listed_is_a_problem(mixed_folder, monkeypatch):
    _unlistable(monkeypatch, mixed_folder / "sub")
    found = gather_inputs([str(mixed_folder)])
    assert [i.key for i in found.images] == ["good"]
    why = "cannot list this folder (Permission denied); its images are not taken"
    assert found.problems == [(str(mixed_folder / "sub"), why)]
    _unlistable(monkeypatch, mixed_folder)
    assert gather_inputs([str(mixed_folder)]) == inputs.Inputs([], [(str(mixed_folder), why)], {})


# ------------------------------------------------------------------------------------------ the CLI
def _records(out: Path) -> dict:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {Path(r["path"]).name: r for r in map(json.loads, lines)}


def test_cli_refuses_a_bomb_and_goes_on_with_the_next_image(tmp_path, tiny_model, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    bomb = _png_declaring(30000, 30000)
    (folder / "a_bomb.png").write_bytes(bomb)  # first in the folder's order
    (folder / "good.png").write_bytes(_encoded(".png", _bgr()))
    real_imdecode = cv2.imdecode

    def imdecode(data, flags):
        if data.nbytes == len(bomb):
            pytest.fail("the bomb was decoded")
        return real_imdecode(data, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    out = tmp_path / "out"
    assert main([str(folder), *tiny_model, "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    bomb_path = str(folder / "a_bomb.png")
    assert f"cannot read image {bomb_path!r}: {BOMB_REFUSED}; skipped" in captured.err
    assert "1 input(s) failed" in captured.err
    records = _records(out)
    assert records["a_bomb.png"] == {
        "path": bomb_path,
        "file": str((folder / "a_bomb.png").resolve()),
        "status": "error",
        "error": BOMB_REFUSED,
    }
    assert records["good.png"]["status"] == "ok"
    assert np.load(out / "good_2_gradcam.npy").shape == (HEIGHT, WIDTH)


def test_cli_max_pixels_lowers_and_raises_the_limit(tmp_path, tiny_model, capsys):
    image = _write(tmp_path, "small.png", _encoded(".png", _bgr()))
    assert main([image, *tiny_model, "--output-dir", str(tmp_path / "a"), "--max-pixels", "850"]) == 1
    assert "declares 37 x 23 = 851 pixels, above the limit of 850 (--max-pixels" in capsys.readouterr().err
    assert _records(tmp_path / "a")["small.png"]["status"] == "error"
    assert main([image, *tiny_model, "--output-dir", str(tmp_path / "b"), "--max-pixels", "851"]) == 0
    assert _records(tmp_path / "b")["small.png"]["status"] == "ok"
    with pytest.raises(SystemExit) as exc:
        main([image, "--max-pixels", "0"])
    assert exc.value.code == 2
    assert "--max-pixels must be an int >= 1, got 0" in capsys.readouterr().err
    assert build_parser().parse_args([image]).max_pixels == MAX_PIXELS


def test_cli_out_of_memory_while_decoding_goes_on(tmp_path, tiny_model, monkeypatch, capsys):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(_encoded(".png", _bgr()))
    real_imdecode = cv2.imdecode
    calls = []

    def imdecode(data, flags):
        calls.append(data.nbytes)
        if len(calls) == 1:
            raise MemoryError
        return real_imdecode(data, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main([*paths, *tiny_model, "--output-dir", str(tmp_path / "out")]) == 1
    assert "not enough memory to decode its 37 x 23 pixels" in capsys.readouterr().err
    records = _records(tmp_path / "out")
    assert records["a.png"]["error"] == "not enough memory to decode its 37 x 23 pixels"
    assert records["b.png"]["status"] == "ok"


def test_cli_says_which_files_a_folder_walk_skipped(mixed_folder, tmp_path, tiny_model, capsys):
    out = tmp_path / "out"
    assert main([str(mixed_folder), *tiny_model, "--output-dir", str(out)]) == 0  # skips are not failures
    captured = capsys.readouterr()
    assert (
        f"skipped 4 file(s) in {mixed_folder}: .hidden.png (hidden file), CREDITS.md (not an image "
        f"extension), anim.gif (not an image extension), {os.path.join('sub', '.DS_Store')} (hidden file); "
        f"image extensions taken in folders: {', '.join(IMAGE_EXTENSIONS)}; name a file to try it anyway\n"
    ) in captured.out
    assert captured.err == ""
    assert set(_records(out)) == {"good.png", "other.jpg"}
    assert np.load(out / "good_2_gradcam.npy").shape == (HEIGHT, WIDTH)
    assert main([str(mixed_folder), *tiny_model, "--output-dir", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_a_folder_that_cannot_be_listed_fails_the_run(
    mixed_folder, tmp_path, tiny_model, monkeypatch, capsys
):
    _unlistable(monkeypatch, mixed_folder / "sub")
    assert main([str(mixed_folder), *tiny_model, "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{str(mixed_folder / 'sub')!r}: cannot list this folder (Permission denied)" in err
    assert set(_records(tmp_path / "out")) == {"good.png"}


def test_help_explains_file_reading(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-pixels N refuse an image whose header declares more than N pixels" in out
    assert "file reading: a folder is searched recursively for " + ", ".join(IMAGE_EXTENSIONS[:-1]) in out
    assert f"and {IMAGE_EXTENSIONS[-1]} files; its other files and hidden files are listed as skipped" in out
    assert "(default 100,000,000) is refused before it is decoded" in out
    assert "the run goes on with the next image (exit status 1)" in out


# ------------------------------------------------------------------------------------------ odd names
OSC_TITLE = "\x1b]0;pwned\x07.png"  # a terminal would set its title to "pwned" if this were printed raw


def test_cli_odd_file_names_are_escaped_when_printed_and_explained(tmp_path, tiny_model, capsys):
    """A name that is not valid UTF-8 and one holding a terminal escape sequence, in a folder of four:
    every image is explained, the names are printed escaped, results.jsonl round-trips them, the rerun
    skips all four."""
    folder = tmp_path / "in"
    folder.mkdir()
    png = _encoded(".png", _bgr())
    (folder / "a.png").write_bytes(png)
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as handle:
        handle.write(png)
    (folder / OSC_TITLE).write_bytes(png)
    (folder / "c.png").write_bytes(png)
    out = tmp_path / "out"
    args = [str(folder), *tiny_model, "--output-dir", str(out), "--report"]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "\x1b" not in printed
    assert "\x07" not in printed
    assert f"image: {folder}{os.sep}bad\\xff.png\n" in captured.out
    assert f"image: {folder}{os.sep}\\x1b]0;pwned\\x07.png\n" in captured.out
    records = _records(out)
    assert set(records) == {"a.png", "bad\udcff.png", OSC_TITLE, "c.png"}
    assert all(r["status"] == "ok" for r in records.values())
    bad = records["bad\udcff.png"]
    assert bad["file"] == os.path.realpath(os.path.join(str(folder), "bad\udcff.png"))
    assert all(os.fsencode(name).startswith(b"bad\xff_") for name in bad["outputs"])  # the same bytes
    assert np.load(os.path.join(os.fsencode(out), os.fsencode(bad["outputs"][1]))).shape == (HEIGHT, WIDTH)
    (out / "results.jsonl").read_text(encoding="utf-8")  # valid UTF-8 throughout
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "bad\\xff.png" in report
    assert "\x1b" not in report
    assert "\\x1b]0;pwned\\x07.png" in report
    assert main(args) == 0  # every record read back: all four are done
    assert "skipped 4 image(s) already done" in capsys.readouterr().out
