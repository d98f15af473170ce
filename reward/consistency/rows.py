"""Preference rows in: the formats `trustreward clean`, `audit` and `train-rm` read, checked row by row.

Every problem is a `BadRow` whose message is the reason written to the rejects file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from ..scoring import entropy
from ..text import lone_surrogate, text_key

LABELS = {"a": 1, "b": -1, "tie": 0}
_LABEL_CODES = {"a": 0, "b": 1, "tie": 2}  # pair_arrays: a label's place in (1, -1, 0)
_PROB_TOLERANCE = 1e-3  # p_a + p_b + p_tie must be within this of 1


class BadRow(ValueError):
    """A row that cannot be used; its message is the reason written to the rejects."""


def _text(row: dict, name: str):
    return _check_text(row.get(name), name)


def _check_text(value, name: str):
    if isinstance(value, str):
        if value and not value.isspace():
            if lone_surrogate(value):
                raise BadRow(f"{name} holds a lone surrogate (a broken character, e.g. a cut emoji)")
            return value
        raise BadRow(f"{name} is empty")
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    ):
        if lone_surrogate(value):
            raise BadRow(f"{name} holds a lone surrogate (a broken character, e.g. a cut emoji)")
        return value
    raise BadRow(f"{name} is missing" if value is None else f"{name} is not a string or a conversation")


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise BadRow(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _split_implicit(chosen, rejected):
    """TRL's implicit prompt: the longest shared start of chosen and rejected (whole messages, or characters)."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n] or None, chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        while n and not chosen[n - 1].isspace():  # back up to a word boundary, as TRL does
            n -= 1
        return chosen[:n] or None, chosen[n:], rejected[n:]
    return None, chosen, rejected


class Pair(NamedTuple):
    """Responses i and j of a row (their positions) and r(i, j), `None` when the row carries no relation."""

    i: int
    j: int
    relation: int | None
    weight: float
    order_consistent: bool | None
    entropy: float | None


_new = tuple.__new__  # `_new(Pair, fields)`: a NamedTuple without its Python-level __new__, half the cost per row
_CHOSEN_REJECTED = Pair(0, 1, 1, 1.0, None, None)  # every chosen / rejected row's pair (immutable: shared)


@dataclass
class _Row:
    prompt: object
    category: object = None
    responses: list = field(default_factory=list)
    scores: list = field(default_factory=list)  # per response, None when unknown
    pairs: list[Pair] = field(default_factory=list)


def _pairwise_relation(row: dict) -> tuple[int | None, float, float | None]:
    """(relation of a vs b, weight, entropy) from `label` / `verdict` and / or `p_a, p_b, p_tie`."""
    probs = row.get("p_a"), row.get("p_b"), row.get("p_tie")
    weight, relation, ent = 1.0, None, None
    if probs != (None, None, None):
        p_a, p_b, p_tie = (_number(p, k) for p, k in zip(probs, ("p_a", "p_b", "p_tie")))
        if min(p_a, p_b, p_tie) < 0:
            raise BadRow(f"negative probability in p_a, p_b, p_tie = {p_a}, {p_b}, {p_tie}")
        if abs(p_a + p_b + p_tie - 1) > _PROB_TOLERANCE:
            raise BadRow(f"p_a + p_b + p_tie = {p_a + p_b + p_tie:.4f}, not 1")
        weight, ent = abs(p_a - p_b), entropy({"a": p_a, "b": p_b, "tie": p_tie})
        relation = 1 if p_a > max(p_b, p_tie) else -1 if p_b > max(p_a, p_tie) else 0
    label = row.get("label", row.get("verdict"))
    if label is not None:
        if label not in LABELS:
            raise BadRow(f"label must be 'a', 'b' or 'tie', got {label!r}")
        relation = LABELS[label]
    return relation, weight, ent


