"""Host-side per-device lock: one deploy, rollback or build per device at a time, across threads and processes.

An flock on a file per device address, not an asyncio.Lock: a Prefect flow may run device tasks in several
threads (each with its own event loop) or several worker processes, and flock serialises all of them; the kernel
releases it if the holder dies. The device agent takes its own flocks for builds and `current` switches, so two
hosts deploying to one device are serialised there as well.
"""

import asyncio
import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

from .errors import DeployError


def lock_dir():
    base = os.environ.get("TAOFLOW_LOCK_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "taoflow"
    path = Path(base).expanduser() / "device-locks"
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def device_lock(device, wait_s=600.0):
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{device.host}_{device.port}")
    path = lock_dir() / f"{safe}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DeployError(f"device busy: another taoflow operation holds {path} for over {wait_s:.0f} s",
                                      device.name) from None
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)
