"""TrustJudge's consistency metrics: conflict ratio (CR) and non-transitivity ratio (NTR_k).

Relations follow TrustJudge's reference code: r(x, y) is +1 when x wins, 0 for a tie, -1 when y wins. A prompt's
candidates and the relations known between them form a `PreferenceGraph`.

Why vectorised: a dataset has ~100k prompts and a prompt with 10 candidates has 252 five-subsets. Graphs of the
same size are stacked, each triple gets a status bit (unknown / equal / circle), and a k-subset's status is the
OR of its triples' bits, gathered through a precomputed subset -> triples index. No Python loop over subsets.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MISSING = 2  # relation code of a pair with no known relation
UNKNOWN, EQUAL, CIRCLE = 1, 2, 4  # triple / subset status bits; 0 = good


def triple_type(op1: int, op2: int, op3: int) -> str:
    """Classifies a triple i < j < k with op1 = r(i, j), op2 = r(j, k), op3 = r(i, k).

    `"good"` when some ranking with ties agrees with all three relations (13 of the 27 cases); otherwise
    `"equal"` when op3 is a tie or op1 and op2 are both ties (8 cases), else `"circle"` (6 cases).

    Example:

    ```python
    >>> triple_type(1, 1, 1), triple_type(1, 1, -1), triple_type(1, -1, 0), triple_type(0, 0, 1)
    ('good', 'circle', 'good', 'equal')

    ```
    """
    for op in (op1, op2, op3):
        if op not in (-1, 0, 1):
            raise ValueError(f"relations are -1, 0 or +1, got {(op1, op2, op3)}")

    # Every ranking with ties of 3 items is some assignment of levels 0..2 to (i, j, k).
    def sign(x):
        return (x > 0) - (x < 0)

    levels = itertools.product(range(3), repeat=3)
    if any((sign(a - b), sign(b - c), sign(a - c)) == (op1, op2, op3) for a, b, c in levels):
        return "good"
    return "equal" if op3 == 0 or (op1 == 0 and op2 == 0) else "circle"


TRIPLE_TABLE = {ops: triple_type(*ops) for ops in itertools.product((1, 0, -1), repeat=3)}
# Status bits indexed by (op1 + 1) * 9 + (op2 + 1) * 3 + (op3 + 1).
_BITS = {"good": 0, "equal": EQUAL, "circle": CIRCLE}
_STATUS = np.array([_BITS[TRIPLE_TABLE[ops]] for ops in itertools.product((-1, 0, 1), repeat=3)], dtype=np.uint8)


@dataclass
class PreferenceGraph:
    """One prompt's candidates 0..n-1 and the relations known between them.

    Attributes:
        n: number of candidates.
        first, second, relation: one known pair per position: r(first, second) in {+1, 0, -1}. One relation per
            unordered pair (a later one overwrites an earlier one in `matrix`).
        scores: pointwise score per candidate, NaN where unknown (`None`: no scores at all).
        category: the prompt's category, for per-category conflict ratios.
        entropy: optional entropy (nats) of each relation's A / B / tie probabilities, NaN where unknown.
    """

    n: int
    first: np.ndarray
    second: np.ndarray
    relation: np.ndarray
    scores: np.ndarray | None = None
    category: str | None = None
    entropy: np.ndarray | None = None

    @classmethod
    def from_edges(cls, n: int, edges, scores=None, category: str | None = None) -> PreferenceGraph:
        """Builds a graph from `(x, y, r(x, y))` triples.

        ```python
        >>> g = PreferenceGraph.from_edges(3, [(0, 1, 1), (1, 2, 1), (2, 0, 1)])
        >>> g.matrix()[0].tolist()  # row 0: r(0, 0) unknown, 0 beats 1, 0 loses to 2
        [2, 1, -1]

        ```
        """
        edges = list(edges)
        first, second, relation = (np.array(c, dtype=np.int64) for c in zip(*edges)) if edges else ([], [], [])
        scores = None if scores is None else np.array([math.nan if s is None else s for s in scores], dtype=float)
        return cls(
            n,
            np.asarray(first, np.int64),
            np.asarray(second, np.int64),
            np.asarray(relation, np.int8),
            scores,
            category,
        )

    def matrix(self) -> np.ndarray:
        """The n x n relation matrix R[x, y] = r(x, y), `MISSING` where unknown (and on the diagonal)."""
        R = np.full((self.n, self.n), MISSING, dtype=np.int8)
        R[self.first, self.second] = self.relation
        R[self.second, self.first] = -self.relation
        return R


@dataclass(slots=True)
class GraphColumns:
    """Many prompts' graphs as columns, what the metrics compute on: no Python loop over prompts or pairs.

    Attributes:
        n, category, scored: per prompt, its candidates, its category and whether it has scores at all.
        node_start: per prompt, where its candidates start in `scores` (NaN where unknown or unscored).
        prompt, first, second, relation, entropy: per known pair (prompts' pairs in order), the prompt it belongs to,
            r(first, second) and the entropy of its probabilities (NaN where unknown).
    """

    n: np.ndarray
    category: list
    scored: np.ndarray
    node_start: np.ndarray
    scores: np.ndarray
    prompt: np.ndarray
    first: np.ndarray
    second: np.ndarray
    relation: np.ndarray
    entropy: np.ndarray

    @classmethod
    def of_graphs(cls, graphs) -> GraphColumns:
        graphs = list(graphs)
        n = np.array([g.n for g in graphs], dtype=np.int64)
        sizes = np.array([len(g.relation) for g in graphs], dtype=np.int64)

        def cat(arrays, dtype):
            return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays]) if graphs else np.zeros(0, dtype)

        return cls(
            n,
            [g.category for g in graphs],
            np.array([g.scores is not None for g in graphs], dtype=bool),
            np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if graphs else np.zeros(0, np.int64),
            cat((np.full(g.n, np.nan) if g.scores is None else g.scores for g in graphs), float),
            np.repeat(np.arange(len(graphs)), sizes),
            cat((g.first for g in graphs), np.int64),
            cat((g.second for g in graphs), np.int64),
            cat((g.relation for g in graphs), np.int8),
            cat((np.full(len(g.relation), np.nan) if g.entropy is None else g.entropy for g in graphs), float),
        )

    def codes(self, prompts=None) -> tuple[np.ndarray, list]:
        """Each prompt's category code (-1 outside `prompts`, a mask) and the categories, in order of first use."""
        index, out = {}, np.full(len(self.n), -1, dtype=np.int64)
        for i in range(len(self.n)) if prompts is None else np.flatnonzero(prompts).tolist():
            out[i] = index.setdefault(self.category[i], len(index))
        return out, list(index)


def conflict_ratio(graphs, delta: float = 0.0) -> dict:
    """Pointwise-vs-pairwise conflicts, pooled over prompts (and per category).

    A pair with both scores and a relation expects a tie when |s_x - s_y| < delta or s_x == s_y, else the score
    order; any other relation is a conflict (so with continuous scores a pairwise tie is a conflict).

    Returns:
        `{"ratio", "conflicts", "pairs", "by_category": {category: {"ratio", "conflicts", "pairs"}}, "agreement"}`;
        a ratio is `None` when no pair has both scores and a relation. `agreement[e][o]` counts pairs whose scores
        expect relation e and whose pairwise relation is o, both indexed +1, 0, -1 as 0, 1, 2.

    ```python
    >>> g = PreferenceGraph.from_edges(3, [(0, 1, 1), (1, 2, -1), (0, 2, 0)], scores=[3.0, 2.0, 1.0])
    >>> conflict_ratio([g])["conflicts"], conflict_ratio([g])["pairs"]  # 1 < 2 and the tie 0 = 2 conflict
    (2, 3)

    ```
    """
    cols = graphs if isinstance(graphs, GraphColumns) else GraphColumns.of_graphs(graphs)
    return _conflict_ratio(cols, delta)


def _conflict_ratio(c: GraphColumns, delta: float) -> dict:
    if delta < 0 or math.isnan(delta):
        raise ValueError(f"delta must be >= 0, got {delta}")
    # A category is listed once a scored prompt of it has a pair, even with no pair scored on both sides.
    touched = c.scored & (np.bincount(c.prompt, minlength=len(c.n)) > 0)
    code, categories = c.codes(touched)
    on = touched[c.prompt]
    start = c.node_start[c.prompt]
    sx, sy = c.scores[start + c.first], c.scores[start + c.second]
    known = on & ~(np.isnan(sx) | np.isnan(sy))
    diff = (sx - sy)[known]
    expected = np.where((np.abs(diff) < delta) | (diff == 0), 0, np.sign(diff))
    relation = c.relation[known]
    where = code[c.prompt[known]]
    conflicts = np.bincount(where[relation != expected], minlength=len(categories)).tolist()
    pairs = np.bincount(where, minlength=len(categories)).tolist()
    cell = (1 - expected.astype(np.int64)) * 3 + (1 - relation.astype(np.int64))
    agreement = np.bincount(cell, minlength=9).reshape(3, 3)

    def entry(c, p):
        return {"ratio": c / p if p else None, "conflicts": c, "pairs": p}

    counts = dict(zip(categories, zip(conflicts, pairs)))
    by_category = {k: entry(*v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])) if k is not None}
    return entry(sum(conflicts), sum(pairs)) | {"by_category": by_category, "agreement": agreement.tolist()}


