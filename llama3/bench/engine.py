"""What every engine under the benchmark provides: one timed greedy run, from which prefill and
decode figures are read the same way for all of them."""

from __future__ import annotations


class TimedEngine:
    name: str
    label: str
    #: bytes of weights one decoded token reads
    weight_bytes: int

    def _stamps(self, prompts: list[list[int]], new_tokens: int) -> list[float]:
        """Seconds from the call to each step's tokens (greedy, never stopping early)."""
        raise NotImplementedError

    def prefill(self, prompt: list[int]) -> float:
        """Seconds to the first token of `prompt`."""
        return self._stamps([prompt], 1)[0]

    def decode(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
        """(seconds to the first tokens, seconds for the remaining `new_tokens - 1` steps)."""
        s = self._stamps(prompts, new_tokens)
        return s[0], s[-1] - s[0]
