"""Fixtures for deploy tests: simulated devices on 127.0.0.1, the Python 3.6 device venv, the self-test package.

Every test that takes `sim_fleet` runs twice: against taoflow's embedded SSH server (always) and against OpenSSH's
sshd (skipped, with the reason, where openssh-server is not installed; CI installs it).
"""

import shutil

import pytest

from taoflow.deploy.selftest import write_selftest_package
from taoflow.deploy.simulator import SimFleet, find_sshd, keygen
from tests.device.support import ensure_py36_venv, host_device_python, venv_cache_dir


@pytest.fixture(scope="session")
def py36(request):
    """(python path, None) of the 3.6 device venv, or (None, reason)."""
    return ensure_py36_venv(venv_cache_dir(request.config))


@pytest.fixture(scope="session")
def device_python(py36):
    """The Python of the simulated devices: 3.6 when it exists (JetPack 4.6), else the host's."""
    return py36[0] or host_device_python()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    keygen(path)
    return path


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TAOFLOW_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture(params=["embedded", "openssh"])
def device_server(request):
    """The SSH server kind the simulated devices of this test run on."""
    if request.param == "openssh" and find_sshd() is None:
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server); the embedded server ran")
    return request.param


@pytest.fixture
def sim_fleet(tmp_path, client_key, device_server):
    """make(n) -> SimFleet with n running devices on `device_server`; all are killed at teardown."""
    fleets = []

    def make(n, prefix="nano"):
        fleet = SimFleet(tmp_path / "fleet", client_key, kind=device_server)
        fleets.append(fleet)
        for i in range(n):
            fleet.add(f"{prefix}-{i:02d}")
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture(scope="session")
def selftest_package(tmp_path_factory):
    return write_selftest_package(tmp_path_factory.mktemp("pkg") / "selftest")


@pytest.fixture
def package_copy(selftest_package, tmp_path):
    """copy(tag) -> a new package dir with different bytes (a new version) made from the self-test package."""
    def copy(tag):
        dest = tmp_path / f"pkg-{tag}"
        shutil.copytree(selftest_package, dest)
        (dest / "passport.json").write_text(f'{{"format": "taoflow-passport/1", "tag": "{tag}"}}\n')
        return dest
    return copy


@pytest.fixture(scope="session")
def native_export(tmp_path_factory):
    """A model trained by the native backend for 2 epochs on a tiny synthetic CRPD set (the backend tests' spec)
    and exported with --gen_ds_config: (export dir, validation image dir)."""
    from taoflow.backends.native.train import train
    from tests.backends.native.conftest import cli, make_tiny_data, write_spec

    root = make_tiny_data(tmp_path_factory.mktemp("native"))
    spec_path = write_spec(root / "spec.txt", root)
    result = train(spec_path, root / "run", device="cpu")
    code, text = cli("export", "-e", spec_path, "-m", result["checkpoint"], "-o", root / "export" / "model.onnx",
                     "--gen_ds_config", "--data_type", "fp16")
    assert code == 0, text
    return root / "export", root / "split" / "val" / "image"


@pytest.fixture(scope="session")
def selftest_export(selftest_package, tmp_path_factory):
    """The self-test package's export part (model.onnx, model.json, labels.txt) and its sample images apart."""
    export = tmp_path_factory.mktemp("selftest-export")
    for name in ("model.onnx", "model.json", "labels.txt"):
        shutil.copy2(selftest_package / name, export / name)
    images = export / "images"
    images.mkdir()
    for path in (selftest_package / "samples").glob("*.png"):
        shutil.copy2(path, images / path.name)
    return export, images
