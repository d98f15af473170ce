"""Judge backends: whatever can say how likely the judge is to write each label at the end of a prompt.

One small Protocol keeps `reward.Judge` independent of where the model runs (local transformers model here;
DeepSpeed shards or a remote server plug in the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class JudgeBackend(Protocol):
    """Everything `reward.Judge` reads from a model, declared once.

    A backend subclasses this Protocol to inherit the defaults of `chat`, `lockstep`, `exact_reads` and `agree` (a
    plain local backend needs none of them); `Judge` checks that every member is there when it is built.

    Attributes:
        tokenizer: a transformers tokenizer (chat template, token counts for truncation).
        max_length: the most tokens one judge prompt may hold, the judge's answer included.
        chat: `True` for a backend that takes chat messages: its prompts are then lists of {"role", "content"}
            ending with the unfinished assistant turn (the slot) instead of rendered text.
        lockstep: `True` when every process must make the same backend calls (a ZeRO-3 sharded model: each
            forward is a collective). `Judge` then makes its call count agree across processes (`agree`), even
            when this process has nothing to judge.
        exact_reads: `False` when label probabilities are read as lower bounds (a served judge's top-k read):
            `Judge` then flags `valid_mass` as a bound (`valid_mass_exact`).
    """

    tokenizer: Any
    max_length: int
    chat: bool = False
    lockstep: bool = False
    exact_reads: bool = True

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

    def agree(self, count: int, error: str | None = None) -> int:
        """The number of calls every process makes: the largest `count` of all of them (lockstep backends).

        `error`: this process failed before its calls (a message); a lockstep backend raises it on every process
        so that none waits forever in a collective. A backend that is not lockstep has nothing to agree with.
        """
        if error is not None:
            raise RuntimeError(error)
        return count


MEMBERS = ("tokenizer", "max_length", "chat", "lockstep", "label_logprobs", "generate", "agree")


def check_backend(backend) -> None:
    """Raises `TypeError` naming what `backend` lacks of the `JudgeBackend` contract (subclass it for defaults)."""
    missing = [m for m in MEMBERS if not hasattr(backend, m)]
    if missing:
        raise TypeError(
            f"{type(backend).__name__} is not a JudgeBackend: it lacks {', '.join(missing)} (subclass "
            "reward.backends.JudgeBackend to inherit the defaults of chat, lockstep and agree)"
        )