def parse_row(row: dict, need_label: bool = True) -> _Row:
    """One input row -> its prompt, responses, scores and pairs; raises `BadRow` with the reason.

    Formats, told apart by their keys: `chosen, rejected` (TRL preference, prompt explicit or implicit);
    `response_a, response_b` with `label` / `verdict` and / or `p_a, p_b, p_tie` (optional `score_a, score_b`,
    `order_consistent`); `responses` with `scores` or `ranks` (1 = best); `response` with `score` (pointwise).

    ```python
    >>> parse_row({"prompt": "q", "chosen": "good", "rejected": "bad"}).pairs
    [Pair(i=0, j=1, relation=1, weight=1.0, order_consistent=None, entropy=None)]

    ```
    """
    if not isinstance(row, dict):
        raise BadRow(f"expected a mapping, got {type(row).__name__}")
    prompt = row.get("prompt")
    if "chosen" in row or "rejected" in row:
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        if prompt is None:
            prompt, chosen, rejected = _split_implicit(chosen, rejected)
            if prompt is None:
                raise BadRow("no prompt column and no shared prompt at the start of chosen and rejected")
        out = _Row(prompt, row.get("category"), [chosen, rejected], [None, None], [_CHOSEN_REJECTED])
    elif "response_a" in row or "response_b" in row:
        a, b = _text(row, "response_a"), _text(row, "response_b")
        relation, weight, ent = _pairwise_relation(row)
        if relation is None and need_label:
            reason = f" (judge_error: {row['judge_error']})" if row.get("judge_error") else ""
            raise BadRow("no label: needs label, verdict or p_a, p_b, p_tie" + reason)
        score_a, score_b = row.get("score_a"), row.get("score_b")
        scores = [
            None if score_a is None else _number(score_a, "score_a"),
            None if score_b is None else _number(score_b, "score_b"),
        ]
        consistent = row.get("order_consistent")
        consistent = consistent if isinstance(consistent, bool) else None
        out = _Row(
            prompt, row.get("category"), [a, b], scores, [_new(Pair, (0, 1, relation, weight, consistent, ent))]
        )
    elif "responses" in row:
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise BadRow("responses must be a list of at least 2")
        responses = [_check_text(r, "responses") for r in responses]
        if len({text_key(r) for r in responses}) < len(responses):
            raise BadRow("the same response appears twice in responses")
        if row.get("scores") is not None:
            values, sign, scores = row["scores"], 1, None
        elif row.get("ranks") is not None:
            values, sign, scores = row["ranks"], -1, [None] * len(responses)
        else:
            raise BadRow("responses needs scores or ranks")
        if not isinstance(values, list) or len(values) != len(responses):
            raise BadRow(f"responses and their scores / ranks differ in length ({len(responses)} vs {values!r:.40})")
        values = [_number(v, "scores / ranks") for v in values]
        scores = values if scores is None else scores
        pairs = [
            Pair(i, j, sign * ((values[i] > values[j]) - (values[i] < values[j])), 1.0, None, None)
            for i in range(len(values))
            for j in range(i + 1, len(values))
        ]
        out = _Row(prompt, row.get("category"), responses, scores, pairs)
    elif "response" in row:
        if row.get("score") is None:
            reason = f" (judge_error: {row['judge_error']})" if row.get("judge_error") else ""
            raise BadRow("no score" + reason)
        out = _Row(prompt, row.get("category"), [_text(row, "response")], [_number(row["score"], "score")])
    else:
        raise BadRow("unknown format: needs chosen/rejected, response_a/response_b, responses or response")
    if out.prompt is None:
        raise BadRow("prompt is missing")
    _check_text(out.prompt, "prompt")
    return out


_FORMAT_KEYS = {"chosen", "rejected", "responses"}  # a row with any of these is not read as response_a, response_b


