"""OpenAI-compatible HTTP server for pyqwen (FastAPI + uvicorn; `pip install 'pyqwen[server]'`).

    pyqwen serve -m Qwen3.6-27B-Q4_K_M.gguf --ctx 32768 --cache-ram 8192

or from Python::

    from pyqwen.server import Engine, create_app
    app = create_app(Engine(pyqwen.Model.load("model.gguf")), api_key="secret")

One generation runs at a time: requests wait in a FIFO queue (depth on /metrics and /health). Sessions
(key from the X-Session-Id header, `session_id` or `user`) keep their model state between requests, so
a follow-up turn only prefills what is new; see pyqwen.session.

FastAPI is imported lazily so `import pyqwen.server.cli` stays cheap for the command line.
"""

from __future__ import annotations

__all__ = ["Engine", "create_app", "serve"]


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .cli import serve

        return serve
    raise AttributeError(name)
