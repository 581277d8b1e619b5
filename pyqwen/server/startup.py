"""`pyqwen serve` start-up and shut-down: bind the port first, load the model after, stop cleanly.

A taken port must fail at once, not after minutes of loading a 17 GB model, and a load balancer must
see the server while it loads. So the port is bound first and served by `StagedApp`: while the model
loads, /health answers 503 {"status": "loading"} (as llama-server does) and every other path 503; once
the Engine is ready, requests go to the real application.

On SIGINT/SIGTERM, `CleanServer` first ends every generation with an error event (a streaming client
gets `{"error": ...}` and `[DONE]` instead of a cut stream), then lets uvicorn finish.
"""

from __future__ import annotations

import json
import socket
import threading

import uvicorn

LOADING_BODY = {"error": {"message": "the model is loading; retry shortly", "type": "server_error",
                          "param": None, "code": "model_loading"}}


class StagedApp:
    """ASGI app that answers 'loading' until `ready(app)` hands it the real application."""

    def __init__(self):
        self.app = None
        self.failed: str | None = None

    def ready(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if self.app is not None:
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            status, body = 503, {"status": "loading" if self.failed is None else "error"}
        else:
            status, body = 503, LOADING_BODY
        raw = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                                (b"retry-after", b"5")]})
        await send({"type": "http.response.body", "body": raw})


class CleanServer(uvicorn.Server):
    """uvicorn.Server that ends the engine's generations (with an error event) before shutting down."""

    engine = None

    def handle_exit(self, sig, frame) -> None:
        engine = self.engine
        if engine is not None:
            engine.stop_all("the server is shutting down")
        super().handle_exit(sig, frame)
        # uvicorn re-raises the captured signal once it has stopped, which turns a requested stop into a
        # KeyboardInterrupt traceback; the stop is complete and clean, so the signal is consumed here.
        self._captured_signals.clear()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; OSError (e.g. the port is taken) before anything is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class StagedServer:
    """Serves `sock` at once; `load()` (in a thread) builds (app, engine), then requests reach the app."""

    def __init__(self, sock: socket.socket, load, *, log_level: str = "info"):
        self.sock, self.load = sock, load
        self.staged = StagedApp()
        config = uvicorn.Config(self.staged, log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
        self.server = CleanServer(config)
        self.engine = None
        self.error: BaseException | None = None

    def _load(self) -> None:
        try:
            app, engine = self.load()
        except BaseException as e:  # the caller reports it; the server stops
            self.staged.failed = str(e)
            self.error = e
            self.server.should_exit = True
            return
        self.engine = self.server.engine = engine
        self.staged.ready(app)

    def run(self):
        """Serve until stopped (SIGINT/SIGTERM in the main thread, or stop()); returns the engine or None."""
        threading.Thread(target=self._load, name="pyqwen-load", daemon=True).start()
        self.server.run(sockets=[self.sock])
        return self.engine

    def stop(self) -> None:
        self.server.should_exit = True
