""".etlt files with NVIDIA's own codec, run in an interpreter of its own.

A `.etlt` is what TAO's export writes and what `tao-converter` and TAO Deploy read (`nvidia_tao_deploy/utils/
decoding.py`): a little-endian int32 with the length of the input node name, the name (empty for an ONNX payload, the
input node for a TAO 3/4 UFF payload), then the payload encrypted with the model key by NVIDIA's proprietary
`eff_tao_encryption.tao_codec` (PyPI `nvidia-eff-tao-encryption`: PBKDF2-derived key, AES-CTR, random nonce first, so
two encodings of one model differ while both decode to the same bytes). Its scheme is not public, so taoflow does not
re-implement it: it runs the real library.

That library has wheels for CPython 3.10 (0.1.10) and 3.12 (0.1.9) only, and taoflow runs on 3.11 (and the Jetsons'
agent on 3.6). So, like the `nvidia-tao` launcher, the codec lives in a venv of its own, on a 3.10 or 3.12 found on
this machine, and runs as a subprocess (worker.py) with the key on its stdin: never on a command line, in the
environment of a child, or in a log. `TAOFLOW_ETLT_PYTHON` names the Python to use (one that imports the codec is
used as it is; a bare 3.10/3.12 gets the venv built from it). The venv is built once (pip, from PyPI) into
`$TAOFLOW_ETLT_VENV_DIR` (default `~/.cache/taoflow/etlt-codec`). The package's declared dependencies (black, isort,
pyarmor, pyinstaller, pybind11) are its build tools; at run time it needs `cryptography` only, so the venv installs
the pinned wheel with --no-deps plus cryptography (40 MB, seconds instead of minutes), then proves a round trip.

AES-CTR has no integrity check: a wrong key decrypts to noise. Decoding therefore validates the payload (an ONNX
model that parses, or a UFF protobuf that does) and, when the caller knows it (taoflow's own model.json), its sha256,
and reports "wrong key" instead of handing back garbage.
"""

import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import TaoflowError

log = logging.getLogger(__name__)

PYTHON_ENV = "TAOFLOW_ETLT_PYTHON"
VENV_DIR_ENV = "TAOFLOW_ETLT_VENV_DIR"
KEY_ENV = "TAO_MODEL_KEY"
CODEC_DIST = "nvidia-eff-tao-encryption"
# The releases with wheels for each CPython (none for 3.11 or 3.13); the runtime dependency of the compiled backend.
CODEC_PINS = {(3, 10): "0.1.10", (3, 12): "0.1.9"}
RUNTIME_REQUIREMENTS = ["cryptography"]
WORKER = Path(__file__).with_name("worker.py")
MAX_INPUT_NAME = 4096  # a UFF input node name; anything longer is not a .etlt header
NONCE_BYTES = 16
INSTALL_HINT = ("install CPython 3.10 or 3.12 (`pyenv install 3.10`, or `apt-get install python3.10 python3.10-venv`) "
                f"so taoflow can build the codec's venv, or set {PYTHON_ENV} to a Python 3.10/3.12 that has "
                f"`pip install {CODEC_DIST}`")


class EtltError(TaoflowError):
    """A file that is not a usable .etlt (bad input, exit 2)."""


class WrongKeyError(EtltError):
    """The key does not decode this .etlt (AES-CTR decrypts to noise; the payload check says so)."""


class CodecUnavailable(TaoflowError):
    """No interpreter can run NVIDIA's codec here (the machine lacks something: exit 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Header:
    input_name: str
    payload_offset: int
    encrypted_bytes: int

    @property
    def payload(self):
        """'onnx' (empty input name) or 'uff' (TAO 3/4: the input node's name), as TAO Deploy decides."""
        return "uff" if self.input_name else "onnx"


@dataclass
class Decoded:
    payload: str          # "onnx" or "uff"
    input_name: str
    data: bytes
    sha256: str
    facts: dict = field(default_factory=dict)  # ONNX: inputs, outputs, ops, plugins, opset, ir_version


def read_header(path):
    """The .etlt header of `path`, checked against the file's size; EtltError naming the file otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise EtltError(f"not a .etlt: {size} bytes, shorter than its 4-byte header", path=path)
            length = struct.unpack("<i", head)[0]
            if length < 0 or length > MAX_INPUT_NAME or 4 + length + NONCE_BYTES > size:
                raise EtltError(f"not a .etlt: its header gives an input-name length of {length} bytes "
                                f"(file of {size} bytes)", path=path)
            raw = f.read(length)
    except FileNotFoundError:
        raise EtltError("no such file", path=path) from None
    except IsADirectoryError:
        raise EtltError("is a directory, not a .etlt", path=path) from None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EtltError("not a .etlt: the input name in its header is not text", path=path) from None
    if any(ord(c) < 32 for c in name):
        raise EtltError("not a .etlt: the input name in its header is not text", path=path)
    return Header(name, 4 + length, size - 4 - length)


# ---------------------------------------------------------------------------------------------------------------------
# The codec's interpreter


def _python_version(python):
    try:
        out = subprocess.run([str(python), "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.strip().split(".")
    return int(major), int(minor)


def _imports_codec(python):
    try:
        return subprocess.run([str(python), "-I", "-c", "import eff_tao_encryption.tao_codec"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_base_pythons():
    """CPython 3.10 / 3.12 interpreters on this machine: pyenv's versions, then python3.10 / python3.12 on PATH."""
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    if shutil.which("pyenv"):
        try:
            roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    found = []
    for minor in (10, 12):
        for root in filter(None, dict.fromkeys(roots)):
            found += sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}*", "bin", f"python3.{minor}")))
        on_path = shutil.which(f"python3.{minor}")
        if on_path:
            found.append(on_path)
    return list(dict.fromkeys(found))


