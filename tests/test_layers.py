"""The layering rules of pyproject.toml's [tool.importlinter] hold for this tree, and a deliberate violation of
each kind breaks them (so the check is not vacuous: the graph really sees these modules)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Run import-linter's own command line on a tree: it imports the root packages from the working directory.
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint(root, *contracts):
    argv = [sys.executable, "-c", LINT, "--no-cache"] + [a for c in contracts for a in ("--contract", c)]
    proc = subprocess.run(argv, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_layering_contracts_hold():
    code, out = lint(REPO)
    assert code == 0, out
    assert "BROKEN" not in out and out.count("KEPT") == 5


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for name in ("taoflow", "flows", "tools"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("contract, module, line", [
    ("device", "tools/device/agent_common.py", "import taoflow.store"),
    ("prefect", "taoflow/store.py", "import prefect"),
    ("contract", "taoflow/contract/results.py", "import taoflow.pipeline"),
    ("no-backend", "taoflow/deploy/rollout.py", "import taoflow.backends.native.export"),
    ("backends", "taoflow/backends/tao/steps.py", "import taoflow.backends.native.export"),
])
def test_a_deliberate_violation_breaks_its_contract(tree_copy, contract, module, line):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # deliberate violation\n")
        code, out = lint(tree_copy, contract)
    finally:
        path.write_text(original)
    assert code != 0 and "BROKEN" in out, out
    assert module.replace("/", ".").removesuffix(".py") in out
