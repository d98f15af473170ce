"""Preference files at dataset scale: read in blocks, partitioned by a hash of the prompt, cleaned shard by shard.

Cleaning and auditing only ever compare rows of the same prompt, so the rows of one prompt-hash partition are
cleaned exactly as within the whole file: a shard needs the memory of its own rows, shards can run in parallel
(`--num_proc`) or anywhere a scheduler puts them (`--shard I/N`, then `trustreward merge`), and the merged result
equals a one-shot run (counts added, ratios recomputed). Row indices are positions in the whole input (blank
JSONL lines are skipped and not counted). Kept rows are copied from the input: JSONL lines byte for byte.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from array import array
from pathlib import Path

import numpy as np

from ..args import UserError
from ..files import MAX_DEPTH, Failsafe, arrow_rows, json_line, open_dataset, too_deep

BLOCK_BYTES = 4 << 20  # JSONL read size: whole lines of about this many bytes (16 MB held ~80 MB more at peak)
BATCH_ROWS = 65536  # Arrow record batch size for Parquet / saved datasets


def prompt_shard(key: str | None, row_index: int, n: int) -> int:
    """The shard of a row: a stable hash of its prompt (`text_key`), the same on every machine and run.

    A row without a prompt is rejected on its own, so any shard will do: its index decides.
    """
    if n == 1:
        return 0
    if key is None:
        return row_index % n
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def _prompt_key(row) -> str | None:
    from reward.consistency.rows import BadRow, parse_row
    from reward.text import text_key

    if not isinstance(row, dict):
        return None
    prompt = row.get("prompt")
    if prompt is None and ("chosen" in row or "rejected" in row):
        try:
            prompt = parse_row(row, need_label=False).prompt  # TRL's implicit prompt
        except BadRow:
            return None
    try:
        return None if prompt is None else text_key(prompt)
    except TypeError:  # not JSON-serialisable: the row is rejected on its own
        return None


def _keys_of_column(column) -> list | None:
    """Prompt keys of an Arrow column of plain strings without nulls (dictionary-encoded: one hash per prompt)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reward.consistency.rows import arrow_numpy

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or column.null_count:
        return None
    if hasattr(column, "chunks"):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    return encoded.dictionary.to_pylist(), arrow_numpy(encoded.indices)  # not to_numpy: it imports pandas (1 s)


def input_format(path: Path) -> str:
    return "dataset" if path.is_dir() else "parquet" if path.suffix.lower() == ".parquet" else "jsonl"


class Source:
    """An input file or folder read in blocks; `digest` (its content's hash) is set after a full pass."""

    def __init__(self, path: str | Path, split: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: no such file or directory")
        self.format = input_format(self.path)
        if (
            self.format == "dataset"
            and not (self.path / "dataset_info.json").exists()
            and not (self.path / "dataset_dict.json").exists()
        ):
            raise UserError(f"{self.path}: a folder, but not a dataset saved with save_to_disk")
        self.split = split
        self.digest = None
        self._dataset = None

    def stat(self) -> tuple[int, int]:
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        stats = [p.stat() for p in files]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)

    def fingerprint(self) -> dict:
        return {"format": self.format, "bytes": self.stat()[0], "blake2b": self.digest}

    def all_rows(self) -> list[dict]:
        """Every row as a dict (`score` / `compare` read whole files; so did `audit` / `clean` below one shard)."""
        rows = []
        for block in self.blocks():
            rows.extend(block.dicts())
        return rows

    # -- blocks of rows: `_JsonlBlock` (raw lines) or `_ArrowBlock` (a table slice), with their first row index
    def blocks(self):
        if self.format == "jsonl":
            yield from self._jsonl_blocks()
        else:
            yield from self._arrow_blocks()

    def _jsonl_blocks(self):
        h = hashlib.blake2b(digest_size=16)
        first_row, first_line, rest = 0, 1, b""
        with open(self.path, "rb") as f:
            start, left = True, os.fstat(f.fileno()).st_size  # what grows meanwhile is no part of this read
            while True:
                chunk = f.read(min(BLOCK_BYTES, left))
                left -= len(chunk)
                h.update(chunk)
                if start:
                    chunk, start = chunk.removeprefix(b"\xef\xbb\xbf"), False  # a UTF-8 BOM
                data = rest + chunk
                if not chunk:
                    if not data:
                        break
                    lines, rest = data.split(b"\n"), b""
                else:
                    cut = data.rfind(b"\n") + 1
                    if not cut:
                        rest = data
                        continue
                    lines, rest = data[:cut].split(b"\n")[:-1], data[cut:]
                rows = [line for line in lines if line and not line.isspace()]
                yield _JsonlBlock(self.path, first_row, first_line, lines, rows)
                first_row += len(rows)
                first_line += len(lines)
                if not chunk:
                    break
        self.digest = h.hexdigest()

    def dataset(self):
        """The input as a `datasets.Dataset` (Parquet / saved datasets only: `files.open_dataset`)."""
        if self._dataset is None:
            self._dataset, split = open_dataset(self.path, self.split)
            self.split = split or self.split
        return self._dataset

    def _arrow_blocks(self):
        data = self.dataset()
        h = hashlib.blake2b(digest_size=16)
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        for p in files:
            h.update(str(p.relative_to(self.path.parent)).encode())
            with open(p, "rb") as f:
                while chunk := f.read(BLOCK_BYTES):
                    h.update(chunk)
        table = data.with_format("arrow")
        for start in range(0, len(data), BATCH_ROWS):
            yield _ArrowBlock(start, table[start : start + BATCH_ROWS])
        self.digest = h.hexdigest()


