"""Session.upload_files on simulated devices (embedded server and OpenSSH): small files travel as one tar stream
into the command that checks them, large ones by SFTP; every file is checked against its sha256 on the device,
`.part` files are renamed into place only when they pass, and what fails is removed so the next attempt resends
it from zero."""

import asyncio
import hashlib
import sys

import pytest

from taoflow.deploy import DeployError, Session, UploadError, load_inventory
from taoflow.deploy.ssh import BATCH_FILE_BYTES, upload_paths

pytestmark = pytest.mark.slow


@pytest.fixture
def device(sim_fleet):
    sims = sim_fleet(1)
    return sims.devices[0], load_inventory(sims.write_inventory(sys.executable)).devices[0]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def files(tmp_path, contents):
    """[(local path, bytes)] written under tmp_path/local."""
    (tmp_path / "local").mkdir(exist_ok=True)
    out = []
    for name, data in contents.items():
        path = tmp_path / "local" / name.replace("/", "_")
        path.write_bytes(data)
        out.append((path, name, data))
    return out


def upload(device, items, in_place=False, prepare=True):
    """Run one upload in a fresh session: (files sent, bytes sent, exec requests the embedded server served)."""
    async def go():
        async with Session(device) as s:
            have = None
            if prepare:
                dirs = sorted({remote.rsplit("/", 1)[0] for _, remote, _ in items})
                have, _ = await s.prepare(dirs, upload_paths((r for _, r, _ in items), in_place))
            sent = await s.upload_files(items, have, in_place=in_place)
            return sent, s.bytes_sent
    return asyncio.run(go())


def test_small_and_large_files_arrive_whole_and_parts_are_renamed(device, tmp_path):
    sim, dev = device
    big = bytes(range(256)) * (BATCH_FILE_BYTES // 256 + 3)  # over the batch limit: SFTP
    local = files(tmp_path, {"model.json": b'{"a": 1}\n', "samples/样本 1.jpg": b"\xff\xd8jpeg", "big.bin": big})
    items = [(path, f"{dev.device_root}/up/{name}", sha(data)) for path, name, data in local]
    commands = getattr(sim, "commands", None)
    sent, sent_bytes = upload(dev, items)
    assert sent == 3 and sent_bytes == sum(len(d) for _, _, d in local)
    for _, name, data in local:
        assert (sim.root / "up" / name).read_bytes() == data
    assert not list(sim.root.rglob("*.part"))
    if commands is not None:  # embedded server's exec requests: prepare, and one that unpacks and checks all
        assert sim.commands - commands == 2
    assert upload(dev, items) == (0, 0)  # all there: nothing sent


def test_a_file_failing_its_check_is_removed_and_the_upload_is_retryable(device, tmp_path):
    sim, dev = device
    local = files(tmp_path, {"ok.txt": b"fine\n", "bad.txt": b"these bytes are not what the host announced\n"})
    digests = {"ok.txt": sha(b"fine\n"), "bad.txt": sha(b"other bytes\n")}
    for in_place in (False, True):
        base = f"{dev.device_root}/check-{in_place}"
        items = [(path, f"{base}/{name}", digests[name]) for path, name, _ in local]
        with pytest.raises(UploadError, match="checksum mismatch after upload of bad.txt") as e:
            upload(dev, items, in_place=in_place)
        assert e.value.retryable
        folder = sim.root / f"check-{in_place}"
        assert (folder / "ok.txt").read_bytes() == b"fine\n"
        assert sorted(p.name for p in folder.iterdir()) == ["ok.txt"]  # neither bad.txt nor bad.txt.part


def test_a_whole_part_left_by_a_dropped_connection_is_renamed_without_resending(device, tmp_path):
    sim, dev = device
    data = b"sent whole before the link dropped\n"
    (local,) = files(tmp_path, {"agent.pyz": data})
    (sim.root / "agent").mkdir(parents=True, exist_ok=True)
    (sim.root / "agent" / "agent.pyz.part").write_bytes(data)
    (sim.root / "agent" / "agent.pyz").write_bytes(b"the old agent")
    sent, sent_bytes = upload(dev, [(local[0], f"{dev.device_root}/agent/agent.pyz", sha(data))])
    assert (sent, sent_bytes) == (1, 0)
    assert (sim.root / "agent" / "agent.pyz").read_bytes() == data
    assert not (sim.root / "agent" / "agent.pyz.part").exists()


def test_an_upload_that_cannot_be_unpacked_says_why_and_leaves_nothing_half_done(device, tmp_path):
    sim, dev = device
    (sim.root / "blocker").write_text("a file where the upload needs a folder\n")
    local = files(tmp_path, {"x.txt": b"x\n"})
    items = [(local[0][0], f"{dev.device_root}/blocker/x.txt", sha(b"x\n"))]
    with pytest.raises(DeployError, match="unpacking the upload failed on the device: .*blocker") as e:
        upload(dev, items, prepare=False)
    assert not getattr(e.value, "retryable", False)
    assert (sim.root / "blocker").read_text() == "a file where the upload needs a folder\n"
