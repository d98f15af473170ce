"""Prompt datasets for the recipes: the bundled MT-Bench questions, or the user's own file."""

from __future__ import annotations

import json
from pathlib import Path

MT_BENCH_DIR = Path(__file__).parent / "data" / "mt_bench"


def mt_bench_rows() -> list[dict]:
    """The 80 MT-Bench first-turn questions; `reference` holds GPT-4's answer where FastChat has one, else None."""
    references = {}
    for line in (MT_BENCH_DIR / "reference_answer_gpt-4.jsonl").read_text().splitlines():
        row = json.loads(line)
        references[row["question_id"]] = row["choices"][0]["turns"][0]
    rows = []
    for line in (MT_BENCH_DIR / "question.jsonl").read_text().splitlines():
        q = json.loads(line)
        rows.append(
            {
                "question_id": q["question_id"],
                "category": q["category"],
                "question": q["turns"][0],
                "reference": references.get(q["question_id"]),
            }
        )
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is an error naming the line."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def prompt_dataset(source: str = "mt_bench", max_prompts: int | None = None, conversational: bool = True):
    """A `datasets.Dataset` with a `prompt` column (plus the source's other columns) for GRPO.

    Args:
        source: "mt_bench", or a JSONL file with a `prompt` (or `question`) column.
        max_prompts: keep the first N rows.
        conversational: wrap each prompt as `[{"role": "user", "content": ...}]` so the policy's chat template applies.
    """
    from datasets import Dataset

    rows = mt_bench_rows() if source == "mt_bench" else read_jsonl(source)
    if max_prompts is not None:
        rows = rows[:max_prompts]
    if not rows:
        raise ValueError(f"no prompts in {source!r}")
    out = []
    for n, row in enumerate(rows):
        text = row.get("prompt", row.get("question"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: row {n} has no usable 'prompt' or 'question' text")
        row = {k: v for k, v in row.items() if k not in ("prompt", "question")}
        out.append({"prompt": [{"role": "user", "content": text}] if conversational else text, **row})
    return Dataset.from_list(out)
