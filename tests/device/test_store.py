"""activate / rollback / status / discard on a device root: atomic `current`, smoke gate, keep-K, passports."""

import json
import os
import shutil

import pytest
from agent_common import AgentError
from agent_smoke import smoke
from agent_store import activate, discard, revert, rollback, staging_dir, status


@pytest.fixture
def stage(selftest_package, tmp_path):
    """stage(version, smoked=True) -> staged copy of the self-test package, smoke-tested unless told not."""
    root = tmp_path / "root"

    def make(version, smoked=True, tag=None):
        dest = staging_dir(str(root), "lpd", version)
        shutil.copytree(selftest_package, dest)
        if tag:
            with open(os.path.join(dest, "samples", "tag.txt"), "w") as f:
                f.write(tag)
        if smoked:
            smoke(str(root), dest, iterations=2)
        return dest

    make.root = str(root)
    return make


def current(root):
    return os.readlink(os.path.join(root, "models", "lpd", "current"))


def test_activate_moves_staging_switches_current_and_writes_passport(stage):
    staged = stage("v1")
    report = activate(stage.root, "lpd", "v1", wave=0)
    assert not os.path.exists(staged) and current(stage.root) == "v1"
    assert os.path.islink(os.path.join(stage.root, "models", "lpd", "current"))
    passport = report["models"]["lpd"]["versions"][0]["passport"]
    assert passport["format"] == "taoflow-device-passport/1" and passport["wave"] == 0
    assert passport["lineage"]["stages"]["selftest"] and passport["smoke"]["passed"] is True
    on_disk = json.load(open(os.path.join(stage.root, "models", "lpd", "v1", "passport.json")))
    assert on_disk == passport


def test_activate_refuses_unsmoked_failed_or_changed_versions(stage):
    stage("v1", smoked=False)
    with pytest.raises(AgentError, match="no smoke.json"):
        activate(stage.root, "lpd", "v1")
    staged = stage("v2")
    with open(os.path.join(staged, "samples", "one_car.png"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(AgentError, match="changed after its smoke test"):
        activate(stage.root, "lpd", "v2")
    assert not os.path.exists(os.path.join(stage.root, "models", "lpd", "current"))


def test_failed_smoke_cannot_become_current(stage):
    activate(stage.root, "lpd", stage("v1") and "v1")
    staged = stage("v2", smoked=False)
    path = os.path.join(staged, "samples", "expected.json")
    expected = json.load(open(path))
    expected["images"]["one_car.png"][0]["box"] = [50, 50, 90, 90]
    json.dump(expected, open(path, "w"))
    with pytest.raises(AgentError, match="smoke test failed"):
        smoke(stage.root, staged, iterations=1)
    with pytest.raises(AgentError, match="failed its smoke test"):
        activate(stage.root, "lpd", "v2")
    assert current(stage.root) == "v1"
    assert discard(stage.root, "lpd", "v2")["discarded"] is True and not os.path.exists(staged)


def test_rollback_walks_history_and_keep_prunes(stage):
    for i in range(1, 5):
        stage(f"v{i}", tag=str(i))
        activate(stage.root, "lpd", f"v{i}", keep=2)
    models = os.path.join(stage.root, "models", "lpd")
    assert sorted(v for v in os.listdir(models) if v.startswith("v")) == ["v3", "v4"]
    result = rollback(stage.root, "lpd")
    assert result["rolled_back_from"] == "v4" and current(stage.root) == "v3"
    with pytest.raises(AgentError, match="no previous version of lpd to roll back to; v3 stays current"):
        rollback(stage.root, "lpd")
    assert rollback(stage.root, "lpd", to="v4")["models"]["lpd"]["current"] == "v4"
    with pytest.raises(AgentError, match="v1 of lpd is not installed"):
        rollback(stage.root, "lpd", to="v1")
    listed = status(stage.root)["models"]["lpd"]
    assert listed["current"] == "v4" and [v["version"] for v in listed["versions"]] == ["v3", "v4"]


def test_reactivating_an_installed_version_and_same_bytes_redeploy(stage):
    stage("v1")
    activate(stage.root, "lpd", "v1")
    stage("v2")
    activate(stage.root, "lpd", "v2")
    stage("v1")  # the same bytes staged again under the same version: the installed copy is kept
    activate(stage.root, "lpd", "v1")
    assert current(stage.root) == "v1" and not os.path.exists(staging_dir(stage.root, "lpd", "v1"))
    stage("v2", tag="other bytes")
    with pytest.raises(AgentError, match="already installed with other content"):
        activate(stage.root, "lpd", "v2")


@pytest.mark.parametrize("bad", ["../x", ".hidden", "a/b", ""])
def test_names_cannot_escape_the_device_root(tmp_path, bad):
    with pytest.raises(AgentError, match="must be 1-128 characters"):
        staging_dir(str(tmp_path), "lpd", bad)


def test_revert_undoes_one_activation_and_is_idempotent(stage):
    stage("v1")
    activate(stage.root, "lpd", "v1")
    stage("v2")
    activate(stage.root, "lpd", "v2")
    result = revert(stage.root, "lpd", "v2")
    assert result["reverted"] is True and result["models"]["lpd"]["current"] == "v1"
    assert result["models"]["lpd"]["history"] == ["v1"]  # a later plain rollback never lands on v2
    again = revert(stage.root, "lpd", "v2")  # the host lost the first reply and asks again
    assert again["reverted"] is False and current(stage.root) == "v1"
    assert os.path.isdir(os.path.join(stage.root, "models", "lpd", "v2"))  # still installed, for `rollback --to`
    assert rollback(stage.root, "lpd", to="v2")["models"]["lpd"]["current"] == "v2"


def test_reverting_a_first_version_leaves_no_current(stage):
    stage("v1")
    activate(stage.root, "lpd", "v1")
    result = revert(stage.root, "lpd", "v1")
    assert result["reverted"] is True and result["models"]["lpd"]["current"] is None
    assert not os.path.lexists(os.path.join(stage.root, "models", "lpd", "current"))
    assert revert(stage.root, "lpd", "v1")["reverted"] is False
    assert activate(stage.root, "lpd", "v1")["models"]["lpd"]["current"] == "v1"
