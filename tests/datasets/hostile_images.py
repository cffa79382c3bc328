"""Real JPEG/PNG files whose headers claim a size the pixels do not have: a small valid file with its frame header
(JPEG SOF) or IHDR chunk patched, the PNG chunk CRC recomputed so that the file is well-formed to every reader."""

import struct
import zlib
from pathlib import Path

from tests.conftest import write_image


def patch_size(path, width, height):
    """Rewrite the size in the header of the JPEG or PNG at path, in place; return path."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        assert data[12:16] == b"IHDR"
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over type + IHDR payload
    else:
        i = 2
        while True:  # walk the segments to the first SOF0/SOF2 (what cv2.imwrite writes)
            assert data[i] == 0xFF
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                data[i + 5:i + 9] = struct.pack(">HH", height, width)
                break
            i += 2 + length
    path.write_bytes(bytes(data))
    return path


def write_huge_image(path, side=65000):
    """A small real image (JPEG or PNG by extension) whose header claims side x side pixels."""
    return patch_size(write_image(path, 80, 50), side, side)
