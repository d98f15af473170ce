"""Preference graphs built from columns: `clean._build` vectorised for pairwise rows read by `rows.pair_arrays`.

A million rows through `_build` cost a dict lookup per candidate and a record per pair in Python; here candidates,
edges and duplicates are found with numpy sorts, straight into the columns of `Graphs` that the policies and the
metrics read. The result is the same as `_build` on the same rows (tested on rows with duplicates, contradictions,
self-loops and bad rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import GraphColumns

NONE = -2  # relation code of a pair without a relation (unlabelled, before the judge)
CONSISTENT = {True: 1, False: 0, None: -1}  # order_consistent as a code


@dataclass
class PairColumns:
    """A shard's rows: blocks of `(first row, pair_arrays(...))` in row order, and the bad rows' `BadRow`s."""

    blocks: list = field(default_factory=list)
    bad: dict = field(default_factory=dict)
    n_rows: int = 0


@dataclass(slots=True)
class Edges:
    """Every prompt's pairs as columns: each prompt's together, in row order; x < y candidates of the prompt.

    `relation` and `label_relation` (the row's own) are r(x, y), `NONE` where unknown; `order_consistent` is 1, 0
    or -1 (unknown); `entropy` NaN where unknown.
    """

    prompt: np.ndarray
    x: np.ndarray
    y: np.ndarray
    relation: np.ndarray
    weight: np.ndarray
    order_consistent: np.ndarray
    row: np.ndarray
    label_relation: np.ndarray
    entropy: np.ndarray


@dataclass(slots=True)
class Graphs:
    """A shard's prompts during cleaning: prompt p's candidates are nodes `node_start[p]..node_start[p + 1] - 1`
    (`texts`, `scores`: NaN where unknown), its pairs `edge_start[p]..edge_start[p + 1] - 1` of `edges`."""

    prompts: list
    categories: list
    node_start: np.ndarray
    texts: list
    scores: np.ndarray
    edges: Edges
    edge_start: np.ndarray

    @classmethod
    def from_columns(cls, prompts, categories, sizes, texts, scores, edges: Edges) -> Graphs:
        node_start = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]).astype(np.int64)
        edge_start = np.searchsorted(edges.prompt, np.arange(len(prompts) + 1)).astype(np.int64)
        return cls(prompts, categories, node_start, texts, np.asarray(scores, dtype=float), edges, edge_start)

    def metrics(self, keep: np.ndarray) -> GraphColumns:
        """The graphs of the pairs in `keep`, as the metrics read them (every candidate counts, kept pairs or not)."""
        e, idx = self.edges, np.flatnonzero(keep)
        sizes = np.diff(self.node_start)
        return GraphColumns(
            sizes, self.categories, np.ones(len(sizes), dtype=bool), self.node_start[:-1], self.scores,
            e.prompt[idx], e.x[idx], e.y[idx], e.relation[idx].astype(np.int8), e.entropy[idx],
        )  # fmt: skip


def _codes(pairs, table: dict) -> np.ndarray:
    """Global ids of `(distinct values, index)` pairs, the ids kept in `table` (value -> id) across blocks."""
    uniques, index = pairs
    ids = np.array([table.setdefault(u, len(table)) for u in uniques], dtype=np.int64)
    return ids[index]


def build_columns(cols: PairColumns, rejects) -> Graphs:
    """`_build` for `cols`: the graphs by prompt key, rejects recorded (bad input, self-loops, duplicates)."""
    for r, exc in sorted(cols.bad.items()):
        rejects.add(r, "bad-input", str(exc))
    prompts, texts, categories = {}, {}, {}
    parts = []
    for start, c in cols.blocks:
        ok = np.flatnonzero(c["ok"])
        if not len(ok):
            continue
        parts.append({
            "r": ok + start,
            "p": _codes(c["prompt"], prompts)[ok],
            "a": _codes(c["a"], texts)[ok],
            "b": _codes(c["b"], texts)[ok],
            "rel": c["relation"][ok],
            "w": c["weight"][ok],
            "cons": c["consistent"][ok],
            "ent": c["entropy"][ok],
            "sa": c["score_a"][ok],
            "sb": c["score_b"][ok],
            "cat": _codes(c["category"], categories)[ok],
        })  # fmt: skip
    if not parts:
        return _no_graphs()
    cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
    r, p, a, b, rel, w, sa, sb = (cat(k) for k in ("r", "p", "a", "b", "rel", "w", "sa", "sb"))
    cons, ent, category = cat("cons"), cat("ent"), cat("cat")
    n_texts = len(texts)
    # Candidates: (prompt, text) in order of first appearance, a before b, numbered within each prompt.
    ev_key = np.stack([p * n_texts + a, p * n_texts + b], axis=1).ravel()
    uniq, first, inv = np.unique(ev_key, return_index=True, return_inverse=True)
    node_prompt = uniq // n_texts
    order = np.lexsort((first, node_prompt))
    sorted_prompt = node_prompt[order]
    group_start = np.searchsorted(sorted_prompt, sorted_prompt, side="left")
    local = np.empty(len(uniq), dtype=np.int64)
    local[order] = np.arange(len(uniq)) - group_start
    ev_score = np.stack([sa, sb], axis=1).ravel()
    has = np.flatnonzero(~np.isnan(ev_score))
    node_score = np.full(len(uniq), np.nan)
    scored, first_scored = np.unique(inv[has], return_index=True)  # a candidate's first known score
    node_score[scored] = ev_score[has[first_scored]]
    x, y = local[inv[0::2]], local[inv[1::2]]
    for i in np.flatnonzero(x == y).tolist():
        rejects.add(int(r[i]), "bad-input", "the two responses are the same text (a self-loop)")
    swap = x > y
    lo, hi = np.where(swap, y, x), np.where(swap, x, y)
    rel = np.where(swap & (rel != -2), -rel, rel)
    # Duplicates: rows of one (prompt, pair); more than one relation among them (none counts) -> all go.
    live = np.flatnonzero(x != y)
    pair_order = live[np.lexsort((r[live], hi[live], lo[live], p[live]))]
    key = np.stack([p[pair_order], lo[pair_order], hi[pair_order]], axis=1)
    new_group = np.ones(len(pair_order), dtype=bool)
    new_group[1:] = (key[1:] != key[:-1]).any(axis=1)
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, len(pair_order)))
    edge_rows = pair_order[starts[sizes == 1]].tolist()
    for s, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = pair_order[s : s + size]
        rows = [int(v) for v in r[members]]
        if len(set(rel[members].tolist())) > 1:
            for row in rows:
                rejects.add(row, "conflicting-duplicate", "the same pair appears with different labels", rows)
        else:
            edge_rows.append(int(members[0]))
            for row in rows[1:]:
                rejects.add(row, "duplicate-pair", "this pair already appears in another row", [rows[0], row])
    # The prompts in order of their first row, each one's candidates in order, its edges in row order.
    prompt_order = np.unique(p, return_index=True)[1]  # each prompt's first row
    rank = np.full(len(prompts), -1, dtype=np.int64)
    firsts = np.sort(prompt_order)
    rank[p[firsts]] = np.arange(len(firsts))
    nodes = np.lexsort((first, rank[node_prompt]))
    sizes = np.bincount(rank[node_prompt], minlength=len(firsts))
    edge_rows = np.array(sorted(edge_rows), dtype=np.int64)
    edge_rows = edge_rows[np.argsort(rank[p[edge_rows]], kind="stable")]
    rel = rel[edge_rows]
    edges = Edges(rank[p[edge_rows]], lo[edge_rows], hi[edge_rows], rel, w[edge_rows].astype(float),
                  cons[edge_rows], r[edge_rows], rel.copy(), ent[edge_rows].astype(float))  # fmt: skip
    prompt_values, text_values, category_values = list(prompts), list(texts), list(categories)
    return Graphs.from_columns(
        [prompt_values[i] for i in p[firsts].tolist()], [category_values[i] for i in category[firsts].tolist()], sizes,
        [text_values[i] for i in (uniq % n_texts)[nodes].tolist()], node_score[nodes], edges,
    )  # fmt: skip


def _no_graphs() -> Graphs:
    empty = np.zeros(0, dtype=np.int64)
    edges = Edges(empty, empty, empty, empty, np.zeros(0), np.zeros(0, np.int8), empty, empty, np.zeros(0))
    return Graphs.from_columns([], [], empty, [], np.zeros(0), edges)
