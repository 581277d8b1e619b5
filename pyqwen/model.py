"""The public Python API: Model.load / tokenize / eval / generate / chat."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ChatTemplateError, ContextOverflowError, ModelFormatError, PrefillCancelled
from .generation import Chunk, Generation, GenerationStats, StateSequence
from .gguf_file import GGUFFile
from .sampling import Sampler, SamplingParams

_DATA = Path(__file__).parent / "data"
# Tokens per core call when a prefill is watched by a progress callback: a few seconds of a long prompt
# on a CPU, so the callback (a progress bar, a cancel check) runs often; a few ms of overhead per piece.
PREFILL_PIECE = 2048


def default_threads() -> int:
    """Physical-ish core count: matmuls are bandwidth-bound, so SMT siblings rarely help."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n)


class ChatChunk:
    """A streamed piece of an assistant reply: reasoning text, visible content, or both empty."""

    __slots__ = ("reasoning", "content", "token_ids")

    def __init__(self, reasoning: str = "", content: str = "", token_ids: list[int] | None = None):
        self.reasoning = reasoning
        self.content = content
        self.token_ids = token_ids or []

    def __repr__(self) -> str:
        return f"ChatChunk(reasoning={self.reasoning!r}, content={self.content!r})"


class ChatGeneration:
    """Iterator over ChatChunks; `.message` (role, content, reasoning_content) and `.stats` at the end."""

    def __init__(self, gen: Generation, started_in_think: bool):
        from .reply import ReplyStream

        self.generation = gen
        self._reply = ReplyStream(started_in_think)
        self.reasoning_content = ""
        self.content = ""
        self._it = self._run()

    @property
    def stats(self) -> GenerationStats:
        return self.generation.stats

    @property
    def finish_reason(self) -> str | None:
        return self.generation.finish_reason

    @property
    def message(self) -> dict:
        m = {"role": "assistant", "content": self.content}
        if self.reasoning_content:
            m["reasoning_content"] = self.reasoning_content
        return m

    def __iter__(self):
        return self._it

    def __next__(self) -> ChatChunk:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        self.generation.close()

    def _chunk(self, delta: dict, ids) -> ChatChunk:
        c = ChatChunk(delta.get("reasoning_content", ""), delta.get("content", ""), ids)
        self.reasoning_content += c.reasoning
        self.content += c.content
        return c

    def _run(self) -> Iterator[ChatChunk]:
        for chunk in self.generation:
            delta = self._reply.push(chunk.text)
            if delta:
                yield self._chunk(delta, chunk.token_ids)
        delta = self._reply.flush()
        if delta:
            yield self._chunk(delta, [])
        # The template strips whitespace around reasoning when it re-renders history; do the same.
        self.reasoning_content = self.reasoning_content.strip("\n")
        self.content = self.content.lstrip("\n")


