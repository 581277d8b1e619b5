"""Which drafter proposes the next tokens, and how many: the speculative-decoding policy of one generation.

Modes (`--spec`, `Model.generate(spec=...)`):
- off     plain decoding, one forward per token;
- mtp     the model's multi-token-prediction head drafts, chained token by token (needs a file with one);
- lookup  prompt lookup: the continuation of the latest earlier occurrence of the text's last n-gram
          (no weights; agents and code repeat long spans of their context);
- auto    lookup where a long match exists (it is free and often right for many tokens), else MTP when
          the file has a head, else lookup.
Verification then accepts the longest prefix the main model agrees with (pyqwen.speculative.accept), so
the output is what plain decoding gives: the same tokens when greedy, the same distribution otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPEC_MODES = ("off", "auto", "mtp", "lookup")
MAX_DRAFT = 15  # a verification feeds at most 16 tokens (csrc/common/model_spec.h kMaxVerifyTokens)
# MTP draft length of --spec mtp without --draft: the best of the 27B projection (benchmarks/verify_cost.py:
# CPU 1.6x at k=2, 4090/5090 1.76x at 2, 1.8x at 3), where a verification streams the weights once.
MTP_DRAFT = 2
# --spec auto without --draft: an adaptive chain, up to AUTO_DRAFT deep, stopping before a draft whose top
# probability is below AUTO_P_MIN. On the trained demo model (held-out code / prose, MTP 4 deep, the
# acceptance of a draft whose predecessors were accepted, by the head's top probability): the second
# draft at >= 0.4 98-100 %, below 0.2 16-23 %; the third 31-100 % (few samples) against 18-34 %. With
# the measured verify costs the cut chain matches k = 1 where verifying 2 tokens costs 1.6x a step and
# beats it by 6-9 % where it costs 1.45x, and beats k = 2..4 at both; inside auto (lookup first) it
# measured 1.30x / 1.30x against auto with k = 2's 1.22x / 1.21x (benchmarks/spec_breakdown.py).
AUTO_DRAFT = 4
AUTO_P_MIN = 0.4


@dataclass
class SpecConfig:
    mode: str = "auto"
    draft: int | None = None     # MTP draft length k; None: the mode's default (MTP_DRAFT, or for auto
                                 # AUTO_DRAFT with the adaptive stop at AUTO_P_MIN)
    lookup_draft: int = 8        # up to this many tokens from a lookup match (one verify checks them all)
    lookup_min_match: int = 3    # auto: an n-gram match this long makes lookup the drafter
    # Adaptive MTP depth: the chain stops before a draft whose own top softmax probability is below p_first
    # (the first draft: then the step decodes plainly) or p_min (the later ones). Any stopping rule that
    # looks only at the drafts keeps the output exact (verification decides; sampled drafts keep their q).
    p_first: float = 0.0
    p_min: float = 0.0

    def validate(self) -> None:
        if self.mode not in SPEC_MODES:
            raise ValueError(f"spec must be one of {', '.join(SPEC_MODES)}, got {self.mode!r}")
        for name in ("draft", "lookup_draft"):
            v = getattr(self, name)
            if name == "draft" and v is None:
                continue
            if not isinstance(v, int) or not 1 <= v <= MAX_DRAFT:
                raise ValueError(f"{name} must be an integer in 1..{MAX_DRAFT}, got {v!r}")
        for name in ("p_first", "p_min"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")


    def mtp_depth(self) -> int:
        """The MTP chain's length limit."""
        if self.draft is not None:
            return self.draft
        return AUTO_DRAFT if self.mode == "auto" else MTP_DRAFT

    def stop_thresholds(self) -> tuple[float, float]:
        """(p_first, p_min) of the adaptive chain: as set, or auto's default when neither it nor the depth
        was given."""
        if self.mode == "auto" and self.draft is None and self.p_first == 0.0 and self.p_min == 0.0:
            return 0.0, AUTO_P_MIN
        return self.p_first, self.p_min


def add_spec_args(parser) -> None:
    """--spec and --draft, the same for generate, chat and serve (llama.cpp's draft-length names too)."""
    g = parser.add_argument_group("speculative decoding (exact: the same output as plain decoding)")
    g.add_argument("--spec", choices=SPEC_MODES, default="auto",
                   help="drafter: the MTP head, prompt lookup, auto (lookup on long matches, else MTP) or off "
                        "(default auto; a file without an MTP head then uses lookup)")
    g.add_argument("--draft", "--draft-max", "--spec-draft-n-max", dest="draft", type=int, default=None,
                   metavar="K", help=f"MTP draft length, 1..{MAX_DRAFT} (default: {MTP_DRAFT} for mtp; for auto up to "
                        f"{AUTO_DRAFT}, stopping where the head's top probability is below {AUTO_P_MIN})")


