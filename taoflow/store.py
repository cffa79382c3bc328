"""Content-addressed, immutable stage outputs: `<workspace>/store/<stage>/<key>/`.

A stage's key is the hash of everything its output depends on: the content of its input files (never their path
strings), the upstream stages' keys, the spec fields and parameters it uses, and the code version. Identical inputs
give the same key, so a re-run finds the output and does no work; any change gives a new key and a new directory,
so nothing is ever overwritten. Outputs are written to a temporary sibling and renamed into place, then made
read-only. A per-key lock stops two concurrent runs from computing the same output twice or clobbering each other.
Hashing large datasets is the expensive part of a no-op re-run, so file hashes are remembered by (path, size,
mtime) and reused while a file is unchanged.

Crash safety: every metadata file is written to a temporary name and renamed (fsutil.write_text_atomic); an output
counts as present only when its `.complete` names its key and its `.meta.json` parses, so a damaged one is computed
again (with a warning) instead of failing every later run. Temporary directories are named `.tmp-<key>-...`; one
left by a killed run is removed by the next run of that stage once nobody holds its key's lock (a live writer
always does).

Shared storage (several machines on one workspace, README "More than one machine"): a committed output is never
deleted or replaced. A second writer of the same key (two machines whose locks did not exclude each other) finds the
output in place when it commits and discards its own copy; a damaged output is renamed aside (`.damaged-<key>-*`),
not deleted, so a reader that has it open keeps reading. Files are made read-only before the rename that publishes
them, so no machine ever sees a writable committed output. The per-key lock is one of two kinds
($TAOFLOW_STORE_LOCK):

- `flock` (the default where it works): flock(2) on `.lock-<key>`. The kernel (or the NFS lock manager, which Linux
  uses for flock on NFS since 2.6.12) releases it when its holder dies, so there is no timeout to guess and a crashed
  run never delays the next one. It works on local disks and on NFS mounted with locking (NFSv4, NFSv3 with lockd).
- `file`: a lease file `.lease-<key>` created atomically with link(2) (atomic on every NFS version; O_CREAT|O_EXCL
  only from NFSv3), carrying host, pid and a token, its mtime touched by a heartbeat thread. A waiter takes it over
  only when the heartbeat has stopped for $TAOFLOW_LOCK_STALE_S seconds as measured by the waiter's own clock (no
  clock agreement between machines is assumed), or at once when the holder is a dead process on the same host.
  Needed on NFS mounted `nolock` (flock then only excludes processes of one machine).
- `auto` (default): `file` when the store lies on an NFS mount whose locks are local to this client (`nolock`,
  `local_lock=flock|all` in /proc/self/mountinfo), else `flock`.

Every machine sharing a workspace must use the same kind.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

from . import __version__
from .fsutil import sha256_file, write_text_atomic

log = logging.getLogger(__name__)
STALE_UNKEYED_TMP_S = 2 * 24 * 3600  # `.tmp-XXXX` of taoflow before keyed names: nothing tells whether it is live
STALE_FILE_TMP_S = 3600  # a temp file of an atomic metadata write lives for milliseconds

CODE_ROOT = Path(__file__).resolve().parent
LOCK_ENV = "TAOFLOW_STORE_LOCK"  # auto | flock | file
STALE_ENV = "TAOFLOW_LOCK_STALE_S"  # seconds without a heartbeat before a lease file is taken over
HOST_ENV = "TAOFLOW_HOST_ID"  # this machine's name in lease files (default: the host name)
DEFAULT_STALE_S = 60.0
FILES_LIST = ".files.json"  # {relative path: size} of a committed output, written before `.complete`


def digest(obj) -> str:
    """Stable sha256 of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def code_version(*modules) -> str:
    """taoflow's version plus the source of the modules a stage runs, so editing the code invalidates its outputs."""
    h = hashlib.sha256(__version__.encode())
    for rel in sorted(modules):
        path = CODE_ROOT / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(CODE_ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class HashCache:
    """sha256 of files, reused while (size, mtime_ns) are unchanged; persisted as JSON in the store."""

    def __init__(self, path):
        self.path = Path(path)
        self.entries = {}
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            entries = {}
        except (OSError, ValueError) as e:  # truncated by a crash, or not ours: a cache, so start afresh
            log.warning("ignoring the unreadable hash cache %s (%s); files will be hashed again", self.path, e)
            entries = {}
        if isinstance(entries, dict):
            self.entries = {k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 3}
        self.hits = self.misses = 0

    def sha256(self, path):
        st = os.stat(path)
        key = str(Path(path).resolve())
        entry = self.entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            self.hits += 1
            return entry[2]
        self.misses += 1
        value = sha256_file(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, value]
        return value

    def save(self):
        write_text_atomic(self.path, json.dumps(self.entries))


def tree_manifest(root, cache: HashCache):
    """{relative path: [size, sha256]} of every regular file under root (hidden files skipped)."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = [p.stat().st_size, cache.sha256(p)]
    return out


def read_json(path, what="metadata"):
    """The JSON in `path`, or None (with a warning) when it is missing, empty, truncated or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the damaged %s file %s (%s)", what, path, e)
        return None


class Store:
    def __init__(self, workspace):
        self.root = Path(workspace) / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_files(self.root, ".hash-cache.json")
        self.hashes = HashCache(self.root / ".hash-cache.json")
        self._lock_mode = None

    def path(self, stage, key):
        return self.root / stage / key

    def has(self, stage, key):
        """True when the output is complete: `.complete` names the key and `.meta.json` parses. A damaged one is
        reported and counts as absent, so the stage computes it again (commit replaces it)."""
        final = self.path(stage, key)
        try:
            complete = (final / ".complete").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            log.warning("store output %s is unreadable (%s); computing it again", final, e)
            return False
        if complete.strip() != key or not isinstance(read_json(final / ".meta.json", "store metadata"), dict):
            log.warning("store output %s is damaged (.complete or .meta.json); computing it again", final)
            return False
        return True

    def work_dir(self, stage, key):
        """A persistent scratch directory for a stage that can resume (training), kept until the output commits."""
        d = self.root / stage / f".work-{key}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def lock_mode(self):
        """"flock" or "file", per $TAOFLOW_STORE_LOCK (auto: by the mount the store lies on); decided once."""
        if self._lock_mode is None:
            self._lock_mode = choose_lock_mode(self.root)
        return self._lock_mode

    @contextlib.contextmanager
    def lock(self, stage, key):
        """Exclusive, per stage and key, across processes and (with a shared lock kind) machines: a second run of
        the same stage waits, then finds the output."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        if self.lock_mode == "file":
            lease = LeaseLock(self.root / stage / f".lease-{key}")
            lease.acquire()
            try:
                yield
            finally:
                lease.release()
            return
        with open(self.root / stage / f".lock-{key}", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _try_lock(self, stage, key):
        """A held lock for `key` (call .close() to release), or None when someone holds it (never waits)."""
        if self.lock_mode == "file":
            lease = LeaseLock(self.root / stage / f".lease-{key}")
            return _Closing(lease.release) if lease.try_acquire() else None
        f = open(self.root / stage / f".lock-{key}", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        return f

    def commit(self, stage, key, src_dir, meta):
        """Publish a finished output: metadata, file list and `.complete` written, files made read-only, then one
        rename into place. A committed output is never deleted or replaced: when the key is already there (another
        machine computed it at the same time) this copy is discarded and the committed one returned; a damaged one
        is renamed aside to `.damaged-<key>-*` (never deleted: someone may be reading it)."""
        final = self.path(stage, key)
        src = Path(src_dir)
        write_text_atomic(src / ".meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
        write_text_atomic(src / FILES_LIST, json.dumps(_file_sizes(src), indent=0, sort_keys=True))
        write_text_atomic(src / ".complete", key)  # last: it marks the output complete
        os.chmod(src, 0o755)  # mkdtemp makes 0700: the other machines' workers must be able to read it
        _make_read_only(src)
        for _ in range(3):
            if os.path.lexists(final):
                if self.has(stage, key):
                    log.warning("store output %s was committed by another run meanwhile; discarding this copy",
                                final)
                    _remove_tree(src)
                    return final
                aside = final.with_name(f".damaged-{key}-{secrets.token_hex(4)}")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(final, aside)
                    log.warning("moved the damaged store output %s aside to %s (delete it when nobody reads it)",
                                final, aside.name)
            try:
                os.rename(src, final)
                return final
            except OSError as e:  # someone published the key between the check and the rename
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise OSError(f"could not commit {final}: it keeps appearing damaged")

    def check(self):
        """Integrity of the whole store: a list of problems, empty when every committed output is complete
        (`.complete` names its key, `.meta.json` parses, its files are those `.files.json` lists with their sizes),
        read-only, stored under the key its metadata's material hashes to, and nothing is left over (temporary,
        work, damaged or lease files: none remains once every run has ended)."""
        problems = []
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for entry in sorted(stage_dir.iterdir()):
                name = entry.name
                if name.startswith(".lock-") and entry.is_file():
                    continue  # flock's lock files: empty, they hold nothing
                if stage_dir.name == "convert" and name in (".lineage", "index.json"):
                    problems += [f"leftover {p}" for p in entry.glob(".*")] if entry.is_dir() else []
                    continue
                if name.startswith("."):
                    problems.append(f"leftover {entry}")
                    continue
                problems += [f"{entry}: {p}" for p in _check_output(entry)]
        problems += [f"leftover {p}" for p in self.root.glob(".*.tmp-*")]
        return problems

    def meta(self, stage, key):
        meta = read_json(self.path(stage, key) / ".meta.json", "store metadata")
        if not isinstance(meta, dict):
            from .errors import TaoflowError
            raise TaoflowError(f"store output {self.path(stage, key)} has no readable .meta.json; delete that "
                               f"directory and run again")
        return meta

    def new_temp(self, stage, key=None):
        """A temporary directory for computing `key` (the caller holds the key's lock):
        `.tmp-<key>~<host>~<pid>-XXXX`, so that a live writer of this host is recognised even by a run whose lock
        did not exclude it."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        prefix = f".tmp-{key}~{_safe_host()}~{os.getpid()}-" if key else ".tmp-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / stage))

    def clean_stale(self, stage, held_key=None):
        """Remove what killed runs left in this stage: `.tmp-<key>-*` directories whose key nobody has locked (the
        caller's own `held_key` is locked by the caller, so its temp directories are from an earlier attempt, except
        one of a live process of this host), very old `.tmp-*` without a key, and old temp files of atomic writes.
        Returns the paths removed."""
        stage_dir = self.root / stage
        removed = []
        if not stage_dir.is_dir():
            return removed
        for entry in sorted(stage_dir.iterdir()):
            name = entry.name
            if not name.startswith(".tmp-") or not entry.is_dir() or entry.is_symlink():
                continue
            key, _, writer = name[len(".tmp-"):].rpartition("-")[0].partition("~")
            if not key:  # an unkeyed temp directory of an older taoflow: only when it is clearly abandoned
                if _age(entry) > STALE_UNKEYED_TMP_S:
                    _remove_tree(entry)
                    removed.append(entry)
                continue
            if key == held_key:
                host, _, pid = writer.partition("~")
                if host == _safe_host() and pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                    log.warning("%s is being written by process %s of this host although this run holds the lock "
                                "of its key: are two lock kinds in use on one workspace?", entry, pid)
                    continue
                _remove_tree(entry)
                removed.append(entry)
                continue
            held = self._try_lock(stage, key)
            if held is None:
                continue  # another process is computing that key right now
            try:
                _remove_tree(entry)
                removed.append(entry)
            finally:
                held.close()
        removed += _remove_stale_files(stage_dir)
        for path in stage_dir.glob(".lease-*.new"):  # a lease's private file, left by a process killed creating it
            if path.is_file() and _age(path) > STALE_FILE_TMP_S:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
        for path in removed:
            log.warning("removed %s, left by an interrupted run", path)
        return removed


