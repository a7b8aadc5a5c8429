"""The CLI's inputs: files, folders (recursively) and glob patterns, each image read once.

An image's width and height are read from its header before it is decoded (:func:`image_size`), so that a
small file declaring a huge image (an "image bomb") is refused instead of taking gigabytes.
"""

from __future__ import annotations

import glob
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable

if TYPE_CHECKING:  # numpy and OpenCV load when an image is read, not when the CLI starts
    import numpy as np

#: Extensions taken when walking a folder (any explicitly named file is tried whatever its name).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

#: Images whose header declares more pixels (width x height) than this are refused before decoding
#: (``--max-pixels``): decoded, a pixel takes 3 bytes, and the float32 RGB copy the CLI works on 12 more,
#: so 100 megapixels is about 1.5 GB.
MAX_PIXELS = 100_000_000

#: Names listed at most in a folder's "skipped" summary (:func:`skipped_summary`).
SKIPPED_NAMES_SHOWN = 10

_NO_SIZE = (
    "cannot read its width and height before decoding (not a PNG, JPEG, BMP, GIF, TIFF, WebP or PNM "
    "file, or its header is cut short)"
)


@dataclass(frozen=True)
class InputImage:
    """One image to explain: where it is, and the stem of its outputs' names."""

    path: str  # as the user can find it (the path given, or under the folder given)
    key: str  # where its outputs go, relative to --output-dir, without extension: "cat" or "sub/cat"


@dataclass(frozen=True)
class Inputs:
    """What the inputs given expand to (:func:`gather_inputs`).

    Attributes:
        images: the images to explain, in a stable order, each once.
        problems: ``(spec, why)`` for specs that match nothing and folders that cannot be listed.
        skipped: by folder spec, the files its walk did not take, as ``(path under the folder, why)``; only
            folders that skipped some.
    """

    images: list[InputImage]
    problems: list[tuple[str, str]]
    skipped: dict[str, list[tuple[str, str]]]


def example_image() -> str:
    """The path of the example photo the package carries (``data/example.jpg``: a cat and a cup of coffee).

    The CLI's ``--example`` input, so that its ``--help`` examples run from any folder after ``pip install``.
    """
    from importlib import resources

    return str(resources.files("pytorch_grad_cam").joinpath("data/example.jpg"))


