"""Judge backends: whatever can say how likely the judge is to write each label at the end of a prompt.

One small Protocol keeps `reward.Judge` independent of where the model runs (local transformers model here;
DeepSpeed shards or a remote server plug in the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class JudgeBackend(Protocol):
    """What `reward.Judge` needs from a model.

    Attributes:
        tokenizer: a transformers tokenizer (chat template, token counts for truncation).
        max_length: the most tokens one judge prompt may hold, the judge's answer included.
        chat: optional, `True` for a backend that takes chat messages: its prompts are then lists of
            {"role", "content"} ending with the unfinished assistant turn (the slot) instead of rendered text.
    """

    tokenizer: Any
    max_length: int

    def label_logprobs(self, prompts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        """For each prompt (already ending at the slot), log P(the judge writes exactly `label` next).

        "Exactly" means the label's tokens followed by a token that does not continue it (not a letter or digit),
        so P("4") on a 1-100 scale does not absorb "47". Impossible labels get `-inf`.
        """
        ...

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]
    ) -> list[tuple[str, float, int]]:
        """Greedy continuation of each prompt until a stop string or EOS: (text, sum of log-probs, token count)."""
        ...
