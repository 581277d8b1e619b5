"""A progress bar for long prefills on a terminal (the CLI's generate and chat): silent for short
prompts, a tqdm bar on stderr once a prefill has run for a couple of seconds."""

from __future__ import annotations

import sys
import time

SHOW_AFTER_S = 2.0


class PrefillBar:
    """A Model progress callback (Model.load(progress=...), Model.forward(progress=...))."""

    def __init__(self, stream=None, show_after_s: float = SHOW_AFTER_S):
        self.stream = stream if stream is not None else sys.stderr
        self.show_after_s = show_after_s
        self._t0 = None
        self._bar = None

    def __call__(self, done: int, total: int) -> bool:
        now = time.monotonic()
        if self._t0 is None or done <= 0:
            self._t0 = now
        if self._bar is None and done < total and now - self._t0 >= self.show_after_s:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=0, unit="tok", desc="prefill", file=self.stream, leave=False,
                             dynamic_ncols=True)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
                self._bar = None
        if done >= total:
            self._t0 = None
        return True
