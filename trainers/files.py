"""Reading and writing row files: JSONL (an error names the line), Parquet, `save_to_disk` folders; atomic writes.

Values JSON has no type for are written as text: binary cells as base64, dates and others as `str()`. A string
holding a lone surrogate (a cut emoji, `"\\ud83d"` in the input) is written as that escape in JSONL (it reads back
the same), and as U+FFFD in Parquet, which can only hold valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from .args import UserError

_SURROGATE = re.compile("[\ud800-\udfff]")  # in a decoded str only a lone one is left (pairs are combined)


def _default(value):
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_default)
_ASCII = json.JSONEncoder(ensure_ascii=True, default=_default)


def json_line(record) -> bytes:
    """One JSONL line (with its newline): UTF-8, or with `\\u` escapes where a string holds a lone surrogate."""
    text = _ENCODER.encode(record)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return _ASCII.encode(record).encode("ascii") + b"\n"


def _fix_text(value, count: list[int]):
    if isinstance(value, str):
        fixed, n = _SURROGATE.subn("\ufffd", value)
        count[0] += bool(n)
        return fixed
    if isinstance(value, dict):
        return {_fix_text(k, count): _fix_text(v, count) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_text(v, count) for v in value]
    return value


def arrow_rows(rows: list[dict], where: str):
    """`rows` as a `datasets.Dataset`, lone surrogates replaced by U+FFFD (counted on stderr); a column Arrow cannot
    type (an int in one row, a string in another) is an error naming it and two of its rows."""
    import sys

    import pyarrow as pa
    from datasets import Dataset

    errors = (pa.ArrowException, TypeError, ValueError, OverflowError)
    names = list(dict.fromkeys(k for row in rows for k in row))  # every row's columns (from_list: the first's)
    try:
        return Dataset.from_dict({k: [row.get(k) for row in rows] for k in names})
    except UnicodeEncodeError:  # a lone surrogate: Arrow strings are UTF-8
        count, fixed = [0], []
        for row in rows:
            before = count[0]
            fixed.append(_fix_text(row, count))
            count[0] = before + (count[0] > before)  # rows, not strings
        rows = fixed
        print(f"{where}: {count[0]} rows hold lone surrogates (broken characters), written as U+FFFD; "
              "JSONL keeps them as \\u escapes", file=sys.stderr)  # fmt: skip
    except errors as exc:
        raise UserError(f"{where}: {column_problem(rows) or exc}") from None
    try:
        return Dataset.from_dict({k: [row.get(k) for row in rows] for k in names})
    except errors as exc:
        raise UserError(f"{where}: {column_problem(rows) or exc}") from None


def column_problem(rows: list[dict], numbers: list[int] | None = None) -> str | None:
    """Why Arrow cannot make a table of `rows` (a column whose values differ in type), or None if it can;
    `numbers`: the input row number of each of `rows` (default: its position)."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for row in rows for k in row))
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            pa.array(_fix_text(values, [0]))  # lone surrogates become U+FFFD on writing: no problem here
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            kinds = {}
            for i, v in enumerate(values):
                if v is not None:
                    kinds.setdefault(type(v).__name__, i)
            shown = ", ".join(f"{k} in row {numbers[i] if numbers else i}" for k, i in list(kinds.items())[:2])
            return (f"column {name!r} mixes types ({shown}): Parquet holds one type per column; write JSONL "
                    "(.jsonl) or give the column one type")  # fmt: skip
    return None


MAX_DEPTH = 256  # JSON nesting read at most: json.loads recurses (~1000 levels), pyarrow's reader crashes (~20,000)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(line: bytes) -> int | None:
    """The nesting depth of a JSON line if it is over `MAX_DEPTH`, else None (counted only for lines with many
    brackets, outside strings)."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return None
    depth = top = 0
    for c in _STRING.sub(b"", line).translate(None, _NOT_BRACKETS):
        depth += 1 if c in (0x5B, 0x7B) else -1
        top = max(top, depth)
    return top if top > MAX_DEPTH else None


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is an error naming the line."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # a UTF-8 BOM is no part of the first row
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            depth = too_deep(line.encode("utf-8", "surrogatepass"))
            if depth:
                raise ValueError(f"{path}:{n}: JSON nested {depth} levels deep (at most {MAX_DEPTH})")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def open_dataset(path: Path, split: str | None = None):
    """A Parquet file or a `save_to_disk` folder as a `datasets.Dataset` (Parquet memory-mapped): `(dataset, split)`,
    `split` naming the split taken from a saved `DatasetDict` (which needs `split` unless it has only one), else
    `None`. The one reader of both formats (`read_rows`, and the dataset commands' `shards.Source`)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if not path.is_dir():
        import pyarrow.parquet as pq

        try:
            return Dataset(pq.read_table(path, memory_map=True)), None
        except Exception as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        data = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for "not a saved dataset"
        raise UserError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(data, DatasetDict):
        if split is None and len(data) != 1:
            raise UserError(f"{path}: a DatasetDict with splits {list(data)}; pass --split")
        split = split or next(iter(data))
        if split not in data:
            raise UserError(f"{path}: no split {split!r} (has {list(data)})")
        return data[split], split
    return data, None


def read_rows(path: str | Path, split: str | None = None):
    """Reads a JSONL file (a list of dicts), a Parquet file or a `save_to_disk` directory (a `datasets.Dataset`).

    Returns:
        `(rows, split)`: `split` names the split taken from a saved `DatasetDict` (see `open_dataset`), else `None`.
        Errors name the file (and the line, for JSONL).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return open_dataset(path, split)
    return read_jsonl(path), None


def write_jsonl(path: str | Path, rows) -> None:
    """Writes rows as JSONL, atomically: the dataset commands' `OutputSet` (private temporary, renamed when done)."""
    from .data.outputs import OutputSet

    with OutputSet({"output": path}) as out:
        f = out.open("output")
        for row in rows:
            f.write(json_line(row))
        out.commit()


class Failsafe:
    """A file for pyarrow's Parquet writer, which aborts the whole process (SIGABRT, temporary files left behind)
    when a write fails, e.g. on a full disk: the first error is kept and later writes dropped; `check()` raises it."""

    def __init__(self, f):
        self.f, self.error, self.pos = f, None, 0

    def write(self, data) -> int:
        n = len(memoryview(data))
        if self.error is None:
            try:
                self.f.write(data)
            except OSError as exc:
                self.error = exc
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        if self.error is None:
            try:
                self.f.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        self.flush()

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def check(self) -> None:
        self.flush()
        if self.error is not None:
            raise self.error