def _make_read_only(root):
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            if st.st_nlink > 1:
                continue  # a hard link shares its mode with the user's own file (images): never change theirs
            os.chmod(p, st.st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root):
    """Writable again by its owner, so that it can be removed: directories, and files except the user's own."""
    for dirpath, _, filenames in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p, follow_symlinks=False)
            if st.st_nlink > 1 or stat.S_ISLNK(st.st_mode):
                continue  # the user's own file (a hard-linked image): never change its mode
            os.chmod(p, st.st_mode | stat.S_IWUSR)


def _age(path):
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_tree(path):
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def _remove_stale_files(directory, only=None):
    """Temp files of atomic writes (`.NAME.tmp-PID-XXXX`, fsutil.atomic_file) older than an hour: their writer died.
    `only` limits it to those of one file name."""
    removed = []
    pattern = f".{only}.tmp-*" if only else ".*.tmp-*"
    for path in Path(directory).glob(pattern):
        if path.is_file() and not path.is_symlink() and _age(path) > STALE_FILE_TMP_S:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _file_sizes(root):
    """{relative path: size} of every file under root but the output's own metadata files."""
    root = Path(root)
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel not in (".meta.json", ".complete", FILES_LIST):
                out[rel] = p.lstat().st_size
    return out


def _check_output(final):
    """Problems of one committed output (see Store.check)."""
    if not final.is_dir() or final.is_symlink():
        return ["not a directory"]
    key = final.name
    try:
        complete = (final / ".complete").read_text(encoding="utf-8").strip()
    except OSError:
        return ["no .complete"]
    if complete != key:
        return [f".complete names {complete!r}"]
    meta = read_json(final / ".meta.json", "store metadata")
    if not isinstance(meta, dict):
        return ["no readable .meta.json"]
    problems = []
    if "material" not in meta or digest(meta["material"])[:24] != key:
        problems.append("its metadata's material does not hash to its key")
    listed = read_json(final / FILES_LIST, "file list")
    if isinstance(listed, dict):
        present = _file_sizes(final)
        if present != listed:
            missing = sorted(set(listed) - set(present))
            extra = sorted(set(present) - set(listed))
            resized = sorted(k for k in set(listed) & set(present) if listed[k] != present[k])
            problems.append(f"files differ from {FILES_LIST}: missing {missing[:5]}, extra {extra[:5]}, "
                            f"changed size {resized[:5]}")
    else:
        problems.append(f"no readable {FILES_LIST}")
    for dirpath, _, filenames in os.walk(final):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & 0o222:
                problems.append(f"writable: {os.path.relpath(os.path.join(dirpath, name), final)}")
    return problems


