"""`pyqwen serve`: the OpenAI-compatible server on the command line.

    pyqwen serve -m model.gguf [--host 127.0.0.1 --port 8080 --api-key KEY --ctx N --cache-ram MiB --threads T]

pyqwen.cli calls `add_parser(subparsers)`; fastapi/uvicorn are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _port(s: str) -> int:
    v = _positive_int(s)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"port must be <= 65535, got {v}")
    return v


def _mib(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MiB, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", metavar="FILE", help="GGUF file (default: the built-in demo model)")
    g.add_argument("--hf", metavar="REPO[:QUANT]", help="a GGUF from the Hugging Face Hub instead of -m")
    g.add_argument("-a", "--alias", metavar="NAME", help="model id reported by /v1/models (default: from the file)")
    g.add_argument("-c", "--ctx", type=_positive_int, default=8192, metavar="N",
                   help="context window per session, in tokens (default 8192, capped at the trained context)")
    g.add_argument("--kv-type", choices=("f16", "f32"), default="f16", help="KV cache type (default f16)")
    g.add_argument("-t", "--threads", type=_positive_int, default=None, metavar="T", help="threads (default: all cores)")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=256, metavar="N", help="prefill chunk (default 256)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    g.add_argument("--api-key", metavar="KEY", default=os.environ.get("PYQWEN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: $PYQWEN_API_KEY)")
    g.add_argument("--cache-ram", type=_mib, default=8192, metavar="MiB",
                   help="memory for session states and checkpoints, in MiB (default 8192; LRU eviction)")
    g.add_argument("--max-queue", type=_positive_int, default=256, metavar="N",
                   help="requests allowed to wait for the model before 503 (default 256)")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, ...)",
        description="Serve a model over an OpenAI-compatible HTTP API. One generation runs at a time; other "
                    "requests wait in a queue. Multi-turn sessions (X-Session-Id header, `session_id` or "
                    "`user`) reuse their cached state, so follow-up turns only prefill new messages.")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _model_path(args):
    from ..model_path import resolve_model_path

    return resolve_model_path(args.model, args.hf)


def serve(model, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          cache_ram_mib: float = 8192, model_name: str | None = None, max_queue: int = 256,
          log_level: str = "info") -> None:
    """Run the server on a loaded pyqwen.Model until interrupted."""
    import uvicorn

    from .app import create_app
    from .engine import Engine

    engine = Engine(model, model_name=model_name, cache_ram_mib=cache_ram_mib, max_queue=max_queue)
    app = create_app(engine, api_key=api_key)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    finally:
        engine.shutdown()


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"`pyqwen serve` needs fastapi and uvicorn ({e}): pip install 'pyqwen[server]'") from None
    from ..model import Model

    path = _model_path(args)
    model = Model.load(path, n_ctx=args.ctx, threads=args.threads, kv_type=args.kv_type, n_batch=args.batch_size)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"pyqwen serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    print(f"pyqwen serve: {path} (ctx {model.n_ctx}, kv {model.kv_type}) on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    serve(model, host=args.host, port=args.port, api_key=args.api_key, cache_ram_mib=args.cache_ram,
          model_name=args.alias, max_queue=args.max_queue, log_level=args.log_level)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyqwen-serve")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
