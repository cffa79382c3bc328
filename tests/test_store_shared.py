"""The store on shared storage: lease-file locks (no flock, as on an NFS `nolock` mount) exclude processes and
"machines", are taken over only when their holder is dead or its heartbeat stale; a committed output is never
deleted or replaced; the integrity check finds what is wrong."""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from taoflow.errors import TaoflowError
from taoflow.pipeline import run_stage
from taoflow.store import LeaseLock, Store, choose_lock_mode, flock_is_local_only
from tests.forking import FORK

CTX = FORK


@pytest.fixture(params=["flock", "file"])
def lock_kind(request, monkeypatch):
    monkeypatch.setenv("TAOFLOW_STORE_LOCK", request.param)
    return request.param


def _count_under_lock(workspace, log, rounds, host):
    os.environ["TAOFLOW_HOST_ID"] = host
    store = Store(workspace)
    for _ in range(rounds):
        with store.lock("stage", "k" * 24):
            with open(log, "a") as f:
                f.write(f"in {os.getpid()}\n")
            time.sleep(0.01)
            with open(log, "a") as f:
                f.write(f"out {os.getpid()}\n")


def test_lock_excludes_processes_and_machines(tmp_path, lock_kind):
    log = tmp_path / "log.txt"
    procs = [CTX.Process(target=_count_under_lock, args=(tmp_path / "ws", log, 15, f"machine-{i % 2}"))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 * 15 * 2
    for enter, leave in zip(lines[::2], lines[1::2]):  # never two holders at once
        assert enter.startswith("in ") and leave == "out " + enter[3:]
    assert Store(tmp_path / "ws").check() == []
    if lock_kind == "file":
        assert not list((tmp_path / "ws" / "store" / "stage").glob(".lease-*"))


def _hold(path, host, stale_s, ready, hold_s):
    lease = LeaseLock(path, stale_s=stale_s, host=host)
    assert lease.try_acquire()
    ready.set()
    time.sleep(hold_s)
    lease.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    path = tmp_path / ".lease-x"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(path, "here", 3600, ready, 600))
    holder.start()
    assert ready.wait(30)
    assert not LeaseLock(path, stale_s=3600, host="here").try_acquire(take_over_dead=False)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    t0 = time.monotonic()
    lease = LeaseLock(path, stale_s=3600, host="here")
    assert lease.acquire(timeout=10) and time.monotonic() - t0 < 5
    assert json.loads(path.read_text())["token"] == lease.token
    lease.release()
    assert not path.exists()


def test_another_machines_dead_holder_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    path = tmp_path / ".lease-x"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(path, "other-machine", 1.5, ready, 600))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)  # its pid means nothing here: "another machine"
    holder.join(10)
    t0 = time.monotonic()
    lease = LeaseLock(path, stale_s=1.5, host="this-machine")
    assert lease.acquire(timeout=30)
    waited = time.monotonic() - t0
    assert 1.4 <= waited < 10, waited
    lease.release()


def test_a_live_holder_with_a_heartbeat_is_never_taken_over(tmp_path):
    path = tmp_path / ".lease-x"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(path, "other-machine", 0.6, ready, 4))
    holder.start()
    assert ready.wait(30)
    t0 = time.monotonic()
    waiter = LeaseLock(path, stale_s=0.6, host="this-machine")
    assert not waiter.acquire(timeout=2.5)  # more than 4 stale periods: the heartbeat keeps it alive
    assert waiter.acquire(timeout=30)  # released by its holder after 4 s
    assert time.monotonic() - t0 >= 3.5
    holder.join(10)
    assert holder.exitcode == 0
    waiter.release()


def test_a_holder_whose_lease_was_taken_over_knows(tmp_path, caplog):
    path = tmp_path / ".lease-x"
    first = LeaseLock(path, stale_s=0.5, host="a")
    assert first.try_acquire()
    first._stop.set()  # a stalled holder: no heartbeat
    first._thread.join()
    second = LeaseLock(path, stale_s=0.5, host="b")
    assert second.acquire(timeout=10)
    first._start_heartbeat()
    time.sleep(0.5)
    assert first.lost
    first.release()  # leaves the new holder's lease alone
    assert json.loads(path.read_text())["token"] == second.token
    assert "taken over" in caplog.text
    second.release()