def flock_is_local_only(path, mountinfo="/proc/self/mountinfo"):
    """True when `path` lies on an NFS mount whose locks stay on this client (`nolock`, `local_lock=flock|all`):
    flock there excludes the processes of this machine only."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return False
    target = os.path.realpath(path)
    best, best_len = None, -1
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 1:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 is a space
        if target == point or target.startswith(point.rstrip("/") + "/"):
            if len(point) > best_len:
                best, best_len = (tail[0], fields[5].split(",") + (tail[2].split(",") if len(tail) > 2 else [])), \
                    len(point)
    if best is None or not best[0].startswith("nfs"):
        return False
    options = set(best[1])
    return "nolock" in options or "local_lock=all" in options or "local_lock=flock" in options


def choose_lock_mode(path):
    mode = (os.environ.get(LOCK_ENV) or "auto").strip().lower()
    if mode in ("flock", "file"):
        return mode
    if mode != "auto":
        from .errors import TaoflowError
        raise TaoflowError(f"${LOCK_ENV} must be auto, flock or file, not {mode!r}")
    if flock_is_local_only(path):
        log.info("the store %s is on an NFS mount without shared locks: using lease files", path)
        return "file"
    return "flock"


def host_id():
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _safe_host():
    return "".join(c if c.isalnum() else "_" for c in host_id())[:64]


def stale_seconds():
    try:
        return max(float(os.environ.get(STALE_ENV) or DEFAULT_STALE_S), 0.5)
    except ValueError:
        return DEFAULT_STALE_S


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True
    return True


class _Closing:
    def __init__(self, close):
        self.close = close


class LeaseLock:
    """A lock that needs nothing from the filesystem but atomic link(2) (or O_CREAT|O_EXCL), rename and mtime: the
    lease file `path` exists while someone holds it and names its holder (host, pid, token); the holder touches its
    mtime every stale_s/6 seconds. A waiter takes it over only when it has seen the file unchanged for stale_s
    seconds of its own clock (or its holder is a dead process of this host), and only under a short `.takeover`
    guard, so two waiters never both remove a lease."""

    def __init__(self, path, stale_s=None, host=None):
        self.path = Path(path)
        self.stale_s = stale_s if stale_s is not None else stale_seconds()
        self.host = host or host_id()
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread = None
        self.lost = False

    # -- holding ------------------------------------------------------------------------------------------
    def try_acquire(self, take_over_dead=True):
        """Take the lease when it is free (or held by a dead process of this host); never waits."""
        if self._create():
            self._start_heartbeat()
            return True
        if take_over_dead:
            seen = _observe(self.path)
            if seen is not None and self._dead_here(seen[1]) and self._take_over(seen) and self._create():
                self._start_heartbeat()
                return True
        return False

    def acquire(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        last, since, delay, told = None, time.monotonic(), 0.05, False
        while True:
            if self.try_acquire(take_over_dead=False):
                return True
            seen = _observe(self.path)
            if seen is None:
                continue  # released meanwhile
            signature, holder = seen
            now = time.monotonic()
            if signature != last:
                last, since = signature, now
            if self._dead_here(holder) or now - since >= self.stale_s:
                log.warning("taking over the lock %s of %s (pid %s): %s", self.path, holder.get("host"),
                            holder.get("pid"), "its process is gone" if self._dead_here(holder) else
                            f"no heartbeat for {now - since:.0f} s")
                if not self._take_over(seen):
                    time.sleep(0.05 + 0.1 * random.random())  # another waiter holds the takeover guard
                continue
            if not told:
                log.info("waiting for %s, held by %s pid %s", self.path, holder.get("host"), holder.get("pid"))
                told = True
            if deadline is not None and now >= deadline:
                return False
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.5, 1.0)

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        seen = _observe(self.path)
        if seen is not None and seen[1].get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.error("the lock %s was taken over while this process (%s pid %d) held it", self.path, self.host,
                      os.getpid())

    # -- internals ----------------------------------------------------------------------------------------
    def _content(self):
        return json.dumps({"host": self.host, "pid": os.getpid(), "token": self.token, "since": time.time()})

    def _create(self, path=None):
        """Create `path` (default the lease) holding our content, atomically: a private file linked to it."""
        path = path or self.path
        tmp = path.with_name(f"{path.name}.{self.token}.new")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self._content())
            f.flush()
            os.fsync(f.fileno())
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    # a lost reply of a link that did happen (NFS retransmit) is told apart by the link count
                    if os.stat(tmp).st_nlink != 2:
                        raise
                else:  # a filesystem without hard links: exclusive create
                    return self._create_exclusive(path)
            return os.stat(tmp).st_nlink == 2
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _create_exclusive(self, path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self._content())
        return True

    def _dead_here(self, holder):
        pid = holder.get("pid")
        return holder.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid)

    def _take_over(self, seen):
        """Remove the lease we judged stale, if it is still that one; under the `.takeover` guard."""
        guard = self.path.with_name(self.path.name + ".takeover")
        if not self._create(guard):
            g = _observe(guard)
            if g is None:
                return False
            if self._dead_here(g[1]) or (time.time() - g[1].get("since", time.time())) > 10 * self.stale_s:
                with contextlib.suppress(FileNotFoundError):
                    guard.unlink()  # a guard is held for milliseconds: this one's holder died holding it
            return False
        try:
            now = _observe(self.path)
            if now is not None and now[0] == seen[0]:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return True
            return now is None
        finally:
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()

    def _start_heartbeat(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self):
        interval = max(self.stale_s / 6, 0.1)
        while not self._stop.wait(interval):
            seen = _observe(self.path)
            if seen is None or seen[1].get("token") != self.token:
                self.lost = True
                log.error("lost the lock %s (taken over: was this process stalled for %.0f s?)", self.path,
                          self.stale_s)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _observe(path):
    """((inode, mtime_ns, size, raw content), parsed holder) of a lease file, or None when there is none. open()
    makes an NFS client revalidate the file (close-to-open consistency), so a cached mtime is never seen."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(4096)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw.decode("utf-8"))
    except ValueError:
        holder = {}
    if not isinstance(holder, dict):
        holder = {}
    return (st.st_ino, st.st_mtime_ns, st.st_size, raw), holder


def main(argv=None):
    """`python -m taoflow.store WORKSPACE...`: check each store's integrity (exit 1 on a problem)."""
    import sys
    failed = False
    for workspace in (argv if argv is not None else sys.argv[1:]):
        problems = Store(workspace).check()
        for problem in problems:
            print(problem)
        print(f"{workspace}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
