"""Image files on disk: size from the header, a cheap truncation check, listing, and pairing with label files.

Every image of a dataset passes through here, so nothing is decoded: the size comes from the JPEG frame header or
the PNG IHDR chunk, and integrity is judged from the last bytes of the file, which is where an interrupted download
or copy shows. The format is detected from the file's signature, not its extension, because TAO's converter (PIL)
and DALI's decoder do the same.

Headers are also checked against a size limit (MAX_IMAGE_SIDE pixels a side unless the step is given another):
a header can claim 65000x65000 pixels in a file of a few kilobytes, which every check that reads only the header
passes, and which then makes the decoder (OpenCV, DALI) fail at training time without naming the file.

This module also holds the per-file problem policy shared by the converters: a problem is a small dict
(`path`, `line`, `error`) that is either raised as a DataError (`on_error="fail"`) or reported as a skip.
"""

import io
import os
import struct
from pathlib import Path

from ..errors import DataError, TaoflowError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# TAO opens exactly `<label_dir>/<stem>.txt`, so only that spelling counts as a label file.
LABEL_EXTENSION = ".txt"
ON_ERROR_CHOICES = ("fail", "skip")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
_TAIL_BYTES = 4096
# Largest width or height accepted by default: 16384 covers any camera frame (an 8K frame is 7680 wide) and keeps a
# decoded image under OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS, 2^30 pixels).
MAX_IMAGE_SIDE = 16384


def is_image_name(name):
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def image_size(path, max_side=MAX_IMAGE_SIDE):
    """Return (width, height) of a JPEG or PNG from its header; DataError if unreadable, truncated, or wider or
    higher than max_side pixels (None: no limit).

    This is the image check of every data step (convert, split, TFRecords, training and evaluation from folders):
    one function, so that a file one step accepts is not refused by the next.
    """
    try:
        with open(path, "rb") as f:
            size = _size_of(f, path, max_side)
    except OSError as e:
        raise DataError(f"cannot read image: {e.strerror or e}", path=path) from None
    return size


def read_image(path, max_side=MAX_IMAGE_SIDE):
    """Return (bytes, (width, height)) of a whole JPEG or PNG file, with the checks and errors of image_size.

    For callers that need the bytes anyway (TFRecords embed them): one open and one read instead of two.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read image: {e.strerror or e}", path=path) from None
    return data, _size_of(io.BytesIO(data), path, max_side)


def check_max_side(max_side):
    """max_side as given to a step: a positive integer, or None for no limit."""
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise TaoflowError(f"max_image_side must be a positive number of pixels, got {max_side!r}")


def add_max_side_argument(parser):
    parser.add_argument("--max-image-side", "--max_image_side", dest="max_image_side", type=int,
                        default=MAX_IMAGE_SIDE, metavar="PX",
                        help=f"refuse an image whose header claims a width or height above PX pixels "
                             f"(default {MAX_IMAGE_SIDE}; such a file fails later in the decoder)")


def _size_of(f, path, max_side=MAX_IMAGE_SIDE):
    head = f.read(32)
    if not head:
        raise DataError("image file is empty", path=path)
    if head.startswith(_PNG_SIGNATURE):
        size = _png_size(head, path)
        _check_tail(f, path, _PNG_IEND, "PNG", "IEND chunk")
    elif head.startswith(b"\xff\xd8"):
        size = _jpeg_size(f, path)
        _check_tail(f, path, _JPEG_EOI, "JPEG", "EOI marker FF D9")
    else:
        raise DataError("not a JPEG or PNG file (unrecognised signature)", path=path)
    if size[0] <= 0 or size[1] <= 0:
        raise DataError(f"image header gives an empty size {size[0]}x{size[1]}", path=path)
    if max_side is not None and max(size) > max_side:
        raise DataError(f"image header claims {size[0]}x{size[1]} pixels, more than the limit of {max_side} a side "
                        f"(--max-image-side); decoders fail on such images: resize or exclude it", path=path)
    return size


def _png_size(head, path):
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise DataError("corrupt PNG: the IHDR chunk does not follow the signature", path=path)
    return struct.unpack(">II", head[16:24])


def _jpeg_size(f, path):
    """Walk the marker segments up to the first start-of-frame; skip segment payloads with seek, never decode."""
    f.seek(2)
    while True:
        byte = f.read(1)
        if not byte:
            raise DataError("truncated JPEG: no frame header (SOF) before the end of the file", path=path)
        if byte != b"\xff":
            continue  # stray bytes between segments: libjpeg tolerates them, so do the same
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            continue
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0x00:
            continue
        if code in (0xD9, 0xDA):
            raise DataError("corrupt JPEG: scan data starts before any frame header (SOF)", path=path)
        raw_len = f.read(2)
        if len(raw_len) < 2:
            continue  # the loop reports the truncation
        length = struct.unpack(">H", raw_len)[0]
        if code in _JPEG_SOF:
            frame = f.read(5)
            if len(frame) < 5:
                raise DataError("truncated JPEG: incomplete frame header", path=path)
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(max(length - 2, 0), os.SEEK_CUR)


def _check_tail(f, path, trailer, kind, what):
    """A complete file ends with its trailer; zero padding after it is allowed (some writers pad to a block)."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(end - _TAIL_BYTES, 0))
    tail = f.read().rstrip(b"\x00")
    if not tail.endswith(trailer):
        raise DataError(
            f"truncated or corrupt {kind}: the file does not end with the {what} "
            f"(interrupted download or copy?); re-fetch it or exclude it",
            path=path,
        )


