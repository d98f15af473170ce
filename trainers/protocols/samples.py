"""The reward server's per-sample path, as the protocols in this package use it.

`Samples.judge` sends each (prompt, response[, label]) where `/get_reward` sends it: pairwise samples into the
prompt groups (held until `group_size` arrived or `group_timeout` passed), `score`, `reference` and `rubric`
samples into the batcher. Every outcome is a number unless `on_failure=retry` (then the route answers 503).

`reward="rubric"`: a sample's label is its rubric (`rubric_labels`): a list of criteria in any format
`reward.rubrics.parse_rubric` reads, or its JSON text; under `rubric_mode="pairwise"` also an object holding the
criteria (`"criteria"` or `"rubric"`) and the anchor answer (`"reference"`; without one the engine's default anchor,
`reward.anchored.ANCHOR`). A label that is not one answers 400
naming the sample and the problem: a broken rubric is the caller's error, never a 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request

from reward.rubrics import parse_rubric
from reward.text import as_text


def rubric_labels(labels: list | None, mode: str, field: str = "labels") -> tuple[list, list | None]:
    """Each sample's parsed rubric from its label, and under `mode="pairwise"` its anchor answer (`None` where the
    label names none: the engine's default anchor), else `None`.

    `field` names the labels in errors (`labels[1]: ...`): an `HTTPException(400)` for a missing or unparsable label.
    """
    if labels is None or any(label is None for label in labels):
        raise HTTPException(400, f"reward rubric reads each sample's rubric from its {field} entry; the request has "
                            "none (OpenRLHF: --label_key)")  # fmt: skip
    rubrics, anchors = [], []
    for i, label in enumerate(labels):
        where = f"{field}[{i}]" if len(labels) > 1 or field == "labels" else field
        try:
            value = json.loads(label) if isinstance(label, str) else label
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"{where}: a rubric given as text must be JSON: {exc}") from None
        if mode == "pairwise":
            anchor = value.get("reference") if isinstance(value, dict) else None
            if anchor is not None and as_text(anchor) is None:
                raise HTTPException(400, f"{where}: the anchor answer under 'reference' must be a non-empty text")
            anchors.append(None if anchor is None else as_text(anchor))
        try:
            rubrics.append(parse_rubric(value))
        except (ValueError, TypeError) as exc:
            raise HTTPException(400, f"{where}: not a rubric: {exc}") from None
    return rubrics, anchors if mode == "pairwise" else None


@dataclass
class Samples:
    """What a protocol needs from the server (built once in `create_app`).

    Args:
        reward: the server's `--reward` (pairwise | score | reference | rubric).
        batcher: the server's `Batcher`.
        answered: `create_app`'s wait for a piece of work (503 / 413 / client gone handled there).
        clean: a response without trailing end-of-sequence tokens.
        pairwise: `create_app`'s path for per-sample pairwise clients (held in prompt groups, retries take over
            their gone twin's place, answered by the deadline).
        deadline_s: the server's `--deadline_s`.
        rubric_mode: the server's `--rubric_mode`.
    """

    reward: str
    batcher: Any
    answered: Callable
    clean: Callable[[str], str]
    pairwise: Callable
    deadline_s: float
    rubric_mode: str = "explicit"

    async def judge(self, request: Request, prompts: list, responses: list[str], labels: list | None = None,
                    field: str = "labels"):  # fmt: skip
        """Each sample's `SampleReward` (the server's record: `reward`, `failed`, `lone`, `group_size`, ...).

        Prompts may be text or chat messages; a prompt without usable text answers 400. In `reference` mode a
        sample whose label has no usable text is a failure (counted, the `on_failure` stand-in); in `rubric` mode
        a label that is not a rubric answers 400 (`rubric_labels`, `field` names the labels in the error)."""
        texts = [as_text(p) for p in prompts]
        for i, text in enumerate(texts):
            if text is None:
                raise HTTPException(400, f"sample {i}: the prompt must be non-empty text or chat messages")
        responses = [self.clean(r) for r in responses]
        n = len(texts)
        if self.reward == "rubric":  # checked before the request counts or anything is queued
            rubrics, anchors = rubric_labels(labels, self.rubric_mode, field)
        self.batcher.stats.requests += 1
        if self.reward == "score":
            work = self.batcher.submit("score", (texts, responses), n)
        elif self.reward == "reference":
            references = [as_text(label) for label in (labels or [None] * n)]
            work = self.batcher.submit("reference", (texts, responses, references), n)
        elif self.reward == "rubric":
            work = self.batcher.submit("rubric", (texts, responses, rubrics, anchors or [None] * n), n)
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
