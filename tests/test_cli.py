"""`taoflow`'s exit status table, the same for every subcommand: 0 ok, 1 the run failed, 2 bad input; bad input is
one `error:` line naming the file, never a traceback, and the input is left as it was."""

import subprocess
import sys
from pathlib import Path

import pytest

from taoflow.cli import COMMANDS, main
from taoflow.fsutil import tree_digest

REPO = Path(__file__).resolve().parents[1]
TFRECORDS_SPEC = REPO / "specs/crpd/ssd_tfrecords_crpd.txt"
TRAIN_SPEC = REPO / "specs/crpd/ssd_train_resnet18_crpd.txt"


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A directory of hostile inputs: a file where a directory is expected, a broken spec and inventory, ..."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "afile").write_text("a file, not a directory\n")
    (root / "broken.txt").write_text('ssd_config {\n  arch: "resnet"\n  nlayers: 18\n')  # no closing brace
    (root / "broken_tfr.txt").write_text(TFRECORDS_SPEC.read_text().replace("num_partitions: 2", "num_partitions: 3"))
    (root / "bad.toml").write_bytes(b'[[devices]]\nname = "nano-\xff"\n')
    (root / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("PREFECT_API_URL", "TAOFLOW_TAO_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent-taoflow-test-path")  # no `tao` launcher to find
    return root


# Every subcommand of taoflow.cli.COMMANDS, with a bad input and what its error line must say.
BAD = {
    ("demo",): (["-w", "{in}/afile", "-n", "5"], "afile"),
    ("serve",): (["-w", "{in}/afile"], "afile"),
    ("watch",): (["{in}/missing", "--deployment", "train-ssd/crpd", "--once"], "PREFECT_API_URL is not set"),
    ("demo-data",): (["-o", "{in}/afile/out", "-n", "3"], "afile"),
    ("convert", "crpd"): (["-i", "{in}/afile", "-o", "out"], "afile: input directory not found"),
    ("convert", "kitti"): (["-i", "{in}/missing", "-o", "out", "--preset", "traffic"], "input directory not found"),
    ("split",): (["--input_image_dir", "{in}/empty", "--input_label_dir", "{in}/empty", "-o", "out"],
                 "empty: no images found"),
    ("tfrecords",): (["-d", "{in}/broken_tfr.txt", "-o", "out/x"], "broken_tfr.txt:12"),
    ("spec", "check"): (["{in}/broken.txt"], 'broken.txt:3:12: Expected "}"'),
    ("spec", "render"): (["{in}/broken.txt", "--root", "."], 'broken.txt:3:12: Expected "}"'),
    ("fleet", "deploy"): (["-i", "{in}/bad.toml", "--export", "{in}/empty", "--samples", "{in}/empty"],
                          "bad.toml:2: not UTF-8"),
    ("fleet", "status"): (["-i", "{in}/empty"], "empty: is a directory"),
    ("fleet", "rollback"): (["-i", "{in}/bad.toml", "--device", "x"], "bad.toml:2: not UTF-8"),
    ("fleet", "service"): (["status", "-i", "{in}/bad.toml", "--model", "lpd"], "bad.toml:2: not UTF-8"),
    ("device", "doctor"): (["nano-01", "-i", "{in}/bad.toml"], "bad.toml:2: not UTF-8"),
    ("device", "detect"): (["nano-01", "-i", "{in}/bad.toml", "--model", "lpd", "--source", "x.avi"],
                           "bad.toml:2: not UTF-8"),
    ("tao", "preflight"): (["--launcher", "{in}/missing/tao"], "TAO launcher not found"),
    ("etlt",): (["info", "{in}/afile"], "afile: not a .etlt"),
}


def test_every_subcommand_has_a_bad_input_case():
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(BAD), ids=" ".join)
def test_bad_input_exits_2_with_one_error_line(inputs, capsys, command):
    args, expected = BAD[command]
    before = tree_digest(inputs)
    code = main([*command, *(a.replace("{in}", str(inputs)) for a in args)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and "unexpected" not in err
    assert tree_digest(inputs) == before
    assert not Path("out").exists() or not any(Path("out").iterdir())  # no half-written output


def test_spec_check_exits_2_when_any_file_is_bad(inputs, capsys):
    assert main(["spec", "check", str(TRAIN_SPEC), str(TFRECORDS_SPEC)]) == 0
    assert main(["spec", "check", str(TRAIN_SPEC), str(inputs / "broken.txt")]) == 2
    out, err = capsys.readouterr()
    assert f"{TRAIN_SPEC}: ok" in out and err.startswith(f"error: {inputs / 'broken.txt'}:3:12")


def test_run_failures_exit_1_and_bugs_are_one_line(monkeypatch, capsys):
    from taoflow.backends.tao.runner import TaoRunError
    from taoflow.deploy.errors import UnreachableError
    import taoflow.spec.cli as spec_cli

    for error in (TaoRunError("TAO train failed: status 1"), UnreachableError("connection refused", "nano-01"),
                  ZeroDivisionError("division by zero"), OSError(28, "No space left on device", "/ws/x")):
        def boom(_args, error=error):
            raise error
        monkeypatch.setattr(spec_cli, "run_check", boom)
        assert main(["spec", "check", "x"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert "ZeroDivisionError" not in err and "/ws/x: No space left on device" in err


def test_a_real_process_prints_no_traceback(inputs):
    for argv in (["spec", "check", str(inputs / "broken.txt")], ["demo-data", "-o", f"{inputs}/afile/x", "-n", "2"]):
        proc = subprocess.run([sys.executable, "-m", "taoflow.cli", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
