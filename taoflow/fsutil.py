"""Filesystem helpers shared by every stage: atomic outputs, links instead of copies, content hashes.

Stages never write into their final output path directly. They write into a temporary sibling and rename it into
place once complete, so a crash or a bad input leaves either the old output or nothing, never half of a new one.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputExistsError, TaoflowError


def _tmp_sibling(final: Path, kind: str) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-{os.getpid()}-"
    if kind == "dir":
        return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(final, replace=False):
    """Yield a temporary directory that becomes `final` when the block exits without an exception.

    An existing `final` is an error unless `replace` is true; then it is swapped out only after the new
    directory is complete.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise OutputExistsError(f"output already exists: {final} (pass --replace to overwrite it)")
    tmp = _tmp_sibling(final, "dir")
    try:
        yield tmp
        _commit(tmp, final, replace)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(final, replace=True, mode="wb", encoding=None):
    """Yield an open file that replaces `final` atomically when the block succeeds."""
    final = Path(final)
    if final.exists() and not replace:
        raise OutputExistsError(f"output already exists: {final}")
    tmp = _tmp_sibling(final, "file")
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path, text):
    with atomic_file(path, mode="w", encoding="utf-8") as f:
        f.write(text)


def _commit(tmp: Path, final: Path, replace: bool):
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; outputs should be as readable as any other directory
    if not final.exists():
        os.rename(tmp, final)
        return
    if not replace:
        raise OutputExistsError(f"output already exists: {final} (pass --replace to overwrite it)")
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rename(final, trash / "old")
    os.rename(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def link_or_copy(src, dst):
    """Hard-link src to dst; copy when linking is impossible (other filesystem, no permission).

    Links keep the data stage at the cost of a directory entry and never duplicate gigabytes of images; the
    user's files are never moved or modified.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_file(path, data: bytes):
    """open(path, "wb").write(data) for the many small files a step writes (a KITTI label per image), at the cost
    of three system calls: no Python file object, no buffer."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def sha256_file(path, bufsize=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root):
    """Map each file under root (relative POSIX path) to its sha256; used to prove inputs stay untouched."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def check_not_inside(output, inp, what="output"):
    """Refuse an output directory that is, contains, or sits inside the input tree."""
    out = Path(output).resolve()
    src = Path(inp).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise TaoflowError(f"{what} {output} overlaps the input {inp}; choose a directory outside it")
