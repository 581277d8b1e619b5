"""Host-side pieces of speculative decoding: the prompt-lookup drafter and the acceptance rule."""

from .accept import accept, accept_greedy, accept_sampled
from .lookup import LookupDrafter

__all__ = ["LookupDrafter", "accept", "accept_greedy", "accept_sampled"]
