"""The .etlt codec's venv for tests: built once (pip from PyPI, like tests/device/support.py builds the Python 3.6
device venv) into pytest's cache, under a lock; a test that needs it is skipped, with the reason, on a machine with
no CPython 3.10 or 3.12."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from taoflow.etlt import PYTHON_ENV, VENV_DIR_ENV, ensure_codec_venv

KEY = "tlt_test-key_7f3a9c"  # distinctive, so a grep for it finds every leak


def codec_cache_dir(config):
    cache = getattr(config, "cache", None)
    if cache is not None:
        return cache.mkdir("taoflow-etlt-venv")
    return Path(tempfile.gettempdir()) / "taoflow-etlt-venv"


@pytest.fixture(scope="session")
def codec_python(request):
    """The codec venv's python, also exported as $TAOFLOW_ETLT_PYTHON for the session (and its subprocesses)."""
    python, reason = ensure_codec_venv(codec_cache_dir(request.config))
    if python is None:
        pytest.skip(reason)
    old = {k: os.environ.get(k) for k in (PYTHON_ENV, VENV_DIR_ENV)}
    os.environ[PYTHON_ENV] = str(python)
    os.environ[VENV_DIR_ENV] = str(codec_cache_dir(request.config))
    yield python
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def taoflow(*argv, env=None, cwd=None):
    """Run the `taoflow` CLI in a subprocess (as a user would): (exit code, stdout, stderr)."""
    out = subprocess.run([sys.executable, "-m", "taoflow.cli", *map(str, argv)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)
    return out.returncode, out.stdout, out.stderr


def tiny_onnx(path, op="Relu"):
    import onnx
    from onnx import helper

    x = helper.make_tensor_value_info("Input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["Input"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return Path(path)
