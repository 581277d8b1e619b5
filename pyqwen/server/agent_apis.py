"""The APIs agents speak beside OpenAI's (Anthropic Messages, OpenAI Responses, ollama), registered on the
app in one call; each lives in its own module over the shared Gateway (api_common)."""

from __future__ import annotations

from .api_anthropic import register_anthropic
from .api_common import Gateway
from .api_ollama import register_ollama
from .api_responses import register_responses
from .engine import Engine


def register_agent_apis(app, engine: Engine, *, api_key: str | None, read_body, next_event) -> None:
    """Add /v1/messages, /v1/responses and the ollama /api/* routes to the OpenAI app."""
    gw = Gateway(engine, api_key, read_body, next_event)
    register_anthropic(app, gw)
    register_responses(app, gw)
    register_ollama(app, gw)
