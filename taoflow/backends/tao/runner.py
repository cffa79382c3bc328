"""Running the launcher: stream its output, masked, to the step's log; recover the task's exit status.

Output is read line by line as it comes, so a long training run's log grows live; carriage-return progress bars
keep only what a terminal would finally show. The exit marker (see commands.py) is taken out of the stream.
"""

import os
import re
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TaoflowError
from .masking import mask_secrets

TAIL_LINES = 40


class TaoRunError(TaoflowError):
    """A TAO step that failed; the message ends with the (masked) tail of its log."""

    exit_code = 1  # the run failed (not bad input): taoflow.cli's exit status

    def __init__(self, message, task=None, task_exit_code=None, log=None, tail=()):
        self.task = task
        self.task_exit_code = task_exit_code  # the task's own status (exit_code stays the CLI's exit status)
        self.log = None if log is None else Path(log)
        self.tail = list(tail)
        text = message
        if self.log is not None:
            text += f"\nlog: {self.log}"
        if self.tail:
            text += "\n" + "\n".join(f"  | {line}" for line in self.tail[-20:])
        super().__init__(text)


@dataclass
class LauncherRun:
    returncode: int  # the launcher's own status
    task_returncode: int  # the task's status from the exit marker; None when the task never ran
    log: Path
    tail: list = field(default_factory=list)


def run_launcher(argv, env, log_path, secrets, exit_marker, header=None, use_pty=False, on_line=None, cwd=None):
    """Run `argv`, writing masked output lines to `log_path` (and to `on_line`); return a LauncherRun.

    `use_pty` gives the launcher a pseudo-terminal as stdin: nvidia-tao 5+ runs `docker exec -it` by default,
    which docker refuses without a terminal on stdin, as under a scheduler or CI.
    """
    marker = re.compile(rf"^(.*?){re.escape(exit_marker)}=(\d+)\s*$")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stdin, master = subprocess.DEVNULL, None
    if use_pty:
        try:
            import pty
            master, stdin = pty.openpty()
        except (ImportError, OSError):
            stdin, master = subprocess.DEVNULL, None
    tail = deque(maxlen=TAIL_LINES)
    task_rc = None
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as e:
        raise TaoflowError(f"cannot start the TAO launcher {argv[0]}: {e}") from None
    finally:
        if master is not None:
            os.close(stdin)
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            if header:
                log.write(mask_secrets(header, secrets) + "\n")
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                line = line.rsplit("\r", 1)[-1]
                m = marker.match(line)
                if m:
                    task_rc = int(m.group(2))
                    line = m.group(1)
                    if not line.strip():
                        continue
                line = mask_secrets(line, secrets)
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                if on_line is not None:
                    on_line(line)
        returncode = proc.wait()
    except BaseException:
        # SIGINT lets the launcher run its `finally: stop_container()`; SIGKILL would leave the container running.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if master is not None:
            os.close(master)
    return LauncherRun(returncode=returncode, task_returncode=task_rc, log=log_path, tail=list(tail))