def gather_inputs(specs: Sequence[str]) -> Inputs:
    """Expand files, folders and globs into images, saying what matched nothing and what was skipped.

    Args:
        specs: image files (tried whatever their extension), folders (walked recursively for files with one
            of :data:`IMAGE_EXTENSIONS`, hidden files left out) and glob patterns.

    Returns:
        The :class:`Inputs`. Output keys mirror the folder structure below a folder given, or below a glob's
        leading folder (:func:`glob_root`), and are made unique (``cat-2``).
    """
    found: list[tuple[str, str]] = []  # (path, key)
    problems: list[tuple[str, str]] = []
    skipped: dict[str, list[tuple[str, str]]] = {}
    for spec in specs:
        if os.path.isdir(spec):
            walk = _walk_folder(spec)
            found.extend((p, _stem(os.path.relpath(p, spec))) for p in walk.taken)
            problems.extend(walk.unlisted)
            if walk.skipped:
                skipped[spec] = walk.skipped
            if not walk.taken and not walk.unlisted:
                problems.append((spec, f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) in this folder"))
            continue
        matched, why = _expand_file_or_glob(spec)
        found.extend(matched)
        if why:
            problems.append((spec, why))
    return Inputs(_unique(found), problems, skipped)


def collect_inputs(specs: Sequence[str]) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Expand files, folders and globs into images, in a stable order, each once.

    Returns ``(images, problems)``: ``problems`` are ``(spec, why)`` for specs that match nothing (and
    folders that cannot be listed). :func:`gather_inputs` also says which files folder walks skipped.
    """
    inputs = gather_inputs(specs)
    return inputs.images, inputs.problems


def skipped_summary(spec: str, skipped: Sequence[tuple[str, str]]) -> str:
    """One line on the files a folder walk skipped: at most :data:`SKIPPED_NAMES_SHOWN` names, with why.

    ``skipped 2 file(s) in examples/: CREDITS.md (not an image extension), anim.gif (not an image
    extension); image extensions taken in folders: .jpg, ...; name a file to try it anyway``
    """
    names = [f"{path} ({why})" for path, why in skipped[:SKIPPED_NAMES_SHOWN]]
    if len(skipped) > SKIPPED_NAMES_SHOWN:
        names.append(f"and {len(skipped) - SKIPPED_NAMES_SHOWN} more")
    parts = [f"skipped {len(skipped)} file(s) in {spec}: {', '.join(names)}"]
    if any(why == _NOT_AN_IMAGE_EXTENSION for _, why in skipped):
        parts.append(f"image extensions taken in folders: {', '.join(IMAGE_EXTENSIONS)}")
    parts.append("name a file to try it anyway")
    return "; ".join(parts)


def _unique(found: list[tuple[str, str]]) -> list[InputImage]:
    """Each file once (by real path), each output key once (``cat``, ``cat-2``, ...)."""
    images: list[InputImage] = []
    seen_paths: set[str] = set()
    seen_keys: set[str] = set()
    for path, key in found:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        unique, n = key, 1
        while unique in seen_keys:
            n += 1
            unique = f"{key}-{n}"
        seen_keys.add(unique)
        images.append(InputImage(path, unique))
    return images


def _expand_file_or_glob(spec: str) -> tuple[list[tuple[str, str]], str]:
    """``([(path, key)], why)`` of a spec that is not a folder: a file, or a glob.

    ``why`` says why it matches nothing (empty when it matches something, or is a file).
    """
    if os.path.isfile(spec):
        return [(spec, _stem(os.path.basename(spec)))], ""
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        root = glob_root(spec)
        return [(p, _key_below(p, root)) for p in paths], "" if paths else "the pattern matches no file"
    return [], "no such file or folder"


def glob_root(pattern: str) -> str:
    """The folder a glob pattern starts in: its leading components without wildcards.

    ``glob_root("photos/**/*.png") == "photos"``, ``glob_root("/data/a*/x.png") == "/data"``, ``""`` (the
    current folder) for ``"*.png"``. A match's output key is its path below this folder, as for a folder
    given.
    """
    drive, rest = os.path.splitdrive(pattern)
    components = rest.replace(os.sep, "/").split("/")[:-1]  # the last one is the file name pattern
    literal = []
    for component in components:
        if glob.has_magic(component):
            break
        literal.append(component)
    return drive + ("/".join(literal) or ("/" if literal else ""))


def _key_below(path: str, root: str) -> str:
    """``path``'s key below ``root``; its file name when not below it (``..`` after a wildcard)."""
    relative = os.path.relpath(path, root or os.curdir)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        relative = os.path.basename(path)
    return _stem(relative)


_NOT_AN_IMAGE_EXTENSION = "not an image extension"


@dataclass
class _FolderWalk:
    """One folder walked: the image files taken, the files skipped with why, the folders not listed."""

    taken: list[str] = field(default_factory=list)  # paths
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path under the folder, why)
    unlisted: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)


def _walk_folder(root: str) -> _FolderWalk:
    walk = _FolderWalk()

    def not_listed(error: OSError) -> None:
        why = f"cannot list this folder ({error.strerror or error}); its images are not taken"
        walk.unlisted.append((error.filename or root, why))

    for folder, dirs, files in os.walk(root, onerror=not_listed):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            if name.startswith("."):
                walk.skipped.append((os.path.relpath(path, root), "hidden file"))
            elif not name.lower().endswith(IMAGE_EXTENSIONS):
                walk.skipped.append((os.path.relpath(path, root), _NOT_AN_IMAGE_EXTENSION))
            else:
                walk.taken.append(path)
    walk.taken.sort()
    walk.skipped.sort()
    return walk


def _stem(relative: str) -> str:
    return os.path.splitext(relative)[0].replace(os.sep, "/")


# ------------------------------------------------------------------------------------------ reading
def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image as float32 RGB in [0, 1], HxWx3; raises ValueError saying why it cannot be read.

    The width and height its header declares are read first (:func:`image_size`); a file whose header
    cannot be read, or that declares more than ``max_pixels`` pixels, is refused without being decoded.
    Running out of memory or an OpenCV error while decoding is a ValueError too.

    Args:
        path: the image file, in any format OpenCV decodes that :func:`image_size` reads.
        max_pixels: the most pixels (width x height) accepted (default :data:`MAX_PIXELS`).
    """
    import cv2
    import numpy as np

    width, height = _declared_size(path, max_pixels)
    try:
        bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("not an image OpenCV can decode")
        if bgr.shape[0] * bgr.shape[1] > max_pixels:  # a header read differently from OpenCV's decoder
            raise ValueError(_too_many(bgr.shape[1], bgr.shape[0], max_pixels, "decodes to"))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        rgb /= 255.0
        return rgb
    except MemoryError:
        raise ValueError(f"not enough memory to decode its {width} x {height} pixels") from None
    except cv2.error as exc:
        raise ValueError(f"OpenCV cannot decode it ({getattr(exc, 'err', '') or exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from None


def _declared_size(path: str, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of the header, or ValueError: no such file, no size readable, too many pixels."""
    if not os.path.isfile(path):
        raise ValueError("no such file")
    try:
        size = image_size(path)
        empty = os.path.getsize(path) == 0
    except OSError as exc:
        raise ValueError(f"cannot open it ({exc.strerror or exc})") from None
    if size is None:
        raise ValueError("the file is empty" if empty else _NO_SIZE)
    if size[0] * size[1] > max_pixels:
        raise ValueError(_too_many(*size, max_pixels))
    return size