def _read_json(lines: list[bytes]):
    """pyarrow's reading of JSONL lines, or None where it cannot stand for `json.loads` (errors, type changes)."""
    import pyarrow as pa
    import pyarrow.json as pj

    if not lines:
        return None
    data = b"\n".join(lines)
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and any(too_deep(line) for line in _many_brackets(lines)):
        return None  # pyarrow's reader dies (SIGSEGV) on deep nesting: `_loads` names the line instead
    try:
        table = pj.read_json(pa.BufferReader(data))
        table.validate(full=True)  # the reader lets bytes that are not UTF-8 into strings: `_loads` names the line
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return table if table.num_rows == len(lines) else None


def _many_brackets(lines: list[bytes]) -> list[bytes]:
    """The lines holding over `MAX_DEPTH` of `[` and `{`: the only ones `too_deep` can flag. Only a line longer
    than that can: on short rows this is 6x faster than a numpy pass over the block (which was ~3% of a clean)."""
    return [line for line in lines if len(line) > MAX_DEPTH and line.count(b"[") + line.count(b"{") > MAX_DEPTH]


def _loads(line: bytes, where) -> dict:
    depth = too_deep(line)
    if depth:
        raise UserError(f"{where()}: JSON nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{where()}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where()}: not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where()}: expected a JSON object, got {type(row).__name__}")
    return row


class _JsonlBlock:
    """Whole lines of a JSONL file: `rows` the non-blank ones, the first of them row `first_row` of the input."""

    def __init__(self, path, first_row, first_line, lines, rows):
        self.path, self.first_row, self.first_line, self.lines, self.rows = path, first_row, first_line, lines, rows
        self._table = False

    def __len__(self):
        return len(self.rows)

    def _where(self, i: int) -> str:
        target = self.rows[i]
        n = next(n for n, line in enumerate(self.lines) if line is target)
        return f"{self.path}:{self.first_line + n}"

    def table(self):
        if self._table is False:
            self._table = _read_json(self.rows)
        return self._table

    def dicts(self, which=None) -> list[dict]:
        return [
            _loads(self.rows[i], lambda i=i: self._where(i))
            for i in (range(len(self.rows)) if which is None else which)
        ]

    def shards(self, n: int) -> np.ndarray:
        """Each row's prompt shard: from a string `prompt` column when pyarrow reads the block, else row by row."""
        if n == 1:
            return np.zeros(len(self.rows), dtype=np.int64)
        table = self.table()
        keys = (
            _keys_of_column(table.column("prompt")) if table is not None and "prompt" in table.column_names else None
        )
        if keys is not None:
            uniques, index = keys
            return np.array([prompt_shard(k, 0, n) for k in uniques], dtype=np.int64)[index]
        rows = self.dicts()
        return np.array([prompt_shard(_prompt_key(r), self.first_row + i, n) for i, r in enumerate(rows)], np.int64)


class _ArrowBlock:
    def __init__(self, first_row, table):
        self.first_row, self.table = first_row, table

    def __len__(self):
        return self.table.num_rows

    def dicts(self, which=None) -> list[dict]:
        return (self.table if which is None else self.table.take(list(which))).to_pylist()

    def shards(self, n: int) -> np.ndarray:
        if n == 1:
            return np.zeros(len(self), dtype=np.int64)
        keys = _keys_of_column(self.table.column("prompt")) if "prompt" in self.table.column_names else None
        if keys is not None:
            uniques, index = keys
            return np.array([prompt_shard(k, 0, n) for k in uniques], dtype=np.int64)[index]
        return np.array(
            [prompt_shard(_prompt_key(r), self.first_row + i, n) for i, r in enumerate(self.dicts())], np.int64
        )


