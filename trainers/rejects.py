"""Reject files: each rejected row as one JSONL line, byte-identical to `json.dumps(record, ensure_ascii=False,
default=str)` (but for binary cells, base64, and lone surrogates, `\\u` escapes: `trainers.files.json_line`),
written per shard in row order and merged into the whole input's rejects by row index."""

from __future__ import annotations

import heapq
import json
import re

import numpy as np

from .files import json_line

_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # json.dumps(..., these options), built once

# A JSON value that `_ENCODER` writes back byte for byte after `json.loads`: a string with only the escapes it
# writes itself (none of `\u....` or `\/`), an int in canonical form (no `-0`, no leading zeros, well below the
# int-string limit), true, false or null. Floats (`1e-7` comes back as `1e-07`) and nested values are not.
_STRING = rb'"[^"\\\x00-\x1f]*+(?:\\["\\bfnrt][^"\\\x00-\x1f]*+)*+"'  # unrolled, possessive: 4x faster in `re`
_FLAT_VALUE = rb"(?:" + _STRING + rb"|0|-?[1-9][0-9]{0,17}|true|false|null)"
_MAX_LAYOUTS = 16  # key orders tried per shard: beyond this, rows are re-encoded as before


class _Splicer:
    """Reject lines with the input's own bytes as their `row`, where that is exactly what re-encoding would write.

    A raw line is spliced only if it matches the layout of a row already re-encoded: its keys literally, in that
    order (so no duplicates), `": "` and `", "` between them and only `_FLAT_VALUE`s, and it is valid UTF-8. Then
    `json.loads` + `_ENCODER` would give the line back unchanged, so skipping them cannot change the output; any
    other line (compact separators, escaped unicode, floats, nested values) takes that slow path.
    """

    def __init__(self):
        self.layouts: dict[tuple, re.Pattern] = {}

    def learn(self, row: dict) -> None:
        keys = tuple(row)
        if keys not in self.layouts and len(self.layouts) < _MAX_LAYOUTS:
            pairs = [re.escape(_ENCODER.encode(k).encode()) + rb": " + _FLAT_VALUE for k in keys]
            self.layouts[keys] = re.compile(rb"\{" + rb", ".join(pairs) + rb"\}")

    def canonical(self, raw: bytes) -> bool:
        for pattern in self.layouts.values():
            if pattern.fullmatch(raw):
                break
        else:
            return False
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True


def reject_lines(rejected, rows=None) -> list[bytes]:
    """Reject records (dicts with `row` last) as JSONL lines, as `json.dumps(record, ensure_ascii=False,
    default=str)` writes them.

    With `rows` (a `ShardRows`), a record's `row` is its position in `rows` instead of the row itself: the row is
    then spliced in from the input's raw line where that is byte-identical (`_Splicer`), else read and re-encoded.
    """
    encode = _ENCODER.encode
    if rows is None:
        return [json_line(r) for r in rejected]
    splicer, out = _Splicer(), []
    for record in rejected:
        r = record["row"]
        raw = rows.raw(r)
        if raw is not None and splicer.canonical(raw):
            head = encode(record)  # ends `, "row": <position>}`: only the int goes (a string can't hold `, "row": `)
            out.append(b"".join((head[: head.rindex(', "row": ')].encode(), b', "row": ', raw, b"}\n")))
            continue
        row = rows.row(r)
        if isinstance(row, dict):
            splicer.learn(row)
        out.append(json_line(record | {"row": row}))
    return out


def _index_of(line: bytes) -> int:
    if line.startswith(b'{"row_index": '):
        return int(line[14 : line.index(b",")])
    return json.loads(line)["row_index"]


def merge_reject_files(paths, out) -> int:
    """Writes the rejects of several shards (each sorted by row index) to `out` in row order; returns the count."""
    files = [open(p, "rb") for p in paths]
    n = 0
    try:
        for _, line in heapq.merge(*[((_index_of(line), line) for line in f if line.strip()) for f in files]):
            out.write(line if line.endswith(b"\n") else line + b"\n")
            n += 1
    finally:
        for f in files:
            f.close()
    return n


def rejected_indices(paths, rows_in: int) -> np.ndarray:
    """A mask over the input's rows: True for a rejected row."""
    mask = np.zeros(rows_in, dtype=bool)
    for p in paths:
        with open(p, "rb") as f:
            idx = [_index_of(line) for line in f if line.strip()]
        mask[np.asarray(idx, dtype=np.int64)] = True
    return mask