@lru_cache(maxsize=256)
def _subsets(n: int, k: int) -> np.ndarray:
    """The k-subsets of n candidates in lexicographic order, as rows (for k = 3: the triples `triple_status` rates).
    For k > 3, each row holds instead the indices of the (k-1)-subsets left without each of its first 4 members
    (lexicographic order): every triple of a k-subset misses one of any 4 of its members, so the triples of those
    (k-1)-subsets are all its triples, and a k-subset's status is the OR of theirs (4 gathers, not C(k, 3))."""
    subsets = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    if k == 3:
        return subsets
    place = n ** np.arange(k - 2, -1, -1, dtype=np.int64)  # (k-1)-subsets as base-n numbers: sorted, as listed
    keys = np.array(list(itertools.combinations(range(n), k - 1)), dtype=np.int64).reshape(-1, k - 1) @ place
    return np.stack([np.searchsorted(keys, np.delete(subsets, x, axis=1) @ place) for x in range(4)], axis=1)


def triple_status(R: np.ndarray) -> np.ndarray:
    """Status bits of every triple of stacked relation matrices R (G, n, n) -> (G, C(n, 3)) uint8."""
    i, j, k = _subsets(R.shape[-1], 3).T
    op1, op2, op3 = R[:, i, j], R[:, j, k], R[:, i, k]  # int8 throughout: 8x less memory traffic than int64
    unknown = (op1 == MISSING) | (op2 == MISSING) | (op3 == MISSING)
    code = np.where(unknown, 0, (op1 + 1) * 9 + (op2 + 1) * 3 + (op3 + 1))
    return np.where(unknown, UNKNOWN, _STATUS[code]).astype(np.uint8)


