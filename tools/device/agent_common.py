"""Helpers shared by the device agent's commands: errors, JSON files with line numbers, atomic writes, locks.

The agent runs on JetPack 4.6 (Python 3.6.9) and is shipped next to this file on every deploy, so it imports
nothing from the host package and only the stdlib here.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
import time


# The file descriptor the reply goes to (the SSH channel's stdout), set by taoflow_agent.main.
REPLY_FD = None


def host_listening():
    """Whether the host can still receive this command's reply: a newline written to the reply channel (the reply
    parser skips it) fails with EPIPE once the SSH connection is gone. Checked before anything the host would have
    to know about, such as switching `current`: an agent orphaned by a lost connection never switches a device
    behind the host's back. True when no reply channel is set (the agent run by hand)."""
    if REPLY_FD is None:
        return True
    try:
        os.write(REPLY_FD, b"\n")
        return True
    except OSError:
        return False


class AgentError(Exception):
    """A failure the agent reports as {"ok": false, "error": ...}; `path`/`line` say where bad input is."""

    def __init__(self, message, path=None, line=None, details=None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.details = details or {}
        Exception.__init__(self, self.__str__())

    def __str__(self):
        if self.path is None:
            return self.message
        loc = self.path if self.line is None else "{}:{}".format(self.path, self.line)
        return "{}: {}".format(loc, self.message)


def line_of(text, key):
    """1-based line of the first `"key":` in a JSON text, so semantic errors can point at a line too."""
    needle = '"{}"'.format(key)
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    return None


def load_json(path, what="JSON file"):
    """Read a JSON object; syntax errors name the file and line, a missing file names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise AgentError("{} is missing".format(what), path) from None
    except UnicodeDecodeError as e:
        raise AgentError("{} is not UTF-8 text ({})".format(what, e), path) from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AgentError("invalid JSON: {}".format(getattr(e, "msg", e)), path,
                         getattr(e, "lineno", None)) from None
    if not isinstance(value, dict):
        raise AgentError("{} must hold a JSON object".format(what), path, 1)
    return value, text


def write_json_atomic(path, value):
    """Write JSON via a temp sibling + rename: readers see the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path, bufsize=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(bufsize)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


@contextlib.contextmanager
def device_lock(root, name, wait_s=0.0):
    """Exclusive flock on <root>/locks/<name>.lock.

    flock (not a pid file) because the kernel drops it when the holder dies: a build killed together with its
    SSH session, or by the OOM killer, never leaves a stale lock that blocks the next deploy.
    """
    lock_dir = os.path.join(root, "locks")
    os.makedirs(lock_dir, exist_ok=True)
    path = os.path.join(lock_dir, name + ".lock")
    f = open(path, "a+")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise AgentError("another {} is running on this device (lock {} is held)".format(
                        name, path)) from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield path
    finally:
        f.close()


def run_tool(argv, timeout_s, secret=None, env=None):
    """Run an external tool, return (returncode, output tail). `secret` is masked in everything returned."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                universal_newlines=True, errors="replace")
    except OSError as e:
        raise AgentError("cannot start {}: {}".format(os.path.basename(argv[0]), e.strerror)) from None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, redact(out[-4000:], secret)
    return proc.returncode, redact(out[-4000:], secret)


def redact(text, secret):
    if secret:
        text = text.replace(secret, "***")
    return text


def redact_argv(argv, secret):
    return ["***" if secret and a == secret else a for a in argv]
