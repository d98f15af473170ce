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
        evidence = ids[rejected.ev_row[rejected.ev_start[lo] : rejected.ev_start[hi]]].tolist()
        for k, r in enumerate(rejected.rows[lo:hi].tolist()):
            ev = ", ".join(map(str, evidence[start[k] : start[k + 1]])).encode()
            head = b'{"row_index": %d, "reason": %b, "detail": %b, "evidence_rows": [%b], "row": '
            yield head % (index[k], strings[reasons[k]], strings[details[k]], ev), r


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


def merge_reject_files(paths, out, indices=None) -> int:
    """Writes the rejects of several shards (each sorted by row index) to `out` in row order; returns the count.

    `indices`, each file's row indices in its order where known (a clean's own shards), saves parsing every line.
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
            for f, k in zip(which[starts].tolist(), np.diff(np.append(starts, len(which))).tolist()):
                out.writelines(itertools.islice(files[f], k))
            return len(which)
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