def _too_many(width: int, height: int, max_pixels: int, verb: str = "declares") -> str:
    return (
        f"{verb} {width} x {height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
        "(--max-pixels to raise it)"
    )


def image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` as the image file's header declares them, read without decoding the image.

    Only the header is read (a few bytes; for JPEG the segments before the frame header are seeked over,
    for TIFF the first image directory is read). Formats: PNG, JPEG (baseline, progressive, lossless,
    arithmetic), BMP (every header version; a negative height is a top-down image), GIF (the logical
    screen), TIFF (classic and BigTIFF, either byte order), WebP (lossy, lossless, extended) and PNM (PBM,
    PGM, PPM in ASCII or binary, PAM, PFM).

    Args:
        path: the file.

    Returns:
        ``(width, height)``, both at least 1; None for another format, a header cut short, or a size of 0.

    Raises:
        OSError: the file cannot be opened or read.
    """
    with open(path, "rb") as file:
        head = file.read(_HEAD_BYTES)
        reader = next((read for magic, read in _READERS if head.startswith(magic)), None)
        size = reader(file, head) if reader else None
    if size is None or size[0] < 1 or size[1] < 1:
        return None
    return size


_Size = tuple[int, int]
_HEAD_BYTES = 32  # every format's size is within its first 30 bytes, or found from them (JPEG, TIFF, PNM)


def _png(file: BinaryIO, head: bytes) -> _Size | None:
    """The IHDR chunk, first after the signature: width, height as big-endian uint32."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_PARAMETERLESS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows
_JPEG_MAX_SEGMENTS = 10_000  # before the frame header (real files have a few dozen at most)


def _jpeg(file: BinaryIO, head: bytes) -> _Size | None:
    """The first SOFn frame header's height and width, reached by seeking over the segments before it."""
    file.seek(2)  # after SOI
    for _ in range(_JPEG_MAX_SEGMENTS):
        marker = _jpeg_marker(file)
        if marker is None or marker in (0x00, 0xD9, 0xDA):  # not a marker, EOI or SOS before a frame
            return None
        if marker in _JPEG_PARAMETERLESS:
            continue
        length = file.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            return None
        if marker in _JPEG_FRAMES:
            frame = file.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        file.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)
    return None


def _jpeg_marker(file: BinaryIO) -> int | None:
    """The next marker's code: an 0xFF, any 0xFF fill bytes, then the code; None at the end or no 0xFF."""
    byte = file.read(1)
    if byte != b"\xff":
        return None
    while byte == b"\xff":
        byte = file.read(1)
    return byte[0] if byte else None


def _bmp(file: BinaryIO, head: bytes) -> _Size | None:
    """The DIB header after the 14-byte file header: uint16 sizes in the 12-byte core header, int32 else."""
    if len(head) < 26:
        return None
    header_size = int.from_bytes(head[14:18], "little")
    if header_size == 12:  # BITMAPCOREHEADER (OS/2 1.x)
        return struct.unpack("<HH", head[18:22])
    if header_size < 16:
        return None
    width, height = struct.unpack("<ii", head[18:26])
    return width, abs(height)  # a negative height: rows stored top-down


def _gif(file: BinaryIO, head: bytes) -> _Size | None:
    """The logical screen descriptor after the signature: little-endian uint16 width, height."""
    return struct.unpack("<HH", head[6:10]) if len(head) >= 10 else None


_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)
_TIFF_MAX_ENTRIES = 65_535


def _tiff(file: BinaryIO, head: bytes) -> _Size | None:
    """ImageWidth and ImageLength of the first image file directory (classic TIFF or BigTIFF)."""
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"*\0", b"\0*"):  # classic: 32-bit offsets, 12-byte entries
        if len(head) < 8:
            return None
        (offset,) = struct.unpack(order + "I", head[4:8])
        return _tiff_directory(file, order, offset, big=False)
    if len(head) < 16:  # BigTIFF: offset size 8, 0, then a 64-bit offset; 20-byte entries
        return None
    offset_size, zero, offset = struct.unpack(order + "HHQ", head[4:16])
    return _tiff_directory(file, order, offset, big=True) if (offset_size, zero) == (8, 0) else None


def _tiff_directory(file: BinaryIO, order: str, offset: int, big: bool) -> _Size | None:
    """Tags 256 and 257 of the directory at ``offset``: SHORT, LONG or LONG8, left-justified in the entry."""
    count_format, entry_size, value_size = ("Q", 20, 8) if big else ("H", 12, 4)
    count_size = struct.calcsize(order + count_format)  # the number of entries: uint16, uint64 in BigTIFF
    file.seek(offset)
    raw = file.read(count_size)
    if len(raw) < count_size:
        return None
    (count,) = struct.unpack(order + count_format, raw)
    size: dict[int, int] = {}
    for _ in range(min(count, _TIFF_MAX_ENTRIES)):
        entry = file.read(entry_size)
        if len(entry) < entry_size:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag not in (_TIFF_WIDTH, _TIFF_LENGTH):
            continue
        value_format = order + _TIFF_TYPES.get(kind, "")
        if value_format == order or struct.calcsize(value_format) > value_size:
            return None  # not an integer type, or LONG8 in a classic TIFF
        (size[tag],) = struct.unpack_from(value_format, entry, entry_size - value_size)  # left-justified
        if len(size) == 2:
            return size[_TIFF_WIDTH], size[_TIFF_LENGTH]
    return None


def _webp(file: BinaryIO, head: bytes) -> _Size | None:
    """The first chunk after ``RIFF....WEBP``: ``VP8 `` (lossy), ``VP8L`` (lossless), ``VP8X`` (extended)."""
    if len(head) < 30 or head[8:12] != b"WEBP":
        return None
    chunk, data = head[12:16], head[20:30]
    if chunk == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":  # frame tag, start code, 14-bit sizes
        width, height = struct.unpack("<HH", data[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[0] == 0x2F:  # signature, then width - 1 and height - 1 in 14 bits each
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # flags, 3 reserved bytes, canvas width - 1 and height - 1 in 24 bits each
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
    return None


_PNM_HEAD_BYTES = 64 * 1024  # a header with longer comments is refused
_PNM_TOKEN = re.compile(rb"#[^\r\n]*|[^\s#]+")  # a comment (to the end of its line) or a token


def _pnm(file: BinaryIO, head: bytes) -> _Size | None:
    """PNM: width and height are the two tokens after the magic number, comments aside; PAM has lines.

    P1-P6 are PBM, PGM and PPM (ASCII or binary), PF/Pf PFM; P7 (PAM) has WIDTH and HEIGHT lines.
    """
    if len(head) < 3 or head[1:2] not in b"1234567Ff" or not head[2:3].isspace():
        return None
    file.seek(0)
    text = file.read(_PNM_HEAD_BYTES)
    if head[1:2] == b"7":
        return _pam(text)
    tokens = (m.group() for m in _PNM_TOKEN.finditer(text, 2) if not m.group().startswith(b"#"))
    size = [next(tokens, b""), next(tokens, b"")]
    return (int(size[0]), int(size[1])) if size[0].isdigit() and size[1].isdigit() else None


def _pam(text: bytes) -> _Size | None:
    """The WIDTH and HEIGHT lines of a PAM header, which ENDHDR ends."""
    fields: dict[bytes, int] = {}
    for line in text.split(b"\n")[1:]:
        words = line.split()
        if words == [b"ENDHDR"]:
            return (fields[b"WIDTH"], fields[b"HEIGHT"]) if len(fields) == 2 else None
        if len(words) == 2 and words[0] in (b"WIDTH", b"HEIGHT") and words[1].isdigit():
            fields[words[0]] = int(words[1])
    return None


_READERS: tuple[tuple[bytes, Callable[[BinaryIO, bytes], _Size | None]], ...] = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"BM", _bmp),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"II*\0", _tiff),
    (b"MM\0*", _tiff),
    (b"II+\0", _tiff),
    (b"MM\0+", _tiff),
    (b"RIFF", _webp),
    (b"P", _pnm),
)