def _compute_without_exclusion(workspace, started, go, marker):
    """A run whose lock did not exclude the other (flock on two machines of an NFS nolock mount)."""
    store = Store(workspace)
    store.lock = lambda stage, key: contextlib.nullcontext()

    def produce(tmp, _key):
        (tmp / "out").mkdir()
        (tmp / "out" / "data.bin").write_bytes(os.urandom(64 * 1024))
        started.set()
        go.wait(30)
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        return {"by": os.getpid()}
    run_stage(store, "stage", {"same": "inputs"}, produce)


def test_a_second_writer_of_the_same_key_discards_its_copy_and_a_reader_keeps_reading(tmp_path):
    ws = tmp_path / "ws"
    events = [(CTX.Event(), CTX.Event()) for _ in range(2)]
    procs = [CTX.Process(target=_compute_without_exclusion, args=(ws, started, go, tmp_path / "marker"))
             for started, go in events]
    for proc, (started, _) in zip(procs, events):
        proc.start()
        assert started.wait(30)  # both are computing the same key at once
    events[0][1].set()
    procs[0].join(60)
    assert procs[0].exitcode == 0
    store = Store(ws)
    (key,) = [p.name for p in (store.root / "stage").iterdir() if not p.name.startswith(".")]
    final = store.path("stage", key)
    inode, winner = final.stat().st_ino, store.meta("stage", key)["by"]
    assert winner == procs[0].pid
    reader = open(final / "out" / "data.bin", "rb")  # another machine reading the committed output
    before = reader.read(1000)
    events[1][1].set()
    procs[1].join(60)
    assert procs[1].exitcode == 0
    assert len((tmp_path / "marker").read_text().split()) == 2  # both computed (no exclusion)...
    assert final.stat().st_ino == inode and store.meta("stage", key)["by"] == winner  # ...the first one stays
    reader.seek(0)
    assert reader.read(1000) == before and (final / "out" / "data.bin").read_bytes()[:1000] == before
    reader.close()
    assert store.check() == []  # and the second copy is gone


def test_a_damaged_output_is_moved_aside_not_deleted(tmp_path):
    store = Store(tmp_path / "ws")
    first = run_stage(store, "stage", {"x": 1}, lambda tmp, key: (tmp / "a.txt").write_text("a") and {})
    meta = Path(first.path) / ".meta.json"
    meta.chmod(0o644)
    meta.write_text("{")
    again = run_stage(store, "stage", {"x": 1}, lambda tmp, key: (tmp / "a.txt").write_text("a") and {})
    assert not again.cached and again.path == first.path
    (aside,) = (store.root / "stage").glob(f".damaged-{first.key}-*")
    assert (aside / "a.txt").read_text() == "a"
    assert [p for p in store.check() if "leftover" in p] == [f"leftover {aside}"]


def _write(tmp, _key):
    (tmp / "sub").mkdir()
    (tmp / "sub" / "f.txt").write_text("hello")
    return {"n": 1}


