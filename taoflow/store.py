"""Content-addressed, immutable stage outputs: `<workspace>/store/<stage>/<key>/`.

A stage's key is the hash of everything its output depends on: the content of its input files (never their path
strings), the upstream stages' keys, the spec fields and parameters it uses, and the code version. Identical inputs
give the same key, so a re-run finds the output and does no work; any change gives a new key and a new directory,
so nothing is ever overwritten. Outputs are written to a temporary sibling and renamed into place, then made
read-only. A per-key lock stops two concurrent runs from computing the same output twice or clobbering each other.
Hashing large datasets is the expensive part of a no-op re-run, so file hashes are remembered by (path, size,
mtime) and reused while a file is unchanged.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from . import __version__
from .fsutil import sha256_file

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
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".hashcache-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f)
        os.replace(tmp, self.path)


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


class Store:
    def __init__(self, workspace):
        self.root = Path(workspace) / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        self.hashes = HashCache(self.root / ".hash-cache.json")

    def path(self, stage, key):
        return self.root / stage / key

    def has(self, stage, key):
        return (self.path(stage, key) / ".complete").exists()

    def work_dir(self, stage, key):
        """A persistent scratch directory for a stage that can resume (training), kept until the output commits."""
        d = self.root / stage / f".work-{key}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def lock(self, stage, key):
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        with open(self.root / stage / f".lock-{key}", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a second run of the same stage waits, then finds the output
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def commit(self, stage, key, src_dir, meta):
        """Move a finished output into place, record its metadata, and make it read-only."""
        final = self.path(stage, key)
        (Path(src_dir) / ".meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (Path(src_dir) / ".complete").write_text(key)
        if final.exists():  # a crashed earlier attempt left an incomplete directory
            _make_writable(final)
            shutil.rmtree(final)
        os.rename(src_dir, final)
        _make_read_only(final)
        return final

    def meta(self, stage, key):
        return json.loads((self.path(stage, key) / ".meta.json").read_text())

    def new_temp(self, stage):
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / stage))


def _make_read_only(root):
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            if st.st_nlink > 1:
                continue  # a hard link shares its mode with the user's own file (images): never change theirs
            os.chmod(p, st.st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root):
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
