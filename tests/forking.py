"""Forked child processes for tests that leave like processes of their own.

A child forked from the test process inherits its threads and exit hooks: after flow tests have run in the same
pytest session (Prefect's temporary server and workers, ClearML), a child that returns normally can end with exit
status 1 from those inherited hooks. `FORK.Process` runs the target, flushes, and leaves with os._exit: status 0
when the target returned, 1 (with the traceback on stderr) when it raised. Children that put results in a
multiprocessing Queue must close and join it themselves first (tests/test_gpus.py does).
"""

import multiprocessing
import os
import sys
import traceback


def _run_then_exit(target, args, kwargs):
    code = 0
    try:
        target(*args, **kwargs)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


class _ForkContext:
    def __init__(self):
        self._ctx = multiprocessing.get_context("fork")

    def Process(self, target, args=(), kwargs=None, **options):  # noqa: N802 - multiprocessing's name
        return self._ctx.Process(target=_run_then_exit, args=(target, tuple(args), kwargs or {}), **options)

    def __getattr__(self, name):  # Event, Queue, Lock, ... as multiprocessing's fork context has them
        return getattr(self._ctx, name)


FORK = _ForkContext()
