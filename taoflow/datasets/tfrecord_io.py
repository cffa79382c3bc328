"""TFRecord framing and DALI index files, without TensorFlow.

A record is: uint64 length (little-endian), masked CRC32C of those 8 bytes, the payload, masked CRC32C of the
payload (tensorflow/core/lib/io/record_writer.cc). DALI's reader needs an index file with one
"<offset> <record length>" line per record (DALI tools/tfrecord2idx), which TAO's dataset_convert writes as
`idx-<file name>` beside each TFRecord file.
"""

import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    return _mask(google_crc32c.value(data))


def frame_record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return b"".join((header, struct.pack("<I", masked_crc32c(header)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


class TFRecordWriter:
    """Appends framed records to a file and remembers (offset, size) of each for the DALI index."""

    def __init__(self, path):
        self.path = path
        self._f = open(path, "wb")
        self._offset = 0
        self.index = []

    def write(self, payload: bytes):
        self.write_parts((payload,))

    def write_parts(self, parts):
        """Write one record whose payload is the concatenation of parts, without building that concatenation.

        TFRecords carry whole images: joining them into one payload would copy every image once more.
        """
        length = sum(map(len, parts))
        header = struct.pack("<Q", length)
        crc = 0
        for part in parts:
            crc = google_crc32c.extend(crc, part)
        self._f.write(header + struct.pack("<I", masked_crc32c(header)))
        for part in parts:
            self._f.write(part)
        self._f.write(struct.pack("<I", _mask(crc)))
        record_len = length + 16
        self.index.append((self._offset, record_len))
        self._offset += record_len

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def format_index(index) -> str:
    return "".join(f"{offset} {size}\n" for offset, size in index)


def read_records(path, verify=True):
    """Yield the payloads of a TFRecord file; raise ValueError on a truncated or corrupt file."""
    with open(path, "rb") as f:
        while True:
            header = f.read(8)
            if not header:
                return
            if len(header) < 8:
                raise ValueError(f"{path}: truncated record header")
            (length,) = struct.unpack("<Q", header)
            (len_crc,) = struct.unpack("<I", f.read(4))
            payload = f.read(length)
            data_crc = f.read(4)
            if len(payload) != length or len(data_crc) != 4:
                raise ValueError(f"{path}: truncated record")
            crc_ok = len_crc == masked_crc32c(header) and struct.unpack("<I", data_crc)[0] == masked_crc32c(payload)
            if verify and not crc_ok:
                raise ValueError(f"{path}: CRC mismatch")
            yield payload
