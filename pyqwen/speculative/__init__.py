"""Speculative decoding: drafters (the MTP head, prompt lookup), the policy that picks one, and the
acceptance rule that keeps the output exactly that of plain decoding. The model side (verify, rollback,
mtp_draft) is in the backends (pyqwen.backend); the loop is pyqwen.generation's."""

from .accept import accept, accept_greedy, accept_sampled
from .lookup import LookupDrafter
from .policy import SPEC_MODES, SpecConfig

__all__ = ["LookupDrafter", "SPEC_MODES", "SpecConfig", "accept", "accept_greedy", "accept_sampled"]