def non_transitivity(graphs, k: int = 3, chunk: int = 1 << 22) -> dict:
    """NTR_k: the fraction of k-subsets (all pairs known) containing a bad triple, pooled over prompts.

    Returns:
        `{"ratio", "subsets", "bad", "equal", "circle", "equal_ratio", "circle_ratio", "left_out"}`: `subsets`
        counts the k-subsets with every pair known, `bad` those with at least one bad triple (`equal` / `circle`:
        with one of that type; a subset can hold both), `left_out` the k-subsets skipped for a missing pair.
        Ratios are `None` when no subset is complete.

    ```python
    >>> cycle = PreferenceGraph.from_edges(4, [(0, 1, 1), (1, 2, 1), (2, 0, 1), (0, 3, 1), (1, 3, 1), (2, 3, 1)])
    >>> r = non_transitivity([cycle], k=3)  # the triple {0, 1, 2} is a circle, the other 3 triples are good
    >>> r["ratio"], r["circle"], r["subsets"]
    (0.25, 1, 4)

    ```
    """
    cols = graphs if isinstance(graphs, GraphColumns) else GraphColumns.of_graphs(graphs)
    return _ntr_entry(_ntr_counts(cols, (k,), np.zeros(len(cols.n), np.int64), 1, chunk)[0, 0])