class ShardRows:
    """One shard's rows in input order, as parts: raw JSONL lines, dicts, or Arrow tables.

    `parsed` reads each part column-wise (`parse_columns`) and falls back to `parse_row` row by row only where it
    must; `row(r)` gives a row as a dict (for the rejects file), parsing that one row only.
    """

    def __init__(self, path, ids):
        self.path, self.ids, self.parts, self.n = path, ids, [], 0
        self._starts = []  # each part's first row, for `row` (called once per rejected row)

    def add(self, kind: str, payload, table=None) -> None:
        """A part: `lines` (raw JSONL lines, `table` their pyarrow reading if made already), `dicts` or `table`."""
        size = payload.num_rows if kind == "table" else len(payload)
        if size:
            self.parts.append((self.n, kind, payload, table))
            self._starts.append(self.n)
            self.n += size

    def __len__(self):
        return self.n

    def _part(self, r: int):
        return self.parts[bisect.bisect_right(self._starts, r) - 1]

    def raw(self, r: int) -> bytes | None:
        """Row `r`'s JSONL line as read, or None for rows that are not raw lines."""
        start, kind, payload, _ = self._part(r)
        return payload[r - start] if kind == "lines" else None

    def raw_lines(self, positions) -> list:
        """`raw` of each row in `positions`, without a Python call and a bisect per row."""
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(self._starts, positions, side="right") - 1
        out = [None] * len(positions)
        for k in np.unique(part).tolist():
            start, kind, payload, _ = self.parts[k]
            if kind == "lines":
                at = np.flatnonzero(part == k)
                for i, j in zip(at.tolist(), (positions[at] - start).tolist()):
                    out[i] = payload[j]
        return out

    def row(self, r: int) -> dict:
        start, kind, payload, _ = self._part(r)
        if kind == "lines":
            return _loads(payload[r - start], lambda: f"{self.path}: row {int(self.ids[r])}")
        if kind == "dicts":
            return payload[r - start]
        return payload.slice(r - start, 1).to_pylist()[0]

    def columns(self, need_label: bool):
        """The rows as a `PairColumns` for the vectorised build, or None if some row needs `parse_row` to be read."""
        from reward.consistency.columns import PairColumns
        from reward.consistency.rows import BadRow, pair_arrays, parse_row

        out = PairColumns(n_rows=self.n)
        for start, kind, payload, table in self.parts:
            if kind == "dicts":
                return None
            if kind == "table":
                table = payload
            elif table is None:
                table = _read_json(payload)
            cols = None if table is None else pair_arrays(table, need_label)
            if cols is None:
                return None
            for i in np.flatnonzero(~cols["ok"]).tolist():
                row = self.row(start + i) if kind == "lines" else table.slice(i, 1).to_pylist()[0]
                try:
                    parse_row(row, need_label)
                    return None  # a row that only parse_row reads
                except BadRow as exc:
                    out.bad[start + i] = exc
            out.blocks.append((start, cols))
        return out

    def parsed(self, need_label: bool):
        from reward.consistency.clean import parse_rows
        from reward.consistency.rows import BadRow, parse_columns, parse_row

        for start, kind, payload, table in self.parts:
            if kind == "dicts":
                yield from ((start + r, p) for r, p in parse_rows(payload, need_label))
                continue
            if kind == "table":
                table = payload
            elif table is None:
                table = _read_json(payload)
            fast = parse_columns(table, need_label) if table is not None else [None] * len(payload)
            for r, p in enumerate(fast):
                if p is None:
                    row = self.row(start + r) if kind == "lines" else table.slice(r, 1).to_pylist()[0]
                    try:
                        p = parse_row(row, need_label)
                    except BadRow as exc:
                        p = exc
                yield start + r, p


