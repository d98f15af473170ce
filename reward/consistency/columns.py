"""Preference graphs built from columns: `clean._build` vectorised for pairwise rows read by `rows.pair_arrays`.

A million rows through `_build` cost a dict lookup per candidate and a list per pair in Python; here candidates,
edges and duplicates are found with numpy sorts, and Python only assembles each prompt's `_Graph`. The result is
the same as `_build` on the same rows (tested on rows with duplicates, contradictions, self-loops and bad rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PairColumns:
    """A shard's rows: blocks of `(first row, pair_arrays(...))` in row order, and the bad rows' `BadRow`s."""

    blocks: list = field(default_factory=list)
    bad: dict = field(default_factory=dict)
    n_rows: int = 0


def _codes(pairs, table: dict) -> np.ndarray:
    """Global ids of `(distinct values, index)` pairs, the ids kept in `table` (value -> id) across blocks."""
    uniques, index = pairs
    ids = np.array([table.setdefault(u, len(table)) for u in uniques], dtype=np.int64)
    return ids[index]


def build_columns(cols: PairColumns, rejects, graph_type) -> dict:
    """`_build` for `cols`: the graphs by prompt key, rejects recorded (bad input, self-loops, duplicates)."""
    for r, exc in sorted(cols.bad.items()):
        rejects.add(r, "bad-input", str(exc))
    prompts, texts = {}, {}
    parts = []
    for start, c in cols.blocks:
        ok = np.flatnonzero(c["ok"])
        if not len(ok):
            continue
        cat_values = c["category"][0]
        parts.append({
            "r": ok + start,
            "p": _codes(c["prompt"], prompts)[ok],
            "a": _codes(c["a"], texts)[ok],
            "b": _codes(c["b"], texts)[ok],
            "rel": c["relation"][ok],
            "w": c["weight"][ok],
            "cons": [c["consistent"][i] for i in ok.tolist()],
            "ent": [c["entropy"][i] for i in ok.tolist()],
            "sa": np.array([np.nan if c["score_a"][i] is None else c["score_a"][i] for i in ok.tolist()]),
            "sb": np.array([np.nan if c["score_b"][i] is None else c["score_b"][i] for i in ok.tolist()]),
            "cat": [cat_values[i] for i in c["category"][1][ok].tolist()],
        })  # fmt: skip
    if not parts:
        return {}
    cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
    r, p, a, b, rel, w, sa, sb = (cat(k) for k in ("r", "p", "a", "b", "rel", "w", "sa", "sb"))
    cons = [x for part in parts for x in part["cons"]]
    ent = [x for part in parts for x in part["ent"]]
    category = [x for part in parts for x in part["cat"]]
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
    # Each prompt's graph: candidates and edges (in row order), as `_build` makes them.
    edge_rows = np.array(sorted(edge_rows), dtype=np.int64)
    prompt_values = list(prompts)
    text_values = list(texts)
    first_row_of_prompt = {}
    for i, pid in enumerate(p.tolist()):
        if pid not in first_row_of_prompt:
            first_row_of_prompt[pid] = i
    graphs = {}
    node_text = uniq % n_texts
    by_prompt_nodes = np.split(order, np.flatnonzero(np.diff(sorted_prompt)) + 1)
    nodes_of = {int(node_prompt[g[0]]): g for g in by_prompt_nodes if len(g)}
    edge_prompt = p[edge_rows]
    e_order = edge_rows[np.argsort(edge_prompt, kind="stable")]
    e_split = np.split(e_order, np.flatnonzero(np.diff(np.sort(edge_prompt, kind="stable"))) + 1)
    edges_of = {int(p[g[0]]): g for g in e_split if len(g)}
    rel_l, w_l, lo_l, hi_l, r_l = rel.tolist(), w.tolist(), lo.tolist(), hi.tolist(), r.tolist()
    for pid, first_i in sorted(first_row_of_prompt.items(), key=lambda kv: kv[1]):
        prompt = prompt_values[pid]
        g = graph_type(prompt, category[first_i])
        nodes = nodes_of[pid]
        g.texts = [text_values[t] for t in node_text[nodes].tolist()]
        g.scores = [None if s != s else s for s in node_score[nodes].tolist()]
        g.nodes = {t: i for i, t in enumerate(g.texts)}
        for i in edges_of.get(pid, np.zeros(0, np.int64)).tolist():
            relation = None if rel_l[i] == -2 else rel_l[i]
            g.edges.append([lo_l[i], hi_l[i], relation, w_l[i], cons[i], r_l[i], relation, ent[i]])
        graphs[prompt] = g
    return graphs