def _ntr_counts(c: GraphColumns, ks, code: np.ndarray, n_codes: int, chunk: int = 1 << 22) -> np.ndarray:
    """Subset status counts (len(ks), n_codes, 8) of each k by each prompt's `code` (a category).

    Prompts of one size are stacked into (G, n, n) relation matrices, a chunk of them at a time; each triple gets
    its status once, and each k-subset the OR of its triples' statuses (through k - 1: `_subsets`).
    """
    for k in ks:
        if k < 3:
            raise ValueError(f"k must be >= 3, got {k}")
    counts = np.zeros((len(ks), n_codes, 8), dtype=np.int64)
    edge_size = c.n[c.prompt]
    for n in np.unique(c.n[c.n >= min(ks, default=3)]).tolist():
        group = np.flatnonzero(c.n == n)
        local = np.full(len(c.n), -1, dtype=np.int64)
        local[group] = np.arange(len(group))
        edges = np.flatnonzero(edge_size == n)
        edges = edges[np.argsort(local[c.prompt[edges]], kind="stable")]  # by prompt, each prompt's in order
        at = local[c.prompt[edges]]
        top = max((k for k in ks if k <= n), default=0)
        if not top:  # no k asked for (`ks=()`)
            continue
        step = max(1, chunk // (4 * max(math.comb(n, k) for k in range(3, top + 1))))
        for lo in range(0, len(group), step):
            hi = min(lo + step, len(group))
            e = edges[np.searchsorted(at, lo) : np.searchsorted(at, hi)]
            R = np.full((hi - lo, n, n), MISSING, dtype=np.int8)
            g = local[c.prompt[e]] - lo
            R[g, c.first[e], c.second[e]] = c.relation[e]  # as `PreferenceGraph.matrix`, a graph at a time
            R[g, c.second[e], c.first[e]] = -c.relation[e]
            flags = triple_status(R)  # then k = 4, 5, ... from k - 1
            where = code[group[lo:hi]]
            for k in range(3, top + 1):
                if k > 3:
                    down = _subsets(n, k)
                    flags = flags[:, down[:, 0]] | flags[:, down[:, 1]] | flags[:, down[:, 2]] | flags[:, down[:, 3]]
                if k not in ks:
                    continue
                cats = np.unique(where).tolist()
                for cat in cats:  # a count per status value: 30x faster than a bincount of int64 codes
                    mine = flags if len(cats) == 1 else flags[where == cat]
                    found = [np.count_nonzero(mine == v) for v in range(8)]
                    for i in (i for i, k_ in enumerate(ks) if k_ == k):
                        counts[i, cat] += found
    return counts


def _ntr_entry(counts: np.ndarray) -> dict:
    bits = np.arange(8)
    known = counts[(bits & UNKNOWN) == 0]
    subsets, left_out = int(known.sum()), int(counts.sum() - known.sum())
    bad = int(known[1:].sum())  # known flags are 0, 2, 4, 6 -> any nonzero is bad
    equal = int(counts[(bits & UNKNOWN == 0) & (bits & EQUAL != 0)].sum())
    circle = int(counts[(bits & UNKNOWN == 0) & (bits & CIRCLE != 0)].sum())

    def ratio(x):
        return x / subsets if subsets else None

    return {
        "ratio": ratio(bad),
        "subsets": subsets,
        "bad": bad,
        "equal": equal,
        "circle": circle,
        "equal_ratio": ratio(equal),
        "circle_ratio": ratio(circle),
        "left_out": left_out,
    }


_HISTOGRAM_BINS = 20


def _bin_width(low: float, high: float) -> float:
    """A power of two near (high - low) / 20: bins on a grid of multiples of it merge exactly across shards (a
    wider range only ever asks for a width that is a multiple of a narrower range's)."""
    span = high - low
    return 2.0 ** math.ceil(math.log2(span / _HISTOGRAM_BINS)) if span > 0 else 1.0


def _grid_histogram(first: int, counts, width: float, low: float, high: float) -> dict:
    return {
        "edges": [(first + i) * width for i in range(len(counts) + 1)],
        "counts": [int(c) for c in counts],
        "width": width,
        "min": low,
        "max": high,
    }


def _histogram(arrays) -> dict | None:
    """Counts on a grid of bins `[i w, (i + 1) w)`, w a power of two: see `merge_histograms`."""
    values = np.concatenate([np.asarray(a, dtype=float) for a in arrays] or [np.zeros(0)])
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    width = _bin_width(low, high)
    index = np.floor(values / width).astype(np.int64)  # exact: dividing by a power of two
    first = int(index.min())
    return _grid_histogram(first, np.bincount(index - first), width, low, high)


def merge_histograms(parts) -> dict | None:
    """The histogram of the union of the values behind `parts` (each from `_histogram`), exactly.

    ```python
    >>> merge_histograms([_histogram([[0.0, 1.0]]), _histogram([[3.0, 40.0]])]) == _histogram([[0.0, 1.0, 3.0, 40.0]])
    True

    ```
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    low, high = min(p["min"] for p in parts), max(p["max"] for p in parts)
    width = _bin_width(low, high)
    first = math.floor(low / width)
    counts = np.zeros(math.floor(high / width) - first + 1, dtype=np.int64)
    for p in parts:
        start = round(p["edges"][0] / p["width"])
        for i, c in enumerate(p["counts"]):
            counts[math.floor((start + i) * p["width"] / width) - first] += c
    return _grid_histogram(first, counts, width, low, high)


def _add_counts(parts: list[dict]) -> dict:
    keys = ("subsets", "bad", "equal", "circle", "left_out")
    total = {k: sum(p[k] for p in parts) for k in keys}
    n = total["subsets"]
    ratios = {"ratio": "bad", "equal_ratio": "equal", "circle_ratio": "circle"}
    return {r: (total[k] / n if n else None) for r, k in ratios.items()} | total


def _cr_entry(conflicts: int, pairs: int) -> dict:
    return {"ratio": conflicts / pairs if pairs else None, "conflicts": conflicts, "pairs": pairs}


def _audit(prompts, pairs, conflicts, by_category_cr, agreement, ntr_by_category, ks, delta, scores, entropies):
    """The report layout from counts (shared by `audit_graphs` and `merge_audits`, so both agree exactly)."""
    ntr = {str(k): _add_counts([p[str(k)] for p in ntr_by_category.values()]) for k in ks}
    categories = sorted((c for c in ntr_by_category if c is not None), key=str)
    return {
        "prompts": prompts,
        "pairs": pairs,
        "conflict_ratio": _cr_entry(*conflicts)["ratio"],
        "conflict_counts": {"conflicts": conflicts[0], "pairs": conflicts[1], "delta": delta},
        "conflict_ratio_by_category": {c: _cr_entry(*by_category_cr[c]) for c in sorted(by_category_cr, key=str)},
        "agreement": agreement,
        "non_transitivity": {k: v["ratio"] for k, v in ntr.items()},
        "non_transitivity_counts": ntr,
        "non_transitivity_by_category": {
            c: {k: v["ratio"] for k, v in ntr_by_category[c].items()} for c in categories
        },
        "non_transitivity_counts_by_category": {c: ntr_by_category[c] for c in categories},
        "non_transitivity_counts_uncategorised": ntr_by_category.get(None),
        "score_histogram": scores,
        "entropy_histogram": entropies,
    }


def merge_audits(parts: list[dict]) -> dict:
    """The `audit_graphs` report of the union of disjoint sets of prompts, from theirs: counts added, ratios and
    histograms recomputed, so it equals the report of the whole exactly (how shards of a dataset merge)."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to merge")
    deltas = {p["conflict_counts"]["delta"] for p in parts}
    ks = [list(p["non_transitivity"]) for p in parts]
    if len(deltas) > 1 or any(k != ks[0] for k in ks):
        raise ValueError(f"audits with different delta {sorted(deltas)} or k {ks[0]} vs others: not one run")
    by_cr, by_ntr = defaultdict(lambda: [0, 0]), defaultdict(list)
    for p in parts:
        for c, e in p["conflict_ratio_by_category"].items():
            by_cr[c][0] += e["conflicts"]
            by_cr[c][1] += e["pairs"]
        for c, counts in p["non_transitivity_counts_by_category"].items():
            by_ntr[c].append(counts)
        if p["non_transitivity_counts_uncategorised"] is not None:
            by_ntr[None].append(p["non_transitivity_counts_uncategorised"])
    ntr_by_category = {c: {k: _add_counts([x[k] for x in xs]) for k in ks[0]} for c, xs in by_ntr.items()}
    agreement = np.sum([np.array(p["agreement"]) for p in parts], axis=0).tolist()
    return _audit(
        sum(p["prompts"] for p in parts),
        sum(p["pairs"] for p in parts),
        (sum(p["conflict_counts"]["conflicts"] for p in parts), sum(p["conflict_counts"]["pairs"] for p in parts)),
        {c: tuple(v) for c, v in by_cr.items()},
        agreement,
        ntr_by_category,
        ks[0],
        deltas.pop(),
        merge_histograms(p["score_histogram"] for p in parts),
        merge_histograms(p["entropy_histogram"] for p in parts),
    )