def _visible_files(directory, what):
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{what} directory not found", path=directory)
    # Dot files are skipped: macOS archives leave AppleDouble "._name.jpg" files that are not images.
    with os.scandir(directory) as it:
        return sorted([e.name for e in it if not e.name.startswith(".") and e.is_file()])


def dir_prefix(directory):
    """Text that, followed by a file name, spells str(Path(directory) / name).

    Per-file paths are plain strings built from this prefix: a Path costs a parse per file (tens of thousands per
    dataset), and strings pickle cheaply to worker processes. The spelling stays exactly what Path gives, because
    these paths end up in reports and error messages.
    """
    base = str(Path(directory))
    if base == ".":
        return ""
    return base if base.endswith("/") else base + "/"


def _scan_image_files(image_dir):
    """scan_images with paths as str."""
    prefix = dir_prefix(image_dir)
    by_stem = {}
    for name in _visible_files(image_dir, "image"):
        if is_image_name(name):
            stem = name[: name.rfind(".")]  # os.path.splitext's stem: the name has an image extension
            by_stem.setdefault(stem, []).append(prefix + name)
    by_stem = sorted(by_stem.items())
    images = {stem: paths[0] for stem, paths in by_stem if len(paths) == 1}
    duplicates = {stem: paths for stem, paths in by_stem if len(paths) > 1}
    return images, duplicates


def scan_images(image_dir):
    """Return ({stem: path}, {stem: [paths]}) for the images of a directory; stems used twice go in the second."""
    images, duplicates = _scan_image_files(image_dir)
    return ({stem: Path(p) for stem, p in images.items()},
            {stem: [Path(p) for p in paths] for stem, paths in duplicates.items()})


def list_images(image_dir):
    """Return {stem: path} of the images in a directory, sorted by stem; DataError on a stem used twice."""
    images, duplicates = scan_images(image_dir)
    if duplicates:
        stem, paths = next(iter(duplicates.items()))
        raise DataError(duplicate_message(stem, paths), path=paths[0])
    return images


def duplicate_message(stem, paths):
    names = ", ".join(os.path.basename(p) for p in paths)
    return f"image stem {stem!r} is used by several files ({names}); labels are matched by stem, so keep only one"


def _list_label_files(label_dir):
    prefix = dir_prefix(label_dir)
    names = _visible_files(label_dir, "label")
    return {name[: -len(LABEL_EXTENSION)]: prefix + name for name in names if name.endswith(LABEL_EXTENSION)}


def list_labels(label_dir):
    """Return {stem: path} of the `.txt` label files of a directory, sorted by stem."""
    return {stem: Path(p) for stem, p in _list_label_files(label_dir).items()}


def problem(error, path, line=None):
    """A per-file problem as plain data, so it crosses process boundaries and lands in report.json as is."""
    return {"path": str(path), "line": line, "error": error}


def problem_from(err):
    return problem(err.message, err.path, err.line)


def raise_problem(p):
    raise DataError(p["error"], path=p["path"], line=p["line"])


def pair_images_labels(image_dir, label_dir):
    """Match images and labels by stem: return (pairs, problems).

    pairs: [(stem, image_path, label_path)] sorted by stem, paths as str (see dir_prefix). problems: an image
    without a label, a label without an image, a stem used by several images (those images and their label are
    left out of pairs).
    """
    images, duplicates = _scan_image_files(image_dir)
    labels = _list_label_files(label_dir)
    problems = [problem(duplicate_message(stem, paths), paths[0]) for stem, paths in duplicates.items()]
    pairs = []
    for stem, image in images.items():
        label = labels.get(stem)
        if label is not None:
            pairs.append((stem, image, label))
        else:
            expected = Path(label_dir) / f"{stem}{LABEL_EXTENSION}"
            problems.append(problem(f"image has no label file (expected {expected})", image))
    for stem, label in labels.items():
        if stem not in images and stem not in duplicates:
            problems.append(problem(f"label file has no image in {image_dir}", label))
    problems.sort(key=lambda p: p["path"])
    return pairs, problems


def check_on_error(on_error):
    if on_error not in ON_ERROR_CHOICES:
        raise TaoflowError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")


def relative(path, root):
    """path relative to root as POSIX text when it lies under root (keeps report.json portable), else as is."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