def arrow_numpy(array, fill=None):
    """A flat Arrow array of booleans, ints or floats as a new numpy array, nulls as `fill`, read off its buffers.

    pyarrow's own `to_numpy` (and any Python value made an Arrow scalar, as `fill_null(array, 0)` does) imports
    pandas the first time, about 1 s: a tenth of a cycle-heavy `clean` of 300k rows, which never needs pandas.

    ```python
    >>> import pyarrow as pa, pyarrow.json as pj
    >>> t = pj.read_json(pa.BufferReader(b'{"x": 2, "b": true}\\n{"x": null, "b": null}\\n{"x": -1, "b": false}'))
    >>> arrow_numpy(t.column("x").combine_chunks(), fill=0).tolist(), arrow_numpy(t.column("b").chunk(0), fill=1)
    ([2, 0, -1], array([ True,  True, False]))

    ```
    """
    import numpy as np
    import pyarrow as pa

    n, offset = len(array), array.offset
    if pa.types.is_null(array.type):
        return np.full(n, fill)
    boolean = pa.types.is_boolean(array.type)
    if not n:
        return np.zeros(0, bool if boolean else _NUMPY_TYPES[str(array.type)])

    def bits(buffer):
        return np.unpackbits(np.frombuffer(buffer, np.uint8), count=offset + n, bitorder="little")[offset:].view(bool)

    validity, data = array.buffers()[:2]
    if boolean:
        values = bits(data).copy()
    else:
        dtype = np.dtype(_NUMPY_TYPES[str(array.type)])
        values = np.frombuffer(data, dtype, count=n, offset=offset * dtype.itemsize).copy()
    if array.null_count:
        if fill is None:
            raise ValueError("arrow_numpy: the array has nulls and no fill value was given")
        values[~bits(validity)] = fill
    return values


_NUMPY_TYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "double": "float64"}


def _numbers(column, n: int):
    import numpy as np
    import pyarrow as pa

    if column is None:
        return np.full(n, np.nan)
    return arrow_numpy(column.cast(pa.float64()), math.nan)  # null -> NaN (JSON NaN never reaches here)