def audit_graphs(graphs, ks=(3, 4, 5), delta: float = 0.0) -> dict:
    """CR and NTR_k of a set of prompts' graphs, in the report layout of `trustreward audit`.

    Returns:
        `{"prompts", "pairs", "conflict_ratio", "conflict_counts", "conflict_ratio_by_category", "agreement",
        "non_transitivity": {"3": ratio, ...}, "non_transitivity_counts": {"3": {...}, ...},
        "non_transitivity_by_category": {category: {"3": ratio, ...}}, "score_histogram", "entropy_histogram"}`
        (histograms `{"edges", "counts"}` or `None` without values; `agreement` as in `conflict_ratio`).
    """
    return audit_columns(GraphColumns.of_graphs(graphs), ks, delta)


def audit_columns(c: GraphColumns, ks=(3, 4, 5), delta: float = 0.0) -> dict:
    """`audit_graphs` of prompts' graphs as columns (how cleaning audits a million pairs)."""
    cr = _conflict_ratio(c, delta)
    code, categories = c.codes()  # NTR per category; the totals are the sums of the categories' counts
    counts = _ntr_counts(c, ks, code, len(categories))
    parts = {cat: {str(k): _ntr_entry(counts[i, j]) for i, k in enumerate(ks)} for j, cat in enumerate(categories)}
    by_category_cr = {cat: (e["conflicts"], e["pairs"]) for cat, e in cr["by_category"].items()}
    return _audit(
        len(c.n),
        len(c.relation),
        (cr["conflicts"], cr["pairs"]),
        by_category_cr,
        cr["agreement"],
        parts,
        [str(k) for k in ks],
        delta,
        _histogram([c.scores]),
        _histogram([c.entropy]),
    )