class ShardStore:
    """The rows of each shard, on disk under `folder` (JSONL lines or Arrow IPC) or, for one shard, in memory."""

    def __init__(self, source: Source, n: int, folder: Path | None, only: int | None = None):
        self.source, self.n, self.folder, self.only = source, n, folder, only
        self.ids = [array("q") for _ in range(n)]
        self.memory = [[] for _ in range(n)]  # in-memory parts: ("lines" | "dicts" | "table", payload)
        self.files = {}
        self.rows_in = 0

    def add(self, block) -> None:
        shard_of = block.shards(self.n)
        self.rows_in += len(block)
        jsonl = isinstance(block, _JsonlBlock)
        if jsonl and block.table() is None:
            block.dicts()  # what pyarrow cannot read is checked now, so that errors name the line
        for s in range(self.n) if self.only is None else [self.only]:
            which = np.flatnonzero(shard_of == s)
            if not len(which):
                continue
            self.ids[s].extend((which + block.first_row).tolist())
            if jsonl:
                lines = [block.rows[i] for i in which]
                if self.folder is None:  # the block's table serves again when the shard takes the whole block
                    whole = len(which) == len(block)
                    self.memory[s].append(("lines", lines, block.table() if whole else None))
                else:
                    f = self.files.get(s) or self.files.setdefault(s, open(self.folder / f"shard-{s}.jsonl", "wb"))
                    f.write(b"\n".join(lines) + b"\n")
            else:
                part = block.table.take(which)
                if self.folder is None:
                    self.memory[s].append(("table", part, None))
                    continue
                import pyarrow as pa

                if s not in self.files:
                    sink = pa.OSFile(str(self.folder / f"shard-{s}.arrow"), "wb")
                    self.files[s] = (sink, pa.ipc.new_file(sink, part.schema))
                self.files[s][1].write_table(part)

    def close(self) -> None:
        for f in self.files.values():
            if isinstance(f, tuple):
                f[1].close()
                f[0].close()
            else:
                f.close()
        self.files = {}  # closed: the store can go to worker processes

    def rows(self, s: int) -> ShardRows:
        """Shard `s`'s rows (read from disk, or handed over from memory), with their indices in the input."""
        ids = np.frombuffer(self.ids[s], dtype=np.int64) if len(self.ids[s]) else np.zeros(0, np.int64)
        out = ShardRows(self.source.path, ids)
        if self.folder is None:
            for kind, payload, table in self.memory[s]:
                out.add(kind, payload, table)
            self.memory[s] = []
        elif self.source.format == "jsonl":
            path = self.folder / f"shard-{s}.jsonl"
            out.add("lines", path.read_bytes().split(b"\n")[:-1] if path.exists() else [])
        else:
            import pyarrow as pa

            path = self.folder / f"shard-{s}.arrow"
            if path.exists():
                with pa.memory_map(str(path)) as m:
                    out.add("table", pa.ipc.open_file(m).read_all())
        return out


def parse_shard_spec(spec: str | None) -> tuple[int, int] | None:
    """`"I/N"` -> (I, N) with 0 <= I < N; a clear error for anything else (`5/4`, `x/2`, `-1/2`)."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard must be I/N (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard {spec}: I must be in 0..N-1 and N >= 1")
    return i, n


def write_kept(source: Source, mask: np.ndarray, fmt: str, out, name: str) -> int:
    """Writes the rows not in `mask` to output `name` of `out` (an `OutputSet`) as `fmt`; returns how many.

    JSONL to JSONL copies lines byte for byte; the input is read again and must hash as before.
    """
    expected = source.digest
    kept = int((~mask).sum())
    if source.format == "jsonl" and fmt == "jsonl":
        f = out.open(name)
        for block in source.blocks():
            keep = ~mask[block.first_row : block.first_row + len(block)]
            lines = [line for line, k in zip(block.rows, keep.tolist()) if k]
            if lines:
                f.write(b"\n".join(lines) + b"\n")
    elif source.format == "jsonl":
        rows = []
        for block in source.blocks():
            keep = np.flatnonzero(~mask[block.first_row : block.first_row + len(block)])
            rows.extend(block.dicts(keep.tolist()))
        _write_converted(rows, fmt, out, name)
    else:
        data = source.dataset().select(np.flatnonzero(~mask).tolist())
        source.digest = None
        for _ in source.blocks():  # rehash
            pass
        _write_dataset(data, fmt, out, name, source.split)
    if source.digest != expected:
        raise UserError(f"{source.path}: changed while it was being read; nothing written, run again")
    return kept


def write_rows(rows: list[dict], fmt: str, out, name: str) -> None:
    """Rows (dicts) as output `name` of `out` in format `fmt`."""
    _write_converted(rows, fmt, out, name)


def _write_converted(rows: list[dict], fmt: str, out, name: str) -> None:
    if fmt == "jsonl":
        f = out.open(name)
        for row in rows:
            f.write(json_line(row))
        return
    _write_dataset(arrow_rows(rows, str(out.paths[name])), fmt, out, name, None)


def _write_dataset(data, fmt: str, out, name: str, split: str | None) -> None:
    if fmt == "jsonl":
        f = out.open(name)
        for row in data:
            f.write(json_line(row))
    elif fmt == "parquet":
        f = Failsafe(out.open(name))
        data.to_parquet(f)
        f.check()
    else:
        from datasets import DatasetDict

        folder = out.folder(name)
        (DatasetDict({split: data}) if split else data).save_to_disk(str(folder))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
