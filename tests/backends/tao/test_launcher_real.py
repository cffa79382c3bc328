"""Against the REAL nvidia-tao launchers (6.x: `tao model ssd`; 4.0.1: `tao ssd`), each in its own venv:
generation detection, mounts files run through the launcher's own parsing code, and launcher failures."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from taoflow.backends.tao import (TAO4, TAO5, EvaluateRequest, PathMap, TaoConfig, TaoExecutor, TaoPreflightError,
                                  TaoRunError, probe_launcher, run_preflight)
from taoflow.backends.tao.launcher import check_supported
from taoflow.backends.tao.mounts import clearml_envs, docker_options, mounts_document, write_mounts_file
from taoflow.errors import TaoflowError

from .conftest import KEY, SPECS, minimal_path, write_executable

pytestmark = pytest.mark.slow

# Runs in the launcher's venv: the launcher's DockerHandler parses a mounts file exactly as before `docker run`.
# DockerHandler.__init__ would connect to docker, so the parsing methods are called on an uninitialised instance.
VALIDATE = r"""
import json, sys, types
package, mounts_file = sys.argv[1], sys.argv[2]
if package == "tlt":  # nvidia-tao 4.0.1 pins tabulate 0.8.7, whose import fails on Python 3.10+; unrelated here
    sys.modules["tabulate"] = types.SimpleNamespace(tabulate=lambda *a, **k: "")
dh = __import__(package + ".components.docker_handler.docker_handler", fromlist=["DockerHandler"])
handler = object.__new__(dh.DockerHandler)
handler._docker_mount_file = mounts_file
mounts, envs, options = handler._get_mount_env_data()
args = handler.get_docker_option_args(options)
print(json.dumps({"volumes": dh.DockerHandler.formatted_mounts(mounts), "env": dh.DockerHandler.formatted_envs(envs),
                  "options": {k: (repr(v) if k == "ulimits" else v) for k, v in args.items()}}))
