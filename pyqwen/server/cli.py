"""`pyqwen serve`: the OpenAI-compatible server on the command line.

    pyqwen serve -m model.gguf [--host 127.0.0.1 --port 8080 --api-key KEY --ctx N --cache-ram MiB --threads T]

pyqwen.cli calls `add_parser(subparsers)`; fastapi/uvicorn are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..cli_model_args import add_cache_and_rope_args, cache_and_rope_kwargs
from ..cli_values import int_arg, number


_positive_int = int_arg(1, "integer")


def _port(s: str) -> int:
    v = _positive_int(s)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"port must be <= 65535, got {v}")
    return v


def _mib(s: str) -> float:
    v = number(s, "a size in MiB")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("model_file", nargs="?", metavar="MODEL", help="GGUF file (same as -m)")
    g.add_argument("-m", "--model", metavar="FILE", help="GGUF file (default: the built-in demo model)")
    g.add_argument("--hf", metavar="REPO[:QUANT]", help="a GGUF from the Hugging Face Hub instead of -m")
    g.add_argument("-a", "--alias", metavar="NAME", help="model id reported by /v1/models (default: from the file)")
    g.add_argument("-c", "--ctx", type=_positive_int, default=8192, metavar="N",
                   help="context window per session, in tokens (default 8192, capped at the trained context)")
    add_cache_and_rope_args(g)
    g.add_argument("-t", "--threads", type=_positive_int, default=None, metavar="T", help="threads (default: all cores)")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=256, metavar="N", help="prefill chunk (default 256)")
    g.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto", help="compute backend")
    g.add_argument("-ngl", "--n-gpu-layers", type=int, default=None, metavar="N",
                   help="llama.cpp's option, accepted: all layers run on the GPU or none (0 = CPU)")
    from ..speculative.policy import add_spec_args

    add_spec_args(p)
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


def serve(model, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          cache_ram_mib: float = 8192, model_name: str | None = None, max_queue: int = 256,
          log_level: str = "info") -> None:
    """Run the server on a loaded pyqwen.Model until interrupted."""
    from .startup import StagedServer, bind

    sock = bind(host, port)
    engine = StagedServer(sock, lambda: _build(model, api_key, cache_ram_mib, model_name, max_queue),
                          log_level=log_level).run()
    if engine is not None:
        engine.shutdown()


def _build(model, api_key, cache_ram_mib, model_name, max_queue):
    from .app import create_app
    from .engine import Engine

    engine = Engine(model, model_name=model_name, cache_ram_mib=cache_ram_mib, max_queue=max_queue)
    return create_app(engine, api_key=api_key), engine


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"`pyqwen serve` needs fastapi and uvicorn ({e}): pip install 'pyqwen[server]'") from None
    from ..cli_compat import backend_arg
    from ..model_path import model_arg, resolve_model_path
    from .startup import StagedServer, bind

    path = resolve_model_path(model_arg(args), args.hf)   # a missing file fails before the port is taken
    backend = backend_arg(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"pyqwen serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    try:
        sock = bind(args.host, args.port)      # before loading: a taken port fails now, not after minutes
    except OSError as e:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print(f"pyqwen serve: listening on http://{args.host}:{args.port}/v1, loading {path} "
          "(/health answers 503 'loading' until it is ready)", file=sys.stderr, flush=True)
    def load():
        from ..model import Model

        model = Model.load(path, n_ctx=args.ctx, threads=args.threads, **cache_and_rope_kwargs(args),
                           n_batch=args.batch_size, backend=backend, spec=args.spec, draft=args.draft)
        app_engine = _build(model, args.api_key, args.cache_ram, args.alias, args.max_queue)
        print(f"pyqwen serve: ready: {path.name} (ctx {model.n_ctx}, kv {model.kv_type})", file=sys.stderr, flush=True)
        return app_engine

    staged = StagedServer(sock, load, log_level=args.log_level)
    engine = staged.run()
    if engine is not None:
        engine.shutdown()
    if staged.error is not None:
        e = staged.error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"pyqwen serve: error: {msg}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyqwen-serve")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
