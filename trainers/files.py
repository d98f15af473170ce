"""Reading and writing row files: JSONL (an error names the line), Parquet, `save_to_disk` folders; atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


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
