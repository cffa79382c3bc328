#!/usr/bin/env python3
"""Regenerate (or, with --check, verify) the checked-in Python modules of taoflow's .proto files.

The *_pb2.py modules are committed so that installing taoflow needs no protoc. They must be regenerated with the
grpcio-tools version pinned in pyproject.toml's `test` extra whenever a .proto changes; the test suite runs
`--check` and fails when they are stale.
"""

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "taoflow" / "spec" / "protos"


def generate(out_dir: Path):
    from grpc_tools import protoc  # test-extra dependency; not needed at runtime

    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [f for p in protos for f in (p.replace(".proto", "_pb2.py"), p.replace(".proto", "_pb2.pyi"))]


def stale_files():
    with tempfile.TemporaryDirectory() as tmp:
        names = generate(Path(tmp))
        return [n for n in names
                if not (PROTO_DIR / n).exists() or not filecmp.cmp(Path(tmp) / n, PROTO_DIR / n, shallow=False)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in modules are not current")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated protobuf modules (run python tools/gen_protos.py): " + ", ".join(stale))
            return 1
        print("generated protobuf modules are current")
        return 0
    for name in generate(PROTO_DIR):
        print(f"wrote {PROTO_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
