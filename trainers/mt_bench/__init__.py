"""The bundled MT-Bench prompts (FastChat, Apache-2.0: see README.md here) and GRPO prompt datasets."""

from __future__ import annotations

import json
from pathlib import Path

MT_BENCH_DIR = Path(__file__).parent


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


def rubric_rows() -> list[dict]:
    """The MT-Bench questions that have a rubric in `rubrics.jsonl` (12: 10 with a GPT-4 reference, 2 writing
    prompts without), as rows with `question_id`, `category`, `question`, `reference` (or None) and `rubric` (RaR's
    format: a title and a "Category Criteria: ..." description per item; the weights follow the categories)."""
    rubrics = {}
    for line in (MT_BENCH_DIR / "rubrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rubrics[row["question_id"]] = row["rubric"]
    return [{**row, "rubric": rubrics[row["question_id"]]} for row in mt_bench_rows() if row["question_id"] in rubrics]


def mt_bench_candidates(seed: int = 0, max_words: int | None = None) -> list[dict]:
    """For each MT-Bench question with a GPT-4 reference, 4 answers of known relative quality.

    `reference` (the GPT-4 answer), `truncated` (its first third), `off_topic` (another question's reference),
    `shuffled` (its words in random order): the reference should beat the three others. `max_words` cuts every
    answer (keeps sequences short for CPU experiments); references under 6 words are skipped (their truncation
    would be the same text). Returns `{"question", "category", "answers": {name: text}}`.
    """
    import random

    rng = random.Random(seed)
    rows = [r for r in mt_bench_rows() if r["reference"]]
    out = []
    for i, row in enumerate(rows):
        words = row["reference"].split()[:max_words]  # cut first, so the truncated answer stays shorter
        if len(words) < 6:  # too short to truncate into a different answer ("3", "Yes.")
            continue
        shuffled = words[:]
        rng.shuffle(shuffled)
        answers = {
            "reference": words,
            "truncated": words[: max(3, len(words) // 3)],
            "off_topic": rows[(i + len(rows) // 2) % len(rows)]["reference"].split()[:max_words],
            "shuffled": shuffled,
        }
        answers = {k: " ".join(v) for k, v in answers.items()}
        out.append({"question": row["question"], "category": row["category"], "answers": answers})
    return out


def prompt_dataset(source: str = "mt_bench", max_prompts: int | None = None, conversational: bool = True):
    """A `datasets.Dataset` with a `prompt` column (plus the source's other columns) for GRPO.

    Args:
        source: "mt_bench", "mt_bench_rubrics" (the 12 questions with a rubric: `rubric_rows`; the rubric column
            as JSON text, one schema for every row), or a JSONL file with a `prompt` (or `question`) column.
        max_prompts: keep the first N rows.
        conversational: wrap each prompt as `[{"role": "user", "content": ...}]` so the policy's chat template applies.
    """
    from datasets import Dataset

    if source == "mt_bench":
        rows = mt_bench_rows()
    elif source == "mt_bench_rubrics":
        rows = [{**row, "rubric": json.dumps(row["rubric"])} for row in rubric_rows()]
    else:
        from ..files import read_jsonl

        rows = read_jsonl(source)
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