def resolve_mode(mode: str, *, has_mtp: bool, speculation: bool, mtp_problem: str | None = None) -> str:
    """The mode a model can run: 'mtp' on a model without a head is an error (it was asked for by name);
    'auto' degrades quietly to what exists; any mode is 'off' where the backend cannot verify."""
    if mode not in SPEC_MODES:
        raise ValueError(f"spec must be one of {', '.join(SPEC_MODES)}, got {mode!r}")
    if mode == "mtp" and not has_mtp:
        raise ValueError(f"--spec mtp: {mtp_problem or 'the model has no usable MTP head'}")
    if not speculation:
        if mode in ("mtp", "lookup"):
            raise ValueError(f"--spec {mode}: this backend does not verify drafts yet (use the CPU backend)")
        return "off"
    return mode


class Drafter:
    """Proposes drafts for one generation over a Sequence (pyqwen.generation): MTP steps through
    seq.mtp_draft, lookup from the token history it is shown."""

    def __init__(self, cfg: SpecConfig, seq, sampler, history: list[int], use_mtp: bool):
        self.cfg = cfg
        self._seq = seq
        self._sampler = sampler
        self._use_mtp = use_mtp and cfg.mode in ("auto", "mtp")
        self._lookup = None
        if cfg.mode in ("auto", "lookup"):
            from .lookup import LookupDrafter

            self._lookup = LookupDrafter()
        if self._lookup is not None:
            self._lookup.extend(history)
        self._seen = len(history)

    def observe(self, history: list[int]) -> None:
        """Tell the lookup index about the tokens appended to history since the last call."""
        if self._lookup is not None and len(history) > self._seen:
            self._lookup.extend(history[self._seen:])
        self._seen = len(history)

    def propose(self, token: int, history: list[int], limit: int) -> tuple[str, list[int], list | None]:
        """(source, drafts, q) for at most `limit` tokens after `token` (the last one sampled, not fed yet;
        it is history[-1]). q: per draft the distribution it was drawn from, as (ids, probs), for the
        stochastic acceptance; None for deterministic drafts (greedy MTP, lookup)."""
        self.observe(history)
        if self._lookup is not None:
            d = self._lookup.draft(min(self.cfg.lookup_draft, limit))
            if d and (not self._use_mtp or self._lookup.match_len >= self.cfg.lookup_min_match):
                return "lookup", d, None
        if not self._use_mtp:
            return "none", [], None
        greedy = self._sampler.params.greedy
        p_first, p_min = self.cfg.stop_thresholds()
        device = bool(getattr(self._seq, "device_sampling", False))
        if greedy and device and self.cfg.p_first == 0.0 and self.cfg.p_min == 0.0:
            p_first = p_min = 0.0   # auto's default stop needs logits on the host: a device keeps its argmax chain
        adaptive = p_first > 0.0 or p_min > 0.0
        # greedy drafts on a device-sampling backend: the argmax is taken where the logits are
        on_device = greedy and not adaptive and device
        n = min(self.cfg.mtp_depth(), limit)
        if greedy and not on_device and getattr(self._seq, "fused_greedy_spec", False):
            # the whole greedy chain in one core call (the same argmax and stopping rule as below)
            return "mtp", self._seq.mtp_draft_greedy(token, n, p_first, p_min), None
        drafts: list[int] = []
        qs: list | None = None if greedy else []
        tok = token
        for i in range(n):
            if on_device:
                drafts.append(int(self._seq.mtp_draft(tok, argmax=True)))
                tok = drafts[-1]
                continue
            logits = self._seq.mtp_draft(tok)
            p_stop = p_first if i == 0 else p_min
            if p_stop > 0.0 and _top_prob(logits) < p_stop:
                break       # the head is unsure of this draft: verify what there is
            if greedy:
                nxt = int(np.argmax(logits))
            else:
                ids, probs = self._sampler.distribution(logits, history + drafts)
                nxt = int(ids[self._sampler.rng.choice(len(ids), p=probs)])
                qs.append((ids, probs))
            drafts.append(nxt)
            tok = nxt
        return "mtp", drafts, qs


def _top_prob(logits: np.ndarray) -> float:
    x = np.asarray(logits, dtype=np.float64)
    return float(1.0 / np.exp(x - x.max()).sum())