def test_integrity_check_finds_each_kind_of_damage(tmp_path, lock_kind):
    store = Store(tmp_path / "ws")
    outputs = [run_stage(store, "stage", {"i": i}, _write) for i in range(6)]
    assert store.check() == []
    p = [Path(o.path) for o in outputs]
    (p[0] / "sub" / "f.txt").chmod(0o644)  # writable
    os.chmod(p[1] / "sub", 0o755)
    os.unlink(p[1] / "sub" / "f.txt")  # incomplete
    os.chmod(p[2], 0o755)
    (p[2] / "extra.txt").write_text("x")  # not what was committed
    moved = p[3].with_name("f" * 24)  # under a key its metadata does not hash to
    os.rename(p[3], moved)
    os.chmod(moved / ".complete", 0o644)
    (moved / ".complete").write_text("f" * 24)
    os.chmod(p[4] / ".complete", 0o644)
    (p[4] / ".complete").write_text("nope")
    os.chmod(p[5], 0o755)
    os.chmod(p[5] / ".meta.json", 0o644)
    os.unlink(p[5] / ".meta.json")
    store.new_temp("stage", "0" * 24)  # a leftover of a killed run
    store.work_dir("stage", "1" * 24)
    problems = "\n".join(store.check())
    assert f"{p[0]}: writable: sub/f.txt" in problems
    assert f"{p[1]}: files differ" in problems and "missing ['sub/f.txt']" in problems
    assert f"{p[2]}: files differ" in problems and "extra ['extra.txt']" in problems
    assert f"{moved}: its metadata's material does not hash to its key" in problems
    assert f"{p[4]}: .complete names 'nope'" in problems
    assert f"{p[5]}: no readable .meta.json" in problems
    assert "leftover" in problems and ".tmp-0000" in problems and ".work-1111" in problems
    good = run_stage(store, "stage", {"i": "intact"}, _write)
    assert not any(good.path in line for line in store.check())


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /data rw,relatime shared:2 - nfs4 nas:/export rw,vers=4.2,hard,proto=tcp,local_lock=none
41 22 0:41 / /data/nolock rw,relatime shared:3 - nfs nas:/old rw,vers=3,nolock,proto=tcp,local_lock=all
42 22 0:42 / /mnt/with\\040space rw - nfs nas:/x rw,vers=3,local_lock=flock
"""


def test_nfs_mounts_without_shared_locks_are_recognised(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert not flock_is_local_only("/home/x", info)
    assert not flock_is_local_only("/data/ws", info)
    assert flock_is_local_only("/data/nolock/ws/store", info)
    assert flock_is_local_only("/mnt/with space/ws", info)
    assert not flock_is_local_only("/data/nolockish", info)


def test_lock_kind_from_the_environment(tmp_path, monkeypatch):
    for value, expected in (("flock", "flock"), ("file", "file"), ("", "flock"), ("auto", "flock")):
        monkeypatch.setenv("TAOFLOW_STORE_LOCK", value)
        assert choose_lock_mode(tmp_path) == expected  # tmp_path: not an NFS nolock mount
    monkeypatch.setenv("TAOFLOW_STORE_LOCK", "nfs")
    with pytest.raises(TaoflowError, match="auto, flock or file"):
        choose_lock_mode(tmp_path)
    monkeypatch.setenv("TAOFLOW_STORE_LOCK", "file")
    store = Store(tmp_path / "ws")
    with store.lock("s", "k"):
        assert (store.root / "s" / ".lease-k").is_file() and not (store.root / "s" / ".lock-k").exists()
        assert store._try_lock("s", "k") is None
    held = store._try_lock("s", "k")
    assert held is not None
    held.close()
    assert not (store.root / "s" / ".lease-k").exists()


def _run_stage_counting(workspace, host, marker, go):
    os.environ["TAOFLOW_HOST_ID"] = host  # two "machines"
    go.wait(30)

    def produce(tmp, _key):
        with open(marker, "a") as f:
            f.write(f"{host}\n")
        time.sleep(0.5)  # long enough that the other machine asks for the key meanwhile
        (tmp / "out.txt").write_text("x")
        return {}
    result = run_stage(Store(workspace), "stage", {"same": "inputs"}, produce)
    with open(marker.with_suffix(".results"), "a") as f:
        f.write(f"{host} {result.cached}\n")


def test_two_machines_asking_for_one_key_compute_it_once(tmp_path, lock_kind):
    go = CTX.Event()
    marker = tmp_path / "computed"
    procs = [CTX.Process(target=_run_stage_counting, args=(tmp_path / "ws", f"machine-{i}", marker, go))
             for i in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(marker.read_text().split()) == 1
    assert sorted(line.split()[1] for line in marker.with_suffix(".results").read_text().splitlines()) == \
        ["False", "True", "True"]
    assert Store(tmp_path / "ws").check() == []
