"""`taoflow etlt decode | encode | info`: look inside your own .etlt models with NVIDIA's codec.

The key comes from $TAO_MODEL_KEY (or --key-env VAR, or --key-file FILE, first line); `-k KEY` is accepted as TAO's
tools accept it, but a key on a command line is visible to every user of the machine (`ps`) and lands in shell
history. Exit status: 0 ok; 1 failed (the codec cannot run here); 2 bad input (no such file, not a .etlt, a wrong
key, an output that exists).
"""

import json
import os
from pathlib import Path

from . import (KEY_ENV, EtltError, codec_info, decode_bytes, decode_file, encode_file, read_header)


def add_cli_arguments(parser):
    sub = parser.add_subparsers(dest="etlt_command", metavar="COMMAND", required=True)

    def key_options(p, required):
        g = p.add_argument_group("model key" + ("" if required else " (optional: without it, only the header)"))
        g.add_argument("--key-env", default=KEY_ENV, metavar="VAR",
                       help=f"environment variable holding the key (default {KEY_ENV})")
        g.add_argument("--key-file", default=None, metavar="FILE", help="file whose first line is the key")
        g.add_argument("-k", "--key", default=None,
                       help="the key itself (visible to other users in `ps`; prefer the environment)")

    p = sub.add_parser("info", help="header, payload kind and (with the key) the ONNX inside",
                       description="Print what a .etlt holds: the header (ONNX or TAO 3/4 UFF payload, input name, "
                                   "sizes) and, when a key is available, the decoded ONNX's inputs, outputs, "
                                   "operators and TensorRT plugins.")
    p.add_argument("etlt", help="the .etlt file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    key_options(p, required=False)

    p = sub.add_parser("decode", help="write the model inside a .etlt (ONNX or UFF)")
    p.add_argument("etlt", help="the .etlt file")
    p.add_argument("-o", "--output", required=True, help="where to write the decoded model (.onnx / .uff)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing output")
    key_options(p, required=True)

    p = sub.add_parser("encode", help="write a .etlt from an ONNX (or UFF) model, as TAO's export does")
    p.add_argument("model", help="the .onnx (or .uff) model")
    p.add_argument("-o", "--output", required=True, help="the .etlt to write")
    p.add_argument("--input-name", default=None,
                   help="input node name for a UFF payload (TAO 3/4: Input); an ONNX payload has none")
    p.add_argument("--replace", action="store_true", help="overwrite an existing output")
    key_options(p, required=True)


def _key(args, required):
    if args.key:
        return args.key
    if args.key_file:
        path = Path(args.key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise EtltError(f"cannot read the key file: {e.strerror}", path=path) from None
        if not lines or not lines[0].strip():
            raise EtltError("the key file is empty", path=path)
        return lines[0].strip()
    key = os.environ.get(args.key_env) or None
    if required and not key:
        raise EtltError(f"no model key: set ${args.key_env} (or --key-file FILE)")
    return key


def run_cli(args):
    return {"info": _info, "decode": _decode, "encode": _encode}[args.etlt_command](args)


def _info(args):
    path = Path(args.etlt)
    header = read_header(path)
    info = {"file": str(path), "payload": header.payload, "input_name": header.input_name,
            "encrypted_bytes": header.encrypted_bytes}
    key = _key(args, required=False)
    if key:
        decoded = decode_bytes(path, key)
        info.update(decoded_bytes=len(decoded.data), payload_sha256=decoded.sha256, **decoded.facts)
        info["codec"] = codec_info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"{path}: .etlt with {'an ONNX' if header.payload == 'onnx' else 'a UFF (TAO 3/4)'} payload"
          + (f", input node {header.input_name!r}" if header.input_name else "")
          + f", {header.encrypted_bytes} encrypted bytes")
    if not key:
        print(f"(no key: set ${args.key_env} to look inside)")
        return 0
    print(f"decoded: {info['decoded_bytes']} bytes, sha256 {info['payload_sha256']}")
    for name in ("inputs", "outputs", "plugins", "ops"):
        if name in info:
            print(f"{name}: {', '.join(info[name]) or '-'}")
    if "opset" in info:
        print(f"opset {info['opset']}, IR version {info['ir_version']}")
    print(f"codec: {info['codec']['codec_version']} on Python {info['codec']['python_version']}")
    return 0


def _decode(args):
    decoded = decode_file(args.etlt, args.output, _key(args, required=True), replace=args.replace)
    print(f"{args.output}: {decoded.payload.upper()} model, {len(decoded.data)} bytes, sha256 {decoded.sha256}")
    return 0


def _encode(args):
    model, output = Path(args.model), Path(args.output)
    if not model.is_file():
        raise EtltError("no such file", path=model)
    if output.exists() and not args.replace:
        raise EtltError(f"{output} already exists (choose another output or --replace)", path=output)
    uff = model.suffix.lower() == ".uff"
    if uff and not args.input_name:
        raise EtltError("a UFF payload needs --input-name (TAO 3/4 SSD: Input)", path=model)
    if not uff:
        if args.input_name:
            raise EtltError("an ONNX payload has no input name in the .etlt header (TAO writes an empty one); "
                            "drop --input-name", path=model)
        _check_onnx(model)
    key = _key(args, required=True)
    encode_file(model, output, key, input_name=args.input_name or "")
    print(f"{output}: .etlt with {'a UFF' if uff else 'an ONNX'} payload ({output.stat().st_size} bytes)")
    return 0


def _check_onnx(path):
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors: not an ONNX model
        raise EtltError(f"not an ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        path=path) from None

