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
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from . import __version__
from .fsutil import sha256_file, write_text_atomic

log = logging.getLogger(__name__)
STALE_UNKEYED_TMP_S = 2 * 24 * 3600  # `.tmp-XXXX` of taoflow before keyed names: nothing tells whether it is live
STALE_FILE_TMP_S = 3600  # a temp file of an atomic metadata write lives for milliseconds

CODE_ROOT = Path(__file__).resolve().parent


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

    @contextlib.contextmanager
    def lock(self, stage, key):
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        with open(self.root / stage / f".lock-{key}", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a second run of the same stage waits, then finds the output
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _try_lock(self, stage, key):
        """An open, exclusively locked lock file for `key`, or None when someone holds it (never waits)."""
        f = open(self.root / stage / f".lock-{key}", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        return f

    def commit(self, stage, key, src_dir, meta):
        """Move a finished output into place, record its metadata, and make it read-only."""
        final = self.path(stage, key)
        write_text_atomic(Path(src_dir) / ".meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
        write_text_atomic(Path(src_dir) / ".complete", key)  # last: it marks the output complete
        if final.exists():  # a crashed earlier attempt left an incomplete or damaged directory
            _make_writable(final)
            shutil.rmtree(final)
        os.rename(src_dir, final)
        _make_read_only(final)
        return final

    def meta(self, stage, key):
        meta = read_json(self.path(stage, key) / ".meta.json", "store metadata")
        if not isinstance(meta, dict):
            from .errors import TaoflowError
            raise TaoflowError(f"store output {self.path(stage, key)} has no readable .meta.json; delete that "
                               f"directory and run again")
        return meta

    def new_temp(self, stage, key=None):
        """A temporary directory for computing `key` (the caller holds the key's lock): `.tmp-<key>-XXXX`."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        prefix = f".tmp-{key}-" if key else ".tmp-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / stage))

    def clean_stale(self, stage, held_key=None):
        """Remove what killed runs left in this stage: `.tmp-<key>-*` directories whose key nobody has locked (the
        caller's own `held_key` is locked by the caller, so its temp directories are from an earlier attempt),
        very old `.tmp-*` without a key, and old temp files of atomic writes. Returns the paths removed."""
        stage_dir = self.root / stage
        removed = []
        if not stage_dir.is_dir():
            return removed
        for entry in sorted(stage_dir.iterdir()):
            name = entry.name
            if not name.startswith(".tmp-") or not entry.is_dir() or entry.is_symlink():
                continue
            key = name[len(".tmp-"):].rpartition("-")[0]
            if not key:  # an unkeyed temp directory of an older taoflow: only when it is clearly abandoned
                if _age(entry) > STALE_UNKEYED_TMP_S:
                    _remove_tree(entry)
                    removed.append(entry)
                continue
            if key == held_key:
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