def pair_arrays(table, need_label: bool = True) -> dict | None:
    """The pairs of an Arrow table of `prompt, response_a, response_b` rows as columns (see `parse_columns`).

    Returns `None` for a table of another format or with columns of other types, else a dict of per-row values:
    `ok` (the row parses; where not, `parse_row` must say why), `prompt`, `a`, `b` (`(distinct values, index)`),
    `relation` (-2: none), `weight`, `consistent` (1, 0, -1: unknown), `entropy`, `score_a`, `score_b` (NaN:
    unknown), `category` (`(distinct values, index)`).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    names = set(table.column_names)
    if not {"prompt", "response_a", "response_b"} <= names or names & _FORMAT_KEYS or {"label", "verdict"} <= names:
        return None

    def column(name, *checks):
        if name not in names:
            return None
        c = table.column(name).combine_chunks()
        return c if pa.types.is_null(c.type) or any(check(c.type) for check in checks) else False

    number = (pa.types.is_floating, pa.types.is_integer)
    texts = [column(c, pa.types.is_string) for c in ("prompt", "response_a", "response_b")]
    label = column("label" if "label" in names else "verdict", pa.types.is_string)
    probs = [column(c, *number) for c in ("p_a", "p_b", "p_tie")]
    scores = [column(c, *number) for c in ("score_a", "score_b")]
    category = column("category", pa.types.is_string)
    consistent = column("order_consistent", pa.types.is_boolean)
    if any(c is False for c in (*texts, label, *probs, *scores, category, consistent)):
        return None  # a type that json would read otherwise (ints, nested values): row by row
    ok = np.ones(n, dtype=bool)

    def encoded(c, check=False):
        """(distinct values, each row's index into them); `check`: rows without a usable text are not ok."""
        if c is None:
            return [None], np.zeros(n, dtype=np.int64)
        e = pc.dictionary_encode(c)
        uniques = e.dictionary.to_pylist() + [None]
        index = arrow_numpy(e.indices, len(uniques) - 1).astype(np.int64)
        if check:
            usable = np.array([isinstance(u, str) and bool(u) and not u.isspace() for u in uniques])
            ok[~usable[index]] = False
        return uniques, index

    prompts, a_texts, b_texts = (encoded(c, check=True) for c in texts)
    relation = np.full(n, -2, dtype=np.int64)  # -2: none
    weight = np.ones(n)
    p_a, p_b, p_tie = (_numbers(p, n) for p in probs)
    present = [~np.isnan(v) for v in (p_a, p_b, p_tie)]
    have_probs = present[0] | present[1] | present[2]
    with np.errstate(invalid="ignore"):
        good = present[0] & present[1] & present[2] & (np.minimum(np.minimum(p_a, p_b), p_tie) >= 0)
        good &= ~(np.abs(p_a + p_b + p_tie - 1) > _PROB_TOLERANCE)
        rel = np.where(p_a > np.maximum(p_b, p_tie), 1, np.where(p_b > np.maximum(p_a, p_tie), -1, 0))
    ok &= good | ~have_probs
    relation = np.where(have_probs, rel, relation)
    weight = np.where(have_probs, np.abs(p_a - p_b), 1.0)
    if label is not None:
        uniques, index = encoded(label)
        codes = np.array([_LABEL_CODES.get(u, -1) for u in uniques])[index]  # -1: not a label, or null
        has_label = index < len(uniques) - 1  # the last is null
        ok &= ~has_label | (codes >= 0)
        relation = np.where(has_label, np.array([1, -1, 0])[np.maximum(codes, 0)], relation)
    if need_label:
        ok &= relation != -2
    score_values = []
    for s in scores:
        v = _numbers(s, n)
        ok &= ~np.isinf(v)
        score_values.append(v)
    flags = np.full(n, -1, dtype=np.int8)
    if consistent is not None:
        known = ~arrow_numpy(pc.is_null(consistent))
        flags[known] = arrow_numpy(consistent, False)[known]
    entropies = np.full(n, np.nan)
    pa_list, pb_list, pt_list = p_a.tolist(), p_b.tolist(), p_tie.tolist()
    for i in np.flatnonzero(have_probs & ok).tolist():  # as `parse_row` computes it, to the last bit
        entropies[i] = entropy({"a": pa_list[i], "b": pb_list[i], "tie": pt_list[i]})
    return {
        "ok": ok, "prompt": prompts, "a": a_texts, "b": b_texts, "relation": relation, "weight": weight,
        "consistent": flags, "entropy": entropies, "score_a": score_values[0], "score_b": score_values[1],
        "category": encoded(category),
    }  # fmt: skip


def parse_columns(table, need_label: bool = True) -> list:
    """`parse_row` for an Arrow table of `prompt, response_a, response_b` rows, vectorised where it can be.

    Returns one entry per row: its `_Row`, or `None` where the row needs `parse_row` (a bad row, whose reason
    `parse_row` words; a table of another format or with columns of other types: all `None`). Every `_Row` equals
    what `parse_row` makes of the same row read by `json`, so the two mix freely.
    """
    import numpy as np

    cols = pair_arrays(table, need_label)
    if cols is None:
        return [None] * table.num_rows

    def shared(pair):
        uniques, index = pair
        return [uniques[i] for i in index.tolist()]

    def value(array):
        return [None if x != x else x for x in array.tolist()]  # NaN: unknown

    prompts, a_texts, b_texts, categories = (shared(cols[k]) for k in ("prompt", "a", "b", "category"))
    out = [None] * table.num_rows
    rel_list, w_list = cols["relation"].tolist(), cols["weight"].tolist()
    flag = {1: True, 0: False, -1: None}
    flags = [flag[c] for c in cols["consistent"].tolist()]
    entropies, sa, sb = value(cols["entropy"]), value(cols["score_a"]), value(cols["score_b"])
    for i in np.flatnonzero(cols["ok"]).tolist():
        r = rel_list[i]
        pair = _new(Pair, (0, 1, None if r == -2 else r, w_list[i], flags[i], entropies[i]))
        out[i] = _Row(prompts[i], categories[i], [a_texts[i], b_texts[i]], [sa[i], sb[i]], [pair])
    return out