"""


def launcher_python(tao):
    return str(Path(tao).parent / "python")


def validate_with_launcher(tao, package, mounts_file):
    proc = subprocess.run([launcher_python(tao), "-c", VALIDATE, package, str(mounts_file)], capture_output=True,
                          text=True)
    return proc.returncode, proc.stdout.strip().splitlines()[-1:] or [""], proc.stderr


@pytest.mark.parametrize("generation, package, group", [(TAO5, "nvidia_tao_cli", "model"), (TAO4, "tlt", "")])
def test_generation_detected_from_the_launchers_config(tao_launchers, home, generation, package, group):
    info = probe_launcher(tao_launchers[generation])
    assert (info.generation, info.package) == (generation, package)
    assert info.has_task(group, "ssd") and info.registry(group, "ssd") == "nvcr.io"
    assert ("tty" in info.docker_options) == (generation == TAO5)
    if generation == TAO5:
        assert info.format_version == 3.0 and info.has_task("deploy", "ssd")
    else:
        assert info.format_version == 2.0 and info.toolkit_version.startswith("4.")
    assert probe_launcher(tao_launchers[generation], override="tao4" if generation == TAO5 else "5").generation \
        != generation


@pytest.mark.parametrize("generation", [TAO5, TAO4])
def test_the_launcher_itself_swallows_the_task_exit_status(tao_launchers, tmp_path, home, generation):
    """Why taoflow appends an exit marker: run directly, `tao` exits 0 although its task failed."""
    write_executable(tmp_path / "bin/ssd", "#!/bin/sh\necho task ran: \"$@\"\nexit 3\n")
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{minimal_path()}", "HOME": str(home), "TAO_DOCKER_DISABLE": "1"}
    group = ["model"] if generation == TAO5 else []
    proc = subprocess.run([tao_launchers[generation], *group, "ssd", "train", "-e", "a\\ b"], env=env,
                          capture_output=True, text=True)
    assert "task ran: train -e a b" in proc.stdout and proc.returncode == 0
    assert probe_launcher(tao_launchers[generation], env).docker_disable is True


def test_user_override_config_is_honoured_like_the_launcher_does(tao_launchers, home):
    # ~/.tao/config.json replaces the packaged config for nvidia-tao 5+; here one without SSD in `model`
    (home / ".tao").mkdir()
    (home / ".tao/config.json").write_text(json.dumps({"format_version": 3.0, "toolkit_version": "9.9.9",
        "task_group": {"model": {"dockers": {"nvidia/tao/tao-toolkit": {"9.9.9-pyt": {
            "docker_registry": "nvcr.io", "tasks": ["dino"]}}}}}}))
    info = probe_launcher(tao_launchers[TAO5])
    assert info.config_path == str(home / ".tao/config.json") and info.toolkit_version == "9.9.9"
    with pytest.raises(TaoflowError, match="has no `tao model ssd` task"):
        check_supported(info)


def test_wrapper_script_is_probed_through_tao_info(tao_launchers, tmp_path, home):
    wrapper = write_executable(tmp_path / "bin/tao", f'#!/bin/sh\nexec "{tao_launchers[TAO5]}" "$@"\n')
    info = probe_launcher(str(wrapper))
    assert info.generation == TAO5 and info.format_version == 3.0 and info.package is None


@pytest.mark.parametrize("generation, package", [(TAO5, "nvidia_tao_cli"), (TAO4, "tlt")])
def test_mounts_file_passes_the_launchers_own_validation(tao_launchers, tmp_path, generation, package):
    ws, data = tmp_path / "ws", tmp_path / "data"
    (ws / "results").mkdir(parents=True)
    (data / "crpd").mkdir(parents=True)
    pm = PathMap([(ws, "/workspace/tao-experiments")])
    pm.need([data / "crpd"])
    accepted = probe_launcher(tao_launchers[generation]).docker_options
    options = docker_options({"shm_size": "16G", "ulimits": {"memlock": -1, "stack": 67108864}}, accepted)
    env = {"CLEARML_API_HOST": "https://api.example", "CLEARML_OFFLINE_MODE": "1", "PATH": "/bin"}
    path = write_mounts_file(tmp_path / "mounts.json", mounts_document(pm, clearml_envs(env), options))
    rc, out, err = validate_with_launcher(tao_launchers[generation], package, path)
    assert rc == 0, err
    parsed = json.loads(out[0])
    assert parsed["volumes"] == {str(ws.resolve()): {"bind": "/workspace/tao-experiments", "mode": "rw"},
                                 str((data / "crpd").resolve()): {"bind": pm.to_container(data / "crpd"),
                                                                  "mode": "rw"}}
    assert parsed["env"] == ["CLEARML_API_HOST=https://api.example", "CLEARML_OFFLINE_MODE=1"]
    assert parsed["options"]["user"] == f"{os.getuid()}:{os.getgid()}"
    assert "'Name': 'memlock', 'Soft': -1" in parsed["options"]["ulimits"]
    # the same parser rejects what taoflow never writes: proof that the check above is the launcher's
    bad = json.loads(path.read_text())
    bad["Volumes"] = []
    path.write_text(json.dumps(bad))
    rc, _, err = validate_with_launcher(tao_launchers[generation], package, path)
    assert rc != 0 and "KeyError" in err and "Invalid field Volumes" in err
    if generation == TAO4:
        bad.pop("Volumes")
        bad["DockerOptions"]["tty"] = False
        path.write_text(json.dumps(bad))
        rc, _, err = validate_with_launcher(tao_launchers[generation], package, path)
        assert rc != 0 and "isn't a valid option" in err
        with pytest.raises(TaoflowError, match="tty not accepted"):
            docker_options({"tty": False}, accepted)


def test_preflight_with_the_real_launcher_and_no_docker(tao_launchers, tmp_path, home):
    env = {"PATH": f"{Path(tao_launchers[TAO5]).parent}{os.pathsep}{minimal_path()}", "HOME": str(home)}
    with pytest.raises(TaoPreflightError, match="docker CLI not found on PATH"):
        run_preflight(env)
    write_executable(tmp_path / "bin/docker", "#!/bin/sh\necho '{\"nvidia\":{}}'\n")
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    with pytest.raises(TaoPreflightError, match="not logged in to nvcr.io"):
        run_preflight(env)


def test_launcher_failure_in_docker_mode_is_a_clear_error(tao_launchers, tmp_path, home, data_root, monkeypatch):
    """Docker mode, preflight off, no docker login: the real launcher fails; taoflow reports it with the log tail,
    after writing container paths into the spec and mounts file, and without leaking the key."""
    monkeypatch.setenv("TAO_MODEL_KEY", KEY)
    run_dir = tmp_path / "run"
    model = data_root / "models/resnet18.hdf5"
    ex = TaoExecutor(run_dir, TaoConfig(launcher=tao_launchers[TAO5], preflight=False, docker_disabled=False,
                                        mounts=[(data_root, "/workspace/data")]))
    with pytest.raises(TaoRunError) as err:
        ex.run(EvaluateRequest(model=model, spec=SPECS / "ssd_train_resnet18_crpd.txt",
                               results_dir=run_dir / "evaluate", data_root=data_root))
    message = str(err.value)
    assert "TAO evaluate failed: the launcher exited with status 1" in message
    assert "docker login" in message.lower() or "docker/config.json" in message
    assert KEY not in message
    step = run_dir / "tao/01-evaluate"
    mounts = json.loads((step / "mounts.json").read_text())
    assert {"source": str(data_root.resolve()), "destination": "/workspace/data"} in mounts["Mounts"]
    run = run_dir.resolve()
    assert mounts["Mounts"][1:] == [{"source": str(run), "destination": f"/workspace/host{run}"}]
    spec_text = (step / "spec.txt").read_text()
    assert '"/workspace/data/crpd/split/val/image"' in spec_text
    command = (step / "command.txt").read_text()
    assert "-m /workspace/data/models/resnet18.hdf5 -k **** -e /workspace/host" in command
    for path in run_dir.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    assert not (home / ".tao_mounts.json").exists()
