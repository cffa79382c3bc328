"""Prefect's temporary server (the one a flow starts by itself when PREFECT_API_URL is unset), started early and
stopped cleanly.

Started in a thread, its start-up (seconds of CPU in a subprocess) overlaps the caller's own work instead of
delaying the first flow call. Stopped explicitly, after Prefect's log and event workers have sent what they hold:
left to Prefect's atexit hook, the stop logs into streams that are already closed ("--- Logging error ---"), and
stopping it before the workers drain makes them print "--- Error logging to API ---".
"""

import os
import threading


class TemporaryServer:
    def __init__(self):
        self.server = None
        self.thread = None
        if not os.environ.get("PREFECT_API_URL"):
            self.thread = threading.Thread(target=self._start, name="prefect-server-start", daemon=True)
            self.thread.start()

    def _start(self):
        from prefect.server.api.server import SubprocessASGIServer
        server = SubprocessASGIServer()
        try:
            server.start()
        except Exception:  # noqa: BLE001 - the flow's own start of the same server reports why
            return
        self.server = server

    def wait(self):
        """Block until the server answers (or failed to start: the first flow call then says why)."""
        if self.thread is not None:
            self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.wait()
        stop_temporary_servers()


def stop_temporary_servers():
    """Drain Prefect's API log and event workers, then stop every temporary server of this process."""
    from prefect.server.api.server import SubprocessASGIServer
    if not SubprocessASGIServer._instances:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain():
        for drain_call in (lambda: APILogWorker.instance().drain(), EventsWorker.drain_all):
            try:
                result = drain_call()
                if hasattr(result, "__await__"):
                    await result
            except RuntimeError:  # the worker never started
                pass

    run_coro_as_sync(drain())
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
