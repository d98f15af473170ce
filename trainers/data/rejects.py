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
# The same for pyarrow's RE2, which has no possessive quantifiers (and needs none: it never backtracks).
_STRING_RE2 = r'"[^"\\\x00-\x1f]*(?:\\["\\bfnrt][^"\\\x00-\x1f]*)*"'
_FLAT_VALUE_RE2 = "(?:" + _STRING_RE2 + "|0|-?[1-9][0-9]{0,17}|true|false|null)"


class _Splicer:
    """Reject lines with the input's own bytes as their `row`, where that is exactly what re-encoding would write.

    A raw line is spliced only if it matches the layout of a row already re-encoded: its keys literally, in that
    order (so no duplicates), `": "` and `", "` between them and only `_FLAT_VALUE`s, and it is valid UTF-8. Then
    `json.loads` + `_ENCODER` would give the line back unchanged, so skipping them cannot change the output; any
    other line (compact separators, escaped unicode, floats, nested values) takes that slow path.
    """

    def __init__(self):
        self.layouts: dict[tuple, re.Pattern] = {}

    def learn(self, row: dict) -> bool:
        """Adds the layout of `row` (re-encoded already); True if it is new."""
        keys = tuple(row)
        if keys in self.layouts or len(self.layouts) >= _MAX_LAYOUTS:
            return False
        pairs = [re.escape(_ENCODER.encode(k).encode()) + rb": " + _FLAT_VALUE for k in keys]
        self.layouts[keys] = re.compile(rb"\{" + rb", ".join(pairs) + rb"\}")
        return True

    def canonical_many(self, raws: list) -> list[bool]:
        """`canonical` of each line (None: no line) in one pass of pyarrow's RE2 over all of them, the layouts as
        one alternation and the UTF-8 check done for all at once: `re` line by line was a tenth of a cycle-heavy
        clean, where most rows are rejects. Lines RE2 cannot check get `canonical` one by one."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from reward.consistency.rows import arrow_numpy

        have = [i for i, raw in enumerate(raws) if raw is not None]
        out = [False] * len(raws)
        if not self.layouts or not have:
            return out
        lines = [raws[i] for i in have]
        offsets = np.zeros(len(lines) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)), out=offsets[1:])
        data = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(lines))]
        array = pa.Array.from_buffers(pa.large_string(), len(lines), data)
        layouts = [
            r"\{" + ", ".join(re.escape(_ENCODER.encode(k)) + ": " + _FLAT_VALUE_RE2 for k in keys) + r"\}"
            for keys in self.layouts
        ]
        try:
            array.validate(full=True)  # UTF-8
            match = arrow_numpy(pc.match_substring_regex(array, "^(?:" + "|".join(layouts) + ")$"))
        except pa.ArrowInvalid:  # not UTF-8, or a pattern too large for RE2 (thousands of keys)
            return [raw is not None and self.canonical(raw) for raw in raws]
        for i, m in zip(have, match.tolist()):
            out[i] = m
        return out

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
        heads.append(head[: head.rindex(', "row": ')].encode() + b', "row": ')
    bodies = _row_bytes([record["row"] for record in rejected], rows, _Splicer())
    return [b"".join((head, body, b"}\n")) for head, body in zip(heads, bodies)]


_CHUNK = 16384  # rejects formatted at a time (all at once: 30 MB of Python ints per million)


def rejected_chunks(rejected, rows):
    """`reject_lines` of a shard's `Rejected` (reward/consistency/rejected.py), positions mapped to `rows.ids`, as
    `(bytes, line lengths)` of up to `_CHUNK` lines at a time.

    A chunk is one `%` format: a line template per evidence count (`%d` per evidence row) joined for the chunk, its
    values gathered column-wise. A %-format and a join per reject were 40% of writing a cycle-heavy clean's rejects.
    """
    strings = np.array([_ENCODER.encode(s).encode() for s in rejected.strings], dtype=object)
    templates, splicer = {}, _Splicer()
    for lo in range(0, len(rejected), _CHUNK):
        hi = min(lo + _CHUNK, len(rejected))
        first, last = rejected.ev_start[lo], rejected.ev_start[hi]
        counts = np.diff(rejected.ev_start[lo : hi + 1])
        for m in set(counts.tolist()) - templates.keys():
            templates[m] = _LINE % b", ".join([b"%d"] * m)
        # Each line's values in its template's order: row_index, reason, detail, the evidence rows, the row.
        at = np.cumsum(counts + 4) - counts - 4
        values = np.empty(int(counts.sum()) + 4 * (hi - lo), dtype=object)
        values[at] = rows.ids[rejected.rows[lo:hi]].tolist()
        values[at + 1], values[at + 2] = strings[rejected.reason[lo:hi]], strings[rejected.detail[lo:hi]]
        ev_at = np.repeat(at + 3 - (rejected.ev_start[lo:hi] - first), counts) + np.arange(last - first)
        values[ev_at] = rows.ids[rejected.ev_row[first:last]].tolist()
        values[at + 3 + counts] = _row_bytes(rejected.rows[lo:hi].tolist(), rows, splicer)
        text = b"".join([templates[m] for m in counts.tolist()]) % tuple(values.tolist())
        ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 0x0A)  # JSON and raw lines hold no newline
        yield text, np.diff(ends, prepend=-1)


_LINE = b'{"row_index": %%d, "reason": %%b, "detail": %%b, "evidence_rows": [%b], "row": %%b}\n'


def _row_bytes(positions, rows, splicer) -> list[bytes]:
    """Each row's JSON: its raw line where `splicer` finds it byte-identical to re-encoding (`json.dumps` writes a
    nested object as it writes it alone), else read and re-encoded."""
    raws, out = rows.raw_lines(positions), []
    known = splicer.canonical_many(raws)
    for k, (r, raw) in enumerate(zip(positions, raws)):
        if known[k]:
            out.append(raw)
            continue
        row = rows.row(r)
        if isinstance(row, dict) and splicer.learn(row):  # a new layout (16 at most): the rest checked again
            known[k + 1 :] = splicer.canonical_many(raws[k + 1 :])
        out.append(json_line(row)[:-1])
    return out


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
