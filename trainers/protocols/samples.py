"""The reward server's per-sample path, as the protocols in this package use it.

`Samples.judge` sends each (prompt, response[, reference]) where `/get_reward` sends it: pairwise samples into the
prompt groups (held until `group_size` arrived or `group_timeout` passed), `score` and `reference` samples into
the batcher. Every outcome is a number unless `on_failure=retry` (then the route answers 503).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request

from reward.text import as_text


@dataclass
class Samples:
    """What a protocol needs from the server (built once in `create_app`).

    Args:
        reward: the server's `--reward` (pairwise | score | reference).
        batcher: the server's `Batcher`.
        answered: `create_app`'s wait for a piece of work (503 / 413 / client gone handled there).
        clean: a response without trailing end-of-sequence tokens.
        pairwise: `create_app`'s path for per-sample pairwise clients (held in prompt groups, retries take over
            their gone twin's place, answered by the deadline).
        deadline_s: the server's `--deadline_s`.
    """

    reward: str
    batcher: Any
    answered: Callable
    clean: Callable[[str], str]
    pairwise: Callable
    deadline_s: float

    async def judge(self, request: Request, prompts: list, responses: list[str], labels: list | None = None):
        """Each sample's `SampleReward` (the server's record: `reward`, `failed`, `lone`, `group_size`, ...).

        Prompts may be text or chat messages; a prompt without usable text answers 400. In `reference` mode a
        sample whose label has no usable text is a failure (counted, the `on_failure` stand-in)."""
        texts = [as_text(p) for p in prompts]
        for i, text in enumerate(texts):
            if text is None:
                raise HTTPException(400, f"sample {i}: the prompt must be non-empty text or chat messages")
        responses = [self.clean(r) for r in responses]
        self.batcher.stats.requests += 1
        n = len(texts)
        if self.reward == "score":
            work = self.batcher.submit("score", (texts, responses), n)
        elif self.reward == "reference":
            references = [as_text(label) for label in (labels or [None] * n)]
            work = self.batcher.submit("reference", (texts, responses, references), n)
        else:  # a sample's identity for retries: its prompt and response
            queries = [t + "\x00" + r for t, r in zip(texts, responses)]
            return await self.pairwise(request, texts, queries, responses, time.monotonic() + self.deadline_s)
        return await self.answered(request, work)

    async def judge_group(self, request: Request, prompt, responses: list[str]):
        """Each response's `SampleReward`, the responses judged together now as one pairwise group (never held)."""
        text = as_text(prompt)
        if text is None:
            raise HTTPException(400, "the prompt must be non-empty text or chat messages")
        responses = [self.clean(r) for r in responses]
        self.batcher.stats.requests += 1
        return await self.answered(request, self.batcher.submit("group", (text, responses, False), len(responses)))