def default_venv_dir():
    if os.environ.get(VENV_DIR_ENV):
        return Path(os.environ[VENV_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "taoflow" / "etlt-codec"


def ensure_codec_venv(cache_dir=None, base=None):
    """(python of a venv with the codec, None), built once from `base` (else the first 3.10/3.12 found) under
    `cache_dir`; (None, reason) when there is no 3.10/3.12 or the venv cannot be built."""
    bases = [str(base)] if base else find_base_pythons()
    if not bases:
        return None, f"no CPython 3.10 or 3.12 on this machine (NVIDIA's {CODEC_DIST} has wheels for those only)"
    base = bases[0]
    version = _python_version(base)
    if version not in CODEC_PINS:
        return None, f"{base} is Python {'.'.join(map(str, version or ('?',)))}; {CODEC_DIST} has wheels for " \
                     f"CPython 3.10 and 3.12 only"
    pins = [f"{CODEC_DIST}=={CODEC_PINS[version]}", *RUNTIME_REQUIREMENTS]
    key = hashlib.sha256((os.path.realpath(base) + "\n" + "\n".join(pins)).encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir or default_venv_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv = cache_dir / f"py{version[0]}{version[1]}-{key}"
    python = venv / "bin" / "python"
    with open(cache_dir / "build.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # parallel processes share one build
        if (venv / ".complete").is_file():
            return python, None
        log.info("building the .etlt codec venv (Python %d.%d, %s) in %s", *version, pins[0], venv)
        tmp = cache_dir / f".{venv.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run([base, "-m", "venv", str(tmp)])
            pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            _run(pip + ["--no-deps", pins[0]])  # its declared deps are build tools (see the module docstring)
            _run(pip + RUNTIME_REQUIREMENTS)
        except subprocess.CalledProcessError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, f"cannot build the codec venv from {base}: {' '.join(map(str, e.cmd[-2:]))}: " \
                         f"{(e.stderr or '').strip()[-300:]}"
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, f"building the codec venv from {base} timed out (pip)"
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)  # only bin/python (a symlink to the base) is used, so the venv's own path may change
        reply = _worker(venv / "bin" / "python", {"op": "check"})
        if not reply.get("ok"):
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"the codec venv built from {base} fails its round trip: {reply.get('error')}"
        (venv / ".complete").write_text(" ".join(pins) + "\n")
        return python, None


def _run(argv):
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@lru_cache(maxsize=4)
def _resolve(chosen, cache_dir):
    if chosen:
        python = Path(chosen)
        if not python.exists():
            raise CodecUnavailable(f"{PYTHON_ENV}={chosen}: no such file")
        if _imports_codec(python):
            return python
        version = _python_version(python)
        if version not in CODEC_PINS:
            shown = ".".join(map(str, version)) if version else "not a working Python"
            raise CodecUnavailable(f"{PYTHON_ENV}={chosen} is {shown} and does not import eff_tao_encryption: "
                                   f"{CODEC_DIST} has wheels for CPython 3.10 and 3.12 only; {INSTALL_HINT}")
        built, reason = ensure_codec_venv(cache_dir, base=python)
    else:
        built, reason = ensure_codec_venv(cache_dir)
    if built is None:
        raise CodecUnavailable(f"the .etlt codec cannot run here: {reason}; {INSTALL_HINT}")
    return built


def codec_python():
    """The interpreter that runs the codec (found, or built once); CodecUnavailable says what to install."""
    return _resolve(os.environ.get(PYTHON_ENV) or None, str(default_venv_dir()))


def codec_info():
    """{"python": path, "python_version": ..., "codec_version": ...} of the interpreter taoflow would use."""
    python = codec_python()
    reply = _worker(python, {"op": "check"})
    if not reply.get("ok"):
        raise CodecUnavailable(f"the codec in {python} fails its round trip: {reply.get('error')}; {INSTALL_HINT}")
    return {"python": str(python), "python_version": reply.get("python"), "codec_version": reply.get("version")}


def _worker(python, request, key=None):
    """Run worker.py in the codec's interpreter: the request (with the key) on stdin, one JSON reply on stdout."""
    line = json.dumps(dict(request, key=key or "")) + "\n"
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "PYTHONPATH", "PYTHONHOME")}
    try:
        out = subprocess.run([str(python), "-I", str(WORKER)], input=line, capture_output=True, text=True,
                             timeout=1800, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        raise CodecUnavailable(f"cannot run the codec with {python}: {e}") from None
    try:
        reply = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (out.stderr or "").strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
        reply = {"ok": False, "error": f"the codec process ended without a reply: {tail[0]}"}
    if key:  # nothing the codec says is printed with the key in it
        reply = {k: (v.replace(key, "***") if isinstance(v, str) else v) for k, v in reply.items()}
    return reply


def _require_key(key, what):
    if not isinstance(key, str) or not key:
        raise EtltError(f"{what} needs the model key (the one the model was exported with): set ${KEY_ENV} or "
                        f"pass it")
    return key


# ---------------------------------------------------------------------------------------------------------------------
# Encode / decode


def encode_file(payload_path, output, key, input_name=""):
    """Write `output` (.etlt) from the payload file (ONNX: input_name ""; UFF: its input node), atomically."""
    _require_key(key, "encoding a .etlt")
    payload_path, output = Path(payload_path), Path(output)
    if not payload_path.is_file():
        raise EtltError("no such file", path=payload_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.encoding-{os.getpid()}")
    try:
        reply = _worker(codec_python(), {"op": "encode", "input": str(payload_path), "output": str(tmp),
                                         "input_name": input_name}, key)
        if not reply.get("ok"):
            raise TaoflowError(f"encoding failed: {reply.get('error')}", path=payload_path)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return output


def decode_bytes(path, key, expect_sha256=None):
    """Decode the .etlt at `path` -> Decoded; WrongKeyError when the key does not open it."""
    path = Path(path)
    header = read_header(path)
    _require_key(key, f"decoding {path}")
    with tempfile.TemporaryDirectory(prefix="taoflow-etlt-") as tmp:
        out = Path(tmp) / "payload"
        reply = _worker(codec_python(), {"op": "decode", "input": str(path), "output": str(out)}, key)
        if not reply.get("ok"):
            raise EtltError(f"cannot decode: {reply.get('error')}", path=path)
        data = out.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expect_sha256 and digest != expect_sha256:
        raise WrongKeyError("wrong key: the decoded payload is not the model that was encoded (its sha256 differs "
                            "from model.json's); use the key the model was exported with", path=path)
    facts = _onnx_facts(data, path) if header.payload == "onnx" else _uff_check(data, path)
    return Decoded(header.payload, header.input_name, data, digest, facts)


def decode_file(path, output, key, expect_sha256=None, replace=False):
    """Decode `path` into `output` (atomically; never over an existing file unless `replace`) -> Decoded."""
    output = Path(output)
    if output.exists() and not replace:
        raise EtltError(f"{output} already exists (choose another output or --replace)", path=output)
    decoded = decode_bytes(path, key, expect_sha256)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.decoding-{os.getpid()}")
    tmp.write_bytes(decoded.data)
    os.replace(tmp, output)
    return decoded


def _wrong_key(path, what):
    return WrongKeyError(f"wrong key (or a damaged file): the decoded payload is not {what}; use the key the "
                         f"model was exported with", path=path)


def _onnx_facts(data, path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise _wrong_key(path, "an ONNX model") from None
    graph = model.graph
    if not (1 <= model.ir_version <= 64) or not graph.node or not graph.input or not graph.output:
        raise _wrong_key(path, "an ONNX model")
    return onnx_facts(model)


def onnx_facts(model):
    """Inputs, outputs, operators (default domain), TensorRT plugins (`*_TRT` ops, any domain), opset, IR version."""
    ops, plugins = set(), set()

    def walk(graph):
        for node in graph.node:
            if node.op_type.endswith("_TRT"):
                plugins.add(node.op_type)
            if node.domain in ("", "ai.onnx"):
                ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
    walk(model.graph)
    initializers = {t.name for t in model.graph.initializer}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"inputs": [i.name for i in model.graph.input if i.name not in initializers],
            "outputs": [o.name for o in model.graph.output], "ops": sorted(ops), "plugins": sorted(plugins),
            "opset": opset, "ir_version": model.ir_version}


def _uff_check(data, path):
    """A UFF payload is a protobuf (uff.MetaGraph); without its schema, check the wire format end to end, which noise
    from a wrong key fails within a few bytes."""
    pos, end, fields = 0, len(data), 0
    try:
        while pos < end:
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise ValueError
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                raise ValueError
            if pos > end:
                raise ValueError
            fields += 1
    except ValueError:
        raise _wrong_key(path, "a UFF graph") from None
    if not fields:
        raise _wrong_key(path, "a UFF graph")
    return {}


def _varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def key_from_env():
    return os.environ.get(KEY_ENV) or None