class Model:
    """A loaded qwen35 GGUF model with its tokenizer and chat template.

    >>> m = Model.load("Qwen3.6-27B-Q4_K_M.gguf", n_ctx=8192)
    >>> for chunk in m.generate("The capital of France is", max_tokens=8, temperature=0):
    ...     print(chunk.text, end="")
    """

    def __init__(self, gguf: GGUFFile, core, tokenizer, chat_template, n_ctx: int, kv_type: str, n_batch: int):
        self.gguf = gguf
        self.path = gguf.path
        self.hparams = gguf.hparams
        self.metadata = gguf.metadata
        self._core = core
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.n_batch = n_batch
        self.backend = "cpu"
        self.kv_rotation = True              # quantized KV rows stored rotated (load() sets it)
        from .speculative.policy import SpecConfig

        self.spec = SpecConfig(mode="off")   # set by load(): the default speculative-decoding policy
        self.mtp_states = False              # new states keep an MTP cache (MTP drafting possible)
        self.progress = None                 # default prefill progress callback (forward)

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, n_ctx: int = 4096, threads: int | None = None,
             kv_type: str = "f16", kv_type_v: str | None = None, n_batch: int = 256, backend: str = "auto",
             device: int = 0, spec: str = "auto", draft: int | None = None, rope_scaling: str | None = None,
             rope_scale: float | None = None, yarn_orig_ctx: int | None = None, yarn_ext_factor: float | None = None,
             yarn_attn_factor: float | None = None, yarn_beta_fast: float | None = None,
             yarn_beta_slow: float | None = None, progress=None, kv_rotation: bool | None = None) -> "Model":
        """Open a qwen35 GGUF (None = the built-in demo model) and prepare it for inference.

        n_ctx is the context window of each sequence state (capped at the model's training context, times
        the RoPE scaling factor); kv_type the KV cache's K type and, unless kv_type_v is given, V's:
        'f16' (default, as llama.cpp), 'f32', 'q8_0' or 'q4_0' (pyqwen.kv_cache); n_batch bounds the tokens
        per prefill chunk; rope_scaling ('none', 'linear', 'yarn'), rope_scale (the factor), yarn_orig_ctx,
        yarn_ext_factor, yarn_attn_factor, yarn_beta_fast, yarn_beta_slow override the file's RoPE scaling
        (llama.cpp's names; pyqwen.rope_scaling); kv_rotation: a quantized cache stores Hadamard-rotated
        rows, llama.cpp's default (None: on; both backends store the same rotated rows); progress(done, total) is called between prefill chunks
        of long prompts (return False to cancel: PrefillCancelled); device: the
        CUDA device index for the GPU backend (CUDA_VISIBLE_DEVICES selects and renumbers the devices);
        spec: the default speculative decoding ('auto', 'mtp', 'lookup', 'off'; pyqwen.speculative) and
        draft its MTP draft length, both overridable per generate()/chat() call.
        """
        from .speculative.policy import SpecConfig

        spec_cfg = SpecConfig(mode=spec, **({"draft": draft} if draft is not None else {}))
        spec_cfg.validate()
        from . import _core
        from .backend import CpuCore
        from .chat import BrokenChatTemplate, ChatTemplate
        from .tokenizer import Tokenizer

        from .cuda_backend import select_backend

        if not isinstance(device, int) or device < 0:
            raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
        from dataclasses import replace

        from .kv_cache import kv_spec
        from .rope_scaling import override

        kv_type = kv_spec(kv_type, kv_type_v)
        chosen = select_backend(backend, kv_type, device=device)  # 'auto': cuda if pyqwen._cuda sees the device
        if path is None:
            from .demo import demo_model_path

            path = demo_model_path()
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if n_batch < 1:
            raise ValueError("n_batch must be >= 1")
        gf = GGUFFile.open(path)
        rope = override(gf.hparams.rope_scaling, kind=rope_scaling, factor=rope_scale, orig_ctx=yarn_orig_ctx,
                        ext_factor=yarn_ext_factor, attn_factor=yarn_attn_factor, beta_fast=yarn_beta_fast,
                        beta_slow=yarn_beta_slow, n_ctx_train=gf.hparams.n_ctx_train)
        gf.hparams = replace(gf.hparams, rope_scaling=rope)
        n_ctx = min(n_ctx, gf.hparams.n_ctx_max)
        try:
            if chosen == "cuda":
                from .cuda_backend import CudaCore

                core = CudaCore.from_gguf(gf, n_ctx, n_batch=n_batch, kv_type=kv_type, device=device)
            else:
                # The MTP head is loaded when the file has a usable one (it only serves speculative decoding).
                mtp = gf.mtp_problem() is None
                tensors, keep = gf.core_tensors(mtp=mtp)
                core = CpuCore(_core.Model(gf.hparams.core_config(mtp=mtp), tensors, threads or default_threads(),
                                           (gf.reader, keep)))
        except ValueError as e:
            raise ModelFormatError(f"{gf.path}: {e}") from None
        try:
            tokenizer = Tokenizer.from_metadata(gf.metadata)
        except Exception as e:  # the tokenizers library reports a corrupt vocab as a bare Exception
            raise ModelFormatError(f"{gf.path}: tokenizer metadata invalid: {e}") from None
        if tokenizer.n_vocab != gf.hparams.n_vocab:
            raise ModelFormatError(f"{gf.path}: tokenizer has {tokenizer.n_vocab} tokens, model {gf.hparams.n_vocab}")
        source = gf.metadata.get("tokenizer.chat_template")
        if not isinstance(source, str):
            source = (_DATA / "qwen3.6-chat-template.jinja").read_text()
        try:
            template = ChatTemplate(source)
        except ChatTemplateError as e:
            # A corrupt template must not stop raw completion: load, warn, and let chat fail clearly.
            warnings.warn(f"{gf.path}: tokenizer.chat_template is unusable, chat is disabled: {e}",
                          RuntimeWarning, stacklevel=2)
            template = BrokenChatTemplate(source, e)
        model = cls(gf, core, tokenizer, template, n_ctx, kv_type, n_batch)
        model.backend = chosen
        model.kv_rotation = True if kv_rotation is None else bool(kv_rotation)
        model.progress = progress  # default prefill progress callback (forward)
        model._set_spec(spec_cfg)
        return model

    def _set_spec(self, cfg) -> None:
        from .speculative.policy import resolve_mode

        cfg.mode = resolve_mode(cfg.mode, has_mtp=self.has_mtp, speculation=self.speculation,
                                mtp_problem=self.gguf.mtp_problem())
        self.spec = cfg
        self.mtp_states = self.has_mtp and cfg.mode in ("auto", "mtp")

    def spec_for(self, spec: str | None = None, draft: int | None = None, state=None):
        """The speculative-decoding config of one generation: the model's default, overridden per call,
        resolved against what this model, backend and state can do."""
        from dataclasses import replace

        from .speculative.policy import resolve_mode

        cfg = replace(self.spec, **({"mode": spec} if spec is not None else {}),
                      **({"draft": draft} if draft is not None else {}))
        cfg.validate()
        # A new state gets an MTP cache when the model loaded with MTP drafting; a given one says itself.
        state_mtp = self.mtp_states if state is None else bool(getattr(state, "has_mtp", False))
        cfg.mode = resolve_mode(cfg.mode, has_mtp=self.has_mtp and state_mtp, speculation=self.speculation,
                                mtp_problem=self.gguf.mtp_problem() or
                                ("this state keeps no MTP cache (load with spec='mtp' or 'auto')" if self.has_mtp else None))
        return cfg

    # ---- tokens --------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def tokenize(self, text: str, *, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- low level -----------------------------------------------------------------------------

    def new_state(self, n_ctx: int | None = None, *, mtp: bool | None = None):
        """A fresh sequence state (KV cache + recurrent states). mtp: also keep the MTP head's cache, so
        that generation can draft with it (default: when the model loaded with MTP drafting enabled)."""
        if mtp is None:
            mtp = self.mtp_states
        rot = {} if self.kv_rotation else {"kv_rotation": False}
        if mtp:
            if not self.has_mtp:
                raise ValueError(self.gguf.mtp_problem() or "the MTP head is not loaded on this backend")
            return self._core.new_state(n_ctx or self.n_ctx, self.kv_type, mtp=True, **rot)
        return self._core.new_state(n_ctx or self.n_ctx, self.kv_type, **rot)

    # ---- speculative decoding --------------------------------------------------------------------

    @property
    def has_mtp(self) -> bool:
        """Whether the MTP head is loaded and can draft (the file has one and the backend runs it)."""
        return bool(getattr(self._core, "has_mtp", False))

    @property
    def speculation(self) -> bool:
        """Whether the backend verifies drafted tokens (any speculative decoding at all)."""
        return bool(getattr(self._core, "speculation", False))

    def verify(self, state, tokens: Sequence[int], argmax: bool = False) -> np.ndarray:
        """Feed tokens (the last sampled token, then drafts) as one batch; logits of each [n, n_vocab]
        (argmax=True: only each row's argmax [n], which a GPU computes without sending the rows).
        Follow with rollback(state, n_keep) to keep the accepted prefix."""
        tokens = self._checked_tokens(state, tokens)
        if argmax:
            return self._core.verify(state, tokens, argmax=True)
        return self._core.verify(state, tokens)

    def rollback(self, state, n_keep: int) -> None:
        """After verify(): the state as if only the first n_keep tokens had been fed (bit-identical)."""
        self._core.rollback(state, n_keep)

    @property
    def fused_greedy_spec(self) -> bool:
        """Whether the backend runs a greedy speculative step in one call (verify_greedy, mtp_draft_greedy)."""
        return hasattr(type(self._core), "verify_greedy")

    def verify_greedy(self, state, tokens: Sequence[int]) -> tuple[int, int]:
        """verify() and greedy acceptance in one core call (no penalties: each row's argmax judges the next
        draft; no logits cross to Python): returns (n_acc, next), `next` the model's token after
        tokens[:n_acc + 1]. Follow with rollback(state, n_keep) as after verify()."""
        tokens = [int(t) for t in tokens]
        self._check_room(state, len(tokens))
        return self._core.verify_greedy(state, tokens)

    def mtp_draft_greedy(self, state, token: int, k: int, p_first: float = 0.0, p_min: float = 0.0) -> list[int]:
        """Up to k chained MTP draft steps after `token`, each the argmax of mtp_draft's logits, in one core
        call; the chain stops before a draft whose top softmax probability is below p_first (the first
        draft) or p_min (the others)."""
        return self._core.mtp_draft_greedy(state, int(token), int(k), float(p_first), float(p_min))

    def mtp_draft(self, state, token: int, argmax: bool = False):
        """One MTP draft step: logits [n_vocab] of the token after `token` (see pyqwen.backend), or with
        argmax=True only their argmax (an int)."""
        if not 0 <= int(token) < self.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.n_vocab})")
        if argmax:
            return self._core.mtp_draft(state, int(token), argmax=True)
        return self._core.mtp_draft(state, int(token))

    def eval_mtp(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 [len(tokens) - 1, n_vocab]: row t = the MTP head's draft logits for token t + 2 given
        tokens[0..t+1], from a fresh state."""
        if not self.has_mtp:
            raise ValueError(self.gguf.mtp_problem() or "the MTP head is not loaded on this backend")
        tokens = np.asarray(list(tokens), dtype=np.int64)
        if tokens.ndim != 1 or tokens.size < 2:
            raise ValueError("eval_mtp needs at least two tokens")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.n_vocab})")
        return self._core.eval_mtp(tokens.astype(np.int32))

    def _checked_tokens(self, state, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.n_vocab})")
        self._check_room(state, tokens.size)
        return tokens.astype(np.int32)

    @staticmethod
    def _check_room(state, n: int) -> None:
        if state.pos + n > state.n_ctx:
            raise ContextOverflowError(f"{state.pos} tokens in context + {n} new exceed n_ctx {state.n_ctx}")

    def forward(self, state, tokens: Sequence[int], logits: str = "last", progress=None):
        """Feed tokens into state; returns logits ('last' [n_vocab], 'all' [n, n_vocab]) or None.

        progress(done, total) (default: the one given to load()) is called at the start and after each
        piece of PREFILL_PIECE tokens of a longer feed; returning False stops there with PrefillCancelled, the
        pieces fed staying in the state. Without one, the whole feed is one call into the core (which
        splits it into n_batch chunks itself): the result is the same either way."""
        toks = self._checked_tokens(state, tokens)
        progress = progress if progress is not None else self.progress
        if progress is None or toks.size <= PREFILL_PIECE:  # one piece: not reported
            return self._core.forward(state, toks, logits, self.n_batch)
        total, parts = int(toks.size), []
        progress(0, total)
        for start in range(0, total, PREFILL_PIECE):
            piece = toks[start:start + PREFILL_PIECE]
            last = start + piece.size == total
            out = self._core.forward(state, piece, logits if (last or logits == "all") else "none", self.n_batch)
            if logits == "all":
                parts.append(out)
            if progress(start + int(piece.size), total) is False and not last:
                raise PrefillCancelled(start + int(piece.size), total)
        return np.concatenate(parts) if logits == "all" else out

    def snapshot(self, state, with_kv: bool = False):
        """Checkpoint of the state (recurrent part; KV rows too if with_kv)."""
        return self._core.snapshot(state, with_kv)

    def restore(self, state, snapshot) -> None:
        self._core.restore(state, snapshot)

    @property
    def device_sampling(self) -> bool:
        """True when the backend chooses tokens on its device (decode() returns only the id)."""
        return bool(getattr(self._core, "device_sampling", False))

    def decode(self, state, token: int, params: SamplingParams | None = None, counter: int = 0) -> int:
        """Feed one token and return the next, chosen by params (None = greedy); see pyqwen.backend."""
        return self._core.decode(state, token, params, counter)

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 logits for every position, shape [len(tokens), n_vocab], from a fresh state."""
        tokens = list(tokens)
        state = self.new_state(max(len(tokens), 1), mtp=False)
        return self.forward(state, tokens, logits="all")

    # ---- generation ----------------------------------------------------------------------------

    def _sampling(self, kw: dict) -> SamplingParams:
        names = SamplingParams.__dataclass_fields__
        unknown = set(kw) - set(names)
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        p = SamplingParams(**kw)
        p.stop = list(p.stop or [])
        p.validate()
        return p

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256, state=None,
                 spec: str | None = None, draft: int | None = None, response_format: dict | None = None,
                 grammar=None, **sampling: Any) -> Generation:
        """Stream a continuation of prompt (text, special tokens parsed, or token ids).

        Sampling keywords: temperature, top_k, top_p, min_p, presence_penalty, repetition_penalty,
        penalty_last_n, seed, stop (list of strings). spec/draft: speculative decoding for this call
        (default: the model's, see load()); the output is the same as without it. Iterate for Chunks;
        `.stats` after the end.

        Constrained output (pyqwen.constrain; no speculation then): response_format as OpenAI's
        ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": {...}}}), or grammar:
        GBNF or Lark text (or a pyqwen.constrain.Constraint / compiled Grammar). An invalid one raises
        pyqwen.GrammarError.
        """
        compiled = self._grammar(response_format, grammar)
        return self._generate(prompt, max_tokens, state, spec, draft, compiled, sampling)

    def _grammar(self, response_format, grammar, after_reasoning: bool = False, **tool_fields):
        from .constrain import Grammar, request_constraint

        if isinstance(grammar, Grammar):
            if response_format is not None or tool_fields.get("tool_choice") not in (None, "auto", "none"):
                raise ValueError("give either a compiled grammar or response_format/tool_choice, not both")
            return grammar
        c = request_constraint(response_format=response_format, grammar=grammar, **tool_fields)
        return c.compile(self.tokenizer, after_reasoning=after_reasoning) if c is not None else None

    def _generate(self, prompt, max_tokens, state, spec, draft, compiled, sampling) -> Generation:
        params = self._sampling(sampling)
        spec_cfg = self.spec_for(spec, draft, state)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        if any(t < 0 or t >= self.n_vocab for t in ids):
            raise ValueError(f"token ids must be in [0, {self.n_vocab})")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        state = state if state is not None else self.new_state()
        room = state.n_ctx - len(ids)
        if room < 1:
            raise ContextOverflowError(f"prompt of {len(ids)} tokens does not fit in the context of "
                                       f"{state.n_ctx} tokens (one more is needed to generate)")
        stats = GenerationStats(prompt_tokens=len(ids))
        return Generation(StateSequence(self, state), ids, ids, Sampler(params), min(max_tokens, room),
                          self.tokenizer.eog_ids, params.stop, self.tokenizer.stream_decoder(), stats,
                          spec=spec_cfg, spec_mtp=bool(getattr(state, "has_mtp", False)), grammar=compiled)

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        return self.chat_template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)

    def chat(self, messages: list[dict], *, tools: list[dict] | None = None, max_tokens: int = 1024,
             enable_thinking: bool | None = None, preserve_thinking: bool | None = None,
             sampling: dict | None = None, spec: str | None = None, draft: int | None = None,
             response_format: dict | None = None, grammar=None, tool_choice: Any = None,
             **template_kwargs: Any) -> ChatGeneration:
        """Stream an assistant reply to messages (OpenAI-style dicts) through the chat template.

        Reasoning (inside <think>) and visible content come separately in each ChatChunk.
        response_format / grammar constrain the content after the reasoning (see generate());
        tool_choice "required" or {"type": "function", "function": {"name": ...}} forces a qwen3_coder
        call to one of `tools` with arguments valid under its schema (parse it with
        pyqwen.tool_calls.parse_tool_calls(reply.content, tools)).
        """
        if enable_thinking is not None:
            template_kwargs["enable_thinking"] = enable_thinking
        if preserve_thinking is not None:
            template_kwargs["preserve_thinking"] = preserve_thinking
        prompt = self.render_chat(messages, tools=tools, **template_kwargs)
        started_in_think = prompt.rstrip("\n").endswith("<think>")
        compiled = self._grammar(response_format, grammar, started_in_think, tools=tools, tool_choice=tool_choice)
        gen = self._generate(prompt, max_tokens, None, spec, draft, compiled, sampling or {})
        return ChatGeneration(gen, started_in_think)
