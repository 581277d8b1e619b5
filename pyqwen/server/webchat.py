"""The chat page at `/`: static files shipped in the package (pyqwen/server/static), no build step.

The page is public (it holds no secret: with `--api-key` it asks for the key and sends it on its own /v1
requests). Its Content-Security-Policy lets it load and connect only to this server, and forbids inline
script, so even a rendering bug could not run model-written markup or reach another machine.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_webchat(app: FastAPI) -> None:
    """Serve the page at `/` and its files at `/static/...`."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
