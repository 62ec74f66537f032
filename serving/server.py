"""`ServingProcess`: uvicorn (HTTP) and the gRPC server on one event loop, one runtime.

Lifecycle of `reasonrec serve`:

1. the runtime starts (stores connected, releases loading in the background) and both
   servers listen at once: `/healthz` answers and gRPC health says NOT_SERVING while models
   load; `/readyz` and gRPC health flip when they are in;
2. a failed first load stops both servers and `run()` raises the load error (the command
   prints it and exits 2 — a crash loop with a clear message beats a pod that never gets
   ready);
3. SIGTERM or SIGINT: both servers stop accepting, requests in flight get
   `shutdown_timeout_s` to finish, then the releases are drained and the stores closed;
   `run()` returns 0. (uvicorn's own signal capture is replaced: it re-raises the signal after
   its shutdown, which would kill the process before the gRPC server has drained.)

`ThreadedServer` runs the same thing on a background thread (tests, benchmarks, demos).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
from collections.abc import Generator

import uvicorn

from serving.grpc_app import GrpcServer
from serving.http_app import create_app
from serving.runtime import ServingRuntime
from serving.settings import ServingSettings
from sid_index.errors import ConfigError, ReasonrecError

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handling: ServingProcess owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ServingProcess:
    """HTTP + gRPC servers over one `ServingRuntime` (see the module docstring)."""

    def __init__(self, settings: ServingSettings, runtime: ServingRuntime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or ServingRuntime(settings)
        self.app = create_app(settings, self.runtime)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.started = asyncio.Event()
        """Set once both servers listen (ports known)."""
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (call on the loop's thread)."""
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        """Serve until `request_stop()` or a signal; returns 0.

        Raises:
            ReasonrecError: a bad configuration, a port in use, or a failed first load.
        """
        s = self.settings
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        await self.runtime.start()
        grpc_server = None if s.grpc_port is None else GrpcServer(self.runtime, s)
        uv = _Uvicorn(
            uvicorn.Config(
                self.app,
                host=s.host,
                port=s.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=math.ceil(s.shutdown_timeout_s),
            )
        )
        http_task: asyncio.Task[None] | None = None
        failure: BaseException | None = None
        try:
            if grpc_server is not None:
                assert s.grpc_port is not None
                self.grpc_port = await grpc_server.start(s.host, s.grpc_port)
            http_task = loop.create_task(_serve_http(uv, s))
            while not uv.started:
                if http_task.done():
                    await http_task  # raises why it could not start
                await asyncio.sleep(0.01)
            self.http_port = int(uv.servers[0].sockets[0].getsockname()[1])
            log.info("HTTP listening on %s:%d", s.host, self.http_port)
            self.started.set()
            await self._until_stopped(http_task)
        except BaseException as exc:
            failure = exc
        finally:
            uv.should_exit = True
            closing = []
            if http_task is not None:
                closing.append(http_task)
            if grpc_server is not None:
                closing.append(loop.create_task(grpc_server.stop(s.shutdown_timeout_s)))
            results = await asyncio.gather(*closing, return_exceptions=True)
            await self.runtime.stop()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info("servers stopped")
        if failure is not None:
            raise failure
        for result in results:
            if isinstance(result, ReasonrecError):
                raise result
        if self.runtime.load_error is not None:
            err = self.runtime.load_error
            raise err if isinstance(err, ReasonrecError) else ConfigError(str(err))
        return 0

    async def _until_stopped(self, http_task: asyncio.Task[None]) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        loaded = asyncio.ensure_future(self.runtime.loaded.wait())
        pending = {stop, loaded, http_task}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stop in done or http_task in done:
                    return
                if loaded in done and self.runtime.load_error is not None:
                    return  # nothing to serve: shut down and report why
        finally:
            for fut in (stop, loaded):
                fut.cancel()


async def _serve_http(uv: uvicorn.Server, settings: ServingSettings) -> None:
    try:
        await uv.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; turn it into an error we report.
        raise ConfigError(f"HTTP cannot listen on {settings.host}:{settings.port}") from None


class ThreadedServer:
    """A `ServingProcess` on a background thread with its own event loop."""

    def __init__(self, settings: ServingSettings, runtime: ServingRuntime | None = None) -> None:
        self.settings = settings
        self._runtime = runtime
        self.process: ServingProcess | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def http_port(self) -> int:
        assert self.process is not None and self.process.http_port is not None
        return self.process.http_port

    @property
    def grpc_port(self) -> int:
        assert self.process is not None and self.process.grpc_port is not None
        return self.process.grpc_port

    @property
    def runtime(self) -> ServingRuntime:
        assert self.process is not None
        return self.process.runtime

    def start(self, timeout_s: float = 30.0) -> ThreadedServer:
        """Start and wait until both servers listen (models may still be loading)."""
        self._thread = threading.Thread(target=self._main, name="reasonrec-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"servers did not start within {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self

    def wait_loaded(self, timeout_s: float = 60.0) -> None:
        """Block until the first load finished; raise its error if it failed."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.runtime.loaded.wait(), self.loop)
        fut.result(timeout_s)
        if self.runtime.load_error is not None:
            raise self.runtime.load_error

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.process = ServingProcess(self.settings, self._runtime)
            waiter = asyncio.ensure_future(self.process.started.wait())
            runner = asyncio.ensure_future(self.process.run(handle_signals=False))
            await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await runner

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful shutdown; waits for the thread."""
        if self.loop is not None and self.process is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may already be gone
                self.loop.call_soon_threadsafe(self.process.request_stop)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
