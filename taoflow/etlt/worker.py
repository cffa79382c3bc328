"""Runs inside the codec's own interpreter (CPython 3.10 or 3.12 with nvidia-eff-tao-encryption): imports nothing of
taoflow. One request as a JSON line on stdin, one JSON line on stdout.

Request: {"op": "encode" | "decode" | "check", "input": path, "output": path, "input_name": str, "key": str}.
The key comes on stdin only (never argv, never the environment of other processes) and is never written anywhere.

.etlt layout (TAO Deploy's nvidia_tao_deploy/utils/decoding.py): a little-endian int32, the length of the input
node name; the name (empty for an ONNX payload, the input node of a UFF payload); then the payload encrypted by
eff_tao_encryption.tao_codec.encrypt_stream(..., encryption=True, rewind=False).
"""

import json
import os
import struct
import sys


def _codec():
    from eff_tao_encryption.tao_codec import decrypt_stream, encrypt_stream
    return encrypt_stream, decrypt_stream


def encode(request):
    encrypt_stream, _ = _codec()
    name = request.get("input_name", "").encode("utf-8")
    with open(request["input"], "rb") as src, open(request["output"], "wb") as dst:
        dst.write(struct.pack("<i", len(name)))
        dst.write(name)
        encrypt_stream(src, dst, request["key"].encode("utf-8"), encryption=True, rewind=False)
        dst.flush()
        os.fsync(dst.fileno())
    return {"ok": True}


def decode(request):
    _, decrypt_stream = _codec()
    with open(request["input"], "rb") as src, open(request["output"], "wb") as dst:
        head = src.read(4)
        if len(head) != 4:
            return {"ok": False, "error": "shorter than the 4-byte .etlt header"}
        size = struct.unpack("<i", head)[0]
        name = src.read(size) if size > 0 else b""
        try:
            decrypt_stream(src, dst, request["key"].encode("utf-8"), encryption=True, rewind=False)
        except ValueError as e:  # the codec's "Invalid nonce size": no encrypted payload after the header
            return {"ok": False, "error": "no encrypted payload after the header ({})".format(e)}
    return {"ok": True, "input_name": name.decode("utf-8", "replace")}


def check(_request):
    import io
    encrypt_stream, decrypt_stream = _codec()
    plain = b"taoflow codec check" * 100
    enc, dec = io.BytesIO(), io.BytesIO()
    encrypt_stream(io.BytesIO(plain), enc, b"check", encryption=True, rewind=False)
    enc.seek(0)
    decrypt_stream(enc, dec, b"check", encryption=True, rewind=False)
    import eff_tao_encryption
    version = getattr(eff_tao_encryption, "__version__", None)
    try:
        from importlib.metadata import version as dist_version
        version = dist_version("nvidia-eff-tao-encryption")
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    return {"ok": dec.getvalue() == plain, "version": version,
            "python": "{}.{}.{}".format(*sys.version_info[:3])}


def main():
    request = json.loads(sys.stdin.readline())
    op = {"encode": encode, "decode": decode, "check": check}.get(request.get("op"))
    if op is None:
        reply = {"ok": False, "error": "unknown op"}
    else:
        try:
            reply = op(request)
        except ImportError as e:
            reply = {"ok": False, "error": "cannot import the codec: {}".format(e), "missing_codec": True}
        except OSError as e:
            reply = {"ok": False, "error": "{}: {}".format(e.filename or "", e.strerror or e)}
        except Exception as e:  # noqa: BLE001 - reported to the host as one line; the key is not in it
            reply = {"ok": False, "error": "{}: {}".format(type(e).__name__, e)}
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
