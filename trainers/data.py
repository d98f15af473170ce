"""Data in and out: the bundled MT-Bench prompts, JSONL / Parquet / saved datasets, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is an error naming the line."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # a UTF-8 BOM is no part of the first row
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


def read_rows(path: str | Path, split: str | None = None):
    """Reads a JSONL file (a list of dicts), a Parquet file or a `save_to_disk` directory (a `datasets.Dataset`).

    Returns:
        `(rows, split)`: `split` names the split taken from a saved `DatasetDict` (which needs `split` unless it has
        only one), else `None`. Errors name the file (and the line, for JSONL).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            data = load_from_disk(str(path))
        except Exception as exc:  # datasets raises several types for "not a saved dataset"
            raise ValueError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
        if isinstance(data, DatasetDict):
            if split is None and len(data) != 1:
                raise ValueError(f"{path}: a DatasetDict with splits {list(data)}; pass --split")
            split = split or next(iter(data))
            if split not in data:
                raise ValueError(f"{path}: no split {split!r} (has {list(data)})")
            return data[split], split
        return data, None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        from datasets import Dataset

        try:
            return Dataset(pq.read_table(path)), None
        except Exception as exc:
            raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    return read_jsonl(path), None


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path next to `path`; renamed onto `path` only if the block succeeds.

    So an interrupted run never leaves a half-written file (or `save_to_disk` directory) that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.exists():  # a directory cannot be renamed over a non-empty one
            aside = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(aside)
            tmp.rename(path)
            shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_jsonl(path: str | Path, rows) -> None:
    """Writes rows as JSONL, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def row_format(path: str | Path) -> str:
    """`dataset` (a `save_to_disk` directory), `parquet` or `jsonl`: how `read_rows` reads `path`."""
    path = Path(path)
    return "dataset" if path.is_dir() else "parquet" if path.suffix == ".parquet" else "jsonl"


def write_rows(path: str | Path, rows, fmt: str, split: str | None = None) -> None:
    """Writes rows (a list of dicts, or a `Dataset`) atomically as `fmt` (see `row_format`).

    `split`: for a `dataset`, save a `DatasetDict` with this one split (the input was a `DatasetDict`).
    """
    if fmt == "jsonl":
        write_jsonl(path, rows)
        return
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            rows.to_parquet(str(tmp))
        else:
            from datasets import DatasetDict

            (DatasetDict({split: rows}) if split else rows).save_to_disk(str(tmp))
