"""Reject files: each rejected row as one JSONL line, byte-identical to `json.dumps(record, ensure_ascii=False,
default=str)` (but for binary cells, base64, and lone surrogates, `\\u` escapes: `trainers.files.json_line`),
written per shard in row order and merged into the whole input's rejects by row index."""

from __future__ import annotations

import heapq
import itertools
import json
import re

import numpy as np

from ..files import json_line

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
    heads = []
    for record in rejected:
        head = encode(record)  # ends `, "row": <position>}`: only the int goes (a string can't hold `, "row": `)
        heads.append((head[: head.rindex(', "row": ')].encode() + b', "row": ', record["row"]))
    return list(_with_rows(heads, rows))


_CHUNK = 16384  # rejects whose evidence is made Python ints at a time (all at once: 30 MB per million)


def rejected_lines(rejected, rows):
    """`reject_lines` of a shard's `Rejected` (reward/consistency/rejected.py), one line at a time: each record's
    head written from its columns (every reason and detail string encoded once), positions mapped to `rows.ids`."""
    return _with_rows(_heads(rejected, rows.ids), rows)


def _heads(rejected, ids):
    strings = [_ENCODER.encode(s).encode() for s in rejected.strings]
    for lo in range(0, len(rejected), _CHUNK):
        hi = min(lo + _CHUNK, len(rejected))
        reasons, details = rejected.reason[lo:hi].tolist(), rejected.detail[lo:hi].tolist()
        start = (rejected.ev_start[lo : hi + 1] - rejected.ev_start[lo]).tolist()
        index = ids[rejected.rows[lo:hi]].tolist()
        text, at = _joined(ids[rejected.ev_row[rejected.ev_start[lo] : rejected.ev_start[hi]]])
        head = b'{"row_index": %d, "reason": %b, "detail": %b, "evidence_rows": [%b], "row": '
        for k, r in enumerate(rejected.rows[lo:hi].tolist()):
            ev = text[at[start[k]] : at[start[k + 1]] - 2]  # this row's numbers and the ", " between them
            yield head % (index[k], strings[reasons[k]], strings[details[k]], ev), r


def _joined(values: np.ndarray) -> tuple[bytes, list[int]]:
    """`", ".join` of non-negative ints, as bytes, once for a whole chunk (a join per reject was ~10% of a cycle-heavy
    clean), and where each number starts: `values[i:j]` joined is `text[at[i] : at[j] - 2]` (b"" for i == j)."""
    width = np.ones(len(values), dtype=np.int64)
    for power in range(1, 19):  # decimal digits of each number
        above = values >= 10**power
        if not above.any():
            break
        width += above
    at = np.full(len(values) + 1, 2, dtype=np.int64)  # text starts with ", ": no slice end below 0
    np.cumsum(width + 2, out=at[1:])
    at[1:] += 2
    return (", %d" * len(values) % tuple(values.tolist())).encode(), at.tolist()  # 3x a join of map(str)


def _with_rows(heads, rows):
    """`head + row + "}\\n"` for each `(head, position)`: the row's raw line where `_Splicer` finds it byte-identical
    to re-encoding (`json.dumps` writes a nested object as it writes it alone), else re-encoded."""
    splicer = _Splicer()
    for head, r in heads:
        raw = rows.raw(r)
        if raw is not None and splicer.canonical(raw):
            yield b"".join((head, raw, b"}\n"))
            continue
        row = rows.row(r)
        if isinstance(row, dict):
            splicer.learn(row)
        yield b"".join((head, json_line(row)[:-1], b"}\n"))


def _index_of(line: bytes) -> int:
    if line.startswith(b'{"row_index": '):
        return int(line[14 : line.index(b",")])
    return json.loads(line)["row_index"]


def merge_reject_files(paths, out, indices=None, sizes=None) -> int:
    """Writes the rejects of several shards (each sorted by row index) to `out` in row order; returns the count.

    `indices`, each file's row indices in its order where known (a clean's own shards), saves parsing every line;
    `sizes`, each file's line lengths in bytes, then lets runs of lines be copied as byte ranges.
    """
    files = [open(p, "rb") for p in paths]
    n = 0
    try:
        if indices is not None:
            which = np.concatenate([np.full(len(ix), f, dtype=np.int64) for f, ix in enumerate(indices)])
            order = np.argsort(np.concatenate([np.asarray(ix, dtype=np.int64) for ix in indices]), kind="stable")
            which = which[order]  # the file of each output line; a prompt's rows are all in one file: long runs
            if not len(which):
                return 0
            cut = np.flatnonzero(np.diff(which)) + 1
            starts = np.concatenate([[0], cut]).tolist()
            counts = np.diff(np.append(starts, len(which))).tolist()
            if sizes is None:
                for f, k in zip(which[starts].tolist(), counts):
                    out.writelines(itertools.islice(files[f], k))
                return len(which)
            at = [np.concatenate([[0], np.cumsum(s, dtype=np.int64)]).tolist() for s in sizes]  # line offsets
            done = [0] * len(files)  # lines of each file copied so far
            for f, k in zip(which[starts].tolist(), counts):
                left = at[f][done[f] + k] - at[f][done[f]]
                done[f] += k
                while left:
                    chunk = files[f].read(min(left, _COPY_BYTES))
                    if not chunk:
                        raise ValueError(f"{paths[f]}: shorter than its recorded lines")
                    out.write(chunk)
                    left -= len(chunk)
            return len(which)
        for _, line in heapq.merge(*[((_index_of(line), line) for line in f if line.strip()) for f in files]):
            out.write(line if line.endswith(b"\n") else line + b"\n")
            n += 1
    finally:
        for f in files:
            f.close()
    return n


_COPY_BYTES = 1 << 22  # merge_reject_files: bytes held at a time while copying a run of lines


def rejected_indices(paths, rows_in: int) -> np.ndarray:
    """A mask over the input's rows: True for a rejected row."""
    mask = np.zeros(rows_in, dtype=bool)
    for p in paths:
        with open(p, "rb") as f:
            idx = [_index_of(line) for line in f if line.strip()]
        mask[np.asarray(idx, dtype=np.int64)] = True
    return mask
