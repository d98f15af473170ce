"""The rejected rows of a clean, with each one's first reason, detail and evidence rows, held as arrays.

On a noisy judge's data most pairs lie on a cycle: a policy then drops most of a million rows, each with the rows
of its cycle as evidence. A dict of tuples and lists per row cost about 300 bytes a row and a Python call per
drop; here a policy adds its drops in one call (`add_many`), and the evidence is two flat integer arrays (the
entry and the row of each evidence row, 12 bytes each), sorted and made unique per entry in one numpy pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class Rejects:
    """What the cleaning steps reject, in the order they reject it; a row keeps the first reason it gets.

    ```python
    >>> r = Rejects()
    >>> r.add(4, "bad-input", "prompt is missing")
    >>> r.add_many(np.array([2, 4]), "cycle", "on a cycle", np.array([0, 0, 1]), np.array([2, 7, 4]))
    >>> dict(r.done())
    {2: ('cycle', 'on a cycle', [2, 7]), 4: ('bad-input', 'prompt is missing', [])}

    ```
    """

    def __init__(self):
        self._chunks = []  # (rows, reason codes, detail codes, evidence entry, evidence row) per `add_many`
        self._single = []  # `add`s not yet in a chunk: (row, reason, detail, evidence)
        self._codes = {}  # reason or detail string -> code
        self._strings = []

    def _code(self, text: str) -> int:
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self._strings)
            self._strings.append(text)
        return code

    def add(self, row: int, reason: str, detail: str = "", evidence=()) -> None:
        """One rejected row (bad input, duplicates, the judge): few, so kept as they come until the next chunk."""
        self._single.append((row, reason, detail, evidence))

    def add_many(self, rows: np.ndarray, reason: str, detail, ev_entry: np.ndarray, ev_row: np.ndarray) -> None:
        """Rows `rows` rejected for `reason`, in that order; `detail` one string or one per row; evidence row
        `ev_row[i]` belongs to `rows[ev_entry[i]]` (any order, repeats allowed: each row's are sorted, unique)."""
        self._flush()
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        reasons = np.full(len(rows), self._code(reason), dtype=np.int32)
        if isinstance(detail, str):
            details = np.full(len(rows), self._code(detail), dtype=np.int32)
        else:
            details = np.array([self._code(d) for d in detail], dtype=np.int32)
        ev_entry, ev_row = np.asarray(ev_entry, dtype=np.int64), np.asarray(ev_row, dtype=np.int64)
        self._chunks.append((rows, reasons, details, ev_entry, ev_row))

    def _flush(self) -> None:
        if not self._single:
            return
        single, self._single = self._single, []
        rows = np.array([s[0] for s in single], dtype=np.int64)
        reasons = np.array([self._code(s[1]) for s in single], dtype=np.int32)
        details = np.array([self._code(s[2]) for s in single], dtype=np.int32)
        ev = [(k, int(v)) for k, s in enumerate(single) for v in s[3]]
        ev_entry = np.array([k for k, _ in ev], dtype=np.int64)
        ev_row = np.array([v for _, v in ev], dtype=np.int64)
        self._chunks.append((rows, reasons, details, ev_entry, ev_row))

    def rows(self) -> np.ndarray:
        """Every row rejected so far (with repeats)."""
        self._flush()
        return np.concatenate([c[0] for c in self._chunks]) if self._chunks else np.zeros(0, dtype=np.int64)

    def mask(self, n_rows: int) -> np.ndarray:
        out = np.zeros(n_rows, dtype=bool)
        out[self.rows()] = True
        return out

    def done(self) -> Rejected:
        """Each rejected row's first reason, detail and evidence rows (sorted, unique), by row."""
        self._flush()
        if not self._chunks:
            empty = np.zeros(0, dtype=np.int64)
            return Rejected(empty, empty, empty, np.zeros(1, dtype=np.int64), empty, self._strings)
        rows = np.concatenate([c[0] for c in self._chunks])
        reasons = np.concatenate([c[1] for c in self._chunks])
        details = np.concatenate([c[2] for c in self._chunks])
        base = np.cumsum([0] + [len(c[0]) for c in self._chunks])
        ev_entry = np.concatenate([c[3] + b for c, b in zip(self._chunks, base)])
        ev_row = np.concatenate([c[4] for c in self._chunks])
        self._chunks = []
        # Entries in the order they came: a row's first entry wins (np.unique's index is the first occurrence).
        keep_rows, first = np.unique(rows, return_index=True)
        entry_of = np.full(len(rows), -1, dtype=np.int64)
        entry_of[first] = np.arange(len(first))
        owner = entry_of[ev_entry]
        on = owner >= 0
        owner, ev_row = owner[on], ev_row[on]
        order = np.lexsort((ev_row, owner))
        owner, ev_row = owner[order], ev_row[order]
        fresh = np.ones(len(owner), dtype=bool)
        fresh[1:] = (owner[1:] != owner[:-1]) | (ev_row[1:] != ev_row[:-1])
        owner, ev_row = owner[fresh], ev_row[fresh]
        starts = np.searchsorted(owner, np.arange(len(first) + 1))
        return Rejected(keep_rows, reasons[first], details[first], starts, ev_row, self._strings)


class Rejected(Mapping):
    """Rejected rows as a read-only mapping `row -> (reason, detail, evidence rows)`, iterated in row order; the
    columns behind it (`rows`, `reason`, `detail` codes into `strings`, evidence `ev_row[ev_start[k]:ev_start[k +
    1]]` of the k-th row) are there for writers that do not want a tuple per row."""

    def __init__(self, rows, reason, detail, ev_start, ev_row, strings):
        self.rows, self.reason, self.detail, self.ev_start, self.ev_row = rows, reason, detail, ev_start, ev_row
        self.strings = strings

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows.tolist())

    def __contains__(self, row) -> bool:
        k = int(np.searchsorted(self.rows, row))
        return k < len(self.rows) and self.rows[k] == row

    def __getitem__(self, row):
        k = int(np.searchsorted(self.rows, row))
        if not (k < len(self.rows) and self.rows[k] == row):
            raise KeyError(row)
        lo, hi = self.ev_start[k], self.ev_start[k + 1]
        return self.strings[self.reason[k]], self.strings[self.detail[k]], self.ev_row[lo:hi].tolist()

    def items(self):
        s, ev, start = self.strings, self.ev_row.tolist(), self.ev_start.tolist()
        reasons, details = self.reason.tolist(), self.detail.tolist()
        return [
            (r, (s[reasons[k]], s[details[k]], ev[start[k] : start[k + 1]])) for k, r in enumerate(self.rows.tolist())
        ]

    def counts(self) -> dict:
        """Rejected rows by reason, reasons sorted."""
        codes, n = np.unique(self.reason, return_counts=True)
        return dict(sorted((self.strings[c], int(k)) for c, k in zip(codes.tolist(), n.tolist())))
