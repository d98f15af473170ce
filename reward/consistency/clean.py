"""Cleaning preference data: each prompt's preference graph from rows, policies that drop contradictions.

Every input row ends up either kept or rejected with a reason (never silently dropped), in a fixed order:

1. bad input (missing or non-text fields, `chosen == rejected`, NaN / negative / unnormalised probabilities,
   duplicate and conflicting duplicate pairs);
2. the judge, when given: it labels unlabelled pairs, and a label it strictly contradicts is a reason;
3. the policies, always in the order of `POLICIES` whatever order they are asked in.

A row that expands to several pairs (`responses` + `scores`) is rejected whole when any of its pairs is dropped.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from ..scoring import entropy
from ..text import text_key
from .columns import PairColumns, build_columns
from .graphs import EXACT_MAX_NODES, MAX_EXACT_LIMIT, bfs_tree, components, min_feedback
from .metrics import PreferenceGraph, audit_graphs
from .rows import LABELS, BadRow, parse_row

POLICIES = ("order-inconsistent", "score-conflict", "equivalence", "min-feedback", "drop-cycles")
RELATIONS = ("labels", "judge", "both")


@contextlib.contextmanager
def _no_gc():
    """Pauses the cyclic garbage collector: a million rows make millions of small containers, which it would
    rescan again and again (half the run time at 1M rows); the code inside makes no reference cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Graph:
    """One prompt during cleaning: candidates by text, edges (x < y) with the row each came from."""

    def __init__(self, prompt, category):
        self.prompt, self.category = prompt, category
        self.nodes: dict[str, int] = {}
        self.texts: list = []
        self.scores: list = []
        self.edges: list[list] = []  # [x, y, relation, weight, order_consistent, row, label_relation, entropy]
        self.pairs = defaultdict(list)  # (x, y) -> [(row, relation)] of every row that carries the pair
        self.seen: set = set()  # pairs already in `edges`

    def node(self, text, score) -> int:
        k = text_key(text)
        if k not in self.nodes:
            self.nodes[k] = len(self.texts)
            self.texts.append(text)
            self.scores.append(score)
        elif score is not None and self.scores[self.nodes[k]] is None:
            self.scores[self.nodes[k]] = score
        return self.nodes[k]

    def preference_graph(self, alive) -> PreferenceGraph:
        live = [e for e in self.edges if alive(e)]
        g = PreferenceGraph.from_edges(len(self.texts), [(e[0], e[1], e[2]) for e in live], self.scores, self.category)
        if any(e[7] is not None for e in live):
            g.entropy = np.array([math.nan if e[7] is None else e[7] for e in live])
        return g


class _Rejects:
    """The first reason each row is rejected for (policies run in a fixed order, so the first is the earliest)."""

    def __init__(self):
        self.reason: dict[int, tuple[str, str, list[int]]] = {}

    def add(self, row: int, reason: str, detail: str = "", evidence=()):
        self.reason.setdefault(row, (reason, detail, sorted(set(evidence))))


def parse_rows(rows, need_label: bool = True):
    """`(row, parse_row's _Row or the BadRow it raised)` for each row."""
    for r, row in enumerate(rows):
        try:
            yield r, parse_row(row, need_label)
        except BadRow as exc:
            yield r, exc


def _build(parsed_rows, rejects: _Rejects) -> dict:
    graphs: dict[str, _Graph] = {}
    parsed = []
    for r, p in parsed_rows:
        if isinstance(p, BadRow):
            rejects.add(r, "bad-input", str(p))
            continue
        prompt = p.prompt
        k = prompt if type(prompt) is str else text_key(prompt)  # inlined: this loop runs once per row
        g = graphs.get(k)
        if g is None:
            g = graphs[k] = _Graph(prompt, p.category)
        nodes, ids = g.nodes, []
        for text, score in zip(p.responses, p.scores):
            x = nodes.get(text if type(text) is str else text_key(text))
            if x is None or (score is not None and g.scores[x] is None):
                x = g.node(text, score)
            ids.append(x)
        edges = []
        for i, j, relation, weight, consistent, ent in p.pairs:
            x, y = ids[i], ids[j]
            if x == y:
                rejects.add(r, "bad-input", "the two responses are the same text (a self-loop)")
                break
            if x > y:
                x, y, relation = y, x, None if relation is None else -relation
            edges.append([x, y, relation, weight, consistent, r, relation, ent])
        else:
            parsed.append((r, g, edges))
            for e in edges:
                g.pairs[(e[0], e[1])].append((r, e[2]))
    # A pair labelled both ways contradicts itself: every row carrying it goes.
    for pair_rows in (rows for g in graphs.values() for rows in g.pairs.values() if len(rows) > 1):
        if len({rel for _, rel in pair_rows}) > 1:
            for r, _ in pair_rows:
                rejects.add(
                    r,
                    "conflicting-duplicate",
                    "the same pair appears with different labels",
                    [x for x, _ in pair_rows],
                )
    # A repeated pair (same label) would count twice: later single-pair rows go, multi-response rows merge.
    for r, g, edges in parsed:
        if r in rejects.reason:
            continue
        if len(edges) == 1:  # the common case, without building lists
            e = edges[0]
            key = (e[0], e[1])
            if key in g.seen:
                first = g.pairs[key][0][0]
                rejects.add(r, "duplicate-pair", "this pair already appears in another row", [first, r])
            else:
                g.seen.add(key)
                g.edges.append(e)
            continue
        fresh = [e for e in edges if (e[0], e[1]) not in g.seen]
        g.seen.update((e[0], e[1]) for e in fresh)
        g.edges += fresh
    return graphs


def _apply_judge(graphs, judge, relations: str, rejects: _Rejects, need_scores: bool) -> dict:
    """Fresh bidirectional preferences for every pair (and scores for candidates), folded into the graphs."""
    from ..text import as_text

    edges = [(g, e) for g in graphs.values() for e in g.edges]
    prefs = (
        judge.compare(
            [as_text(g.prompt) for g, _ in edges],
            [as_text(g.texts[e[0]]) for g, e in edges],
            [as_text(g.texts[e[1]]) for g, e in edges],
        )
        if edges
        else []
    )
    stats = {"judged_pairs": len(edges), "judge_failures": 0, "judge_contradicts_label": 0}
    for (_, e), pref in zip(edges, prefs):
        if pref.error is not None or pref.verdict is None:
            stats["judge_failures"] += 1
            if relations == "judge" or e[6] is None:
                rejects.add(e[5], "judge-error", str(pref.error))
            continue
        verdict = LABELS[pref.verdict]
        e[3], e[4] = abs(pref.p_a - pref.p_b), pref.order_consistent
        e[7] = entropy({"a": pref.p_a, "b": pref.p_b, "tie": pref.p_tie})
        if relations == "judge" or e[6] is None:
            e[2] = verdict
        elif relations == "both" and verdict != 0 and verdict == -e[6] and e[6] != 0:
            stats["judge_contradicts_label"] += 1
            rejects.add(
                e[5],
                "judge-contradicts-label",
                f"label says {'a' if e[6] == 1 else 'b'} wins, the judge {'a' if verdict == 1 else 'b'} "
                f"(p_a={pref.p_a:.3f}, p_b={pref.p_b:.3f}, p_tie={pref.p_tie:.3f})",
            )
    if need_scores:
        todo = [
            (g, i) for g in graphs.values() for i in range(len(g.texts)) if relations == "judge" or g.scores[i] is None
        ]
        scores = (
            judge.score([as_text(g.prompt) for g, _ in todo], [as_text(g.texts[i]) for g, i in todo]) if todo else []
        )
        for (g, i), s in zip(todo, scores):
            g.scores[i] = s.expected  # None on failure: the pair just has no score
        stats["judged_candidates"] = len(todo)
        stats["judge_score_failures"] = sum(s.expected is None for s in scores)
    return stats


class _Walks:
    """Directed arcs winner -> loser (both ways for a tie) of live edges, and the rows along shortest paths.

    BFS trees are cached per start node: on a dense prompt most dropped pairs share a few start nodes.
    """

    def __init__(self, n: int, edges):
        self.arcs = {}
        for e in edges:
            if e[2] >= 0:
                self.arcs[(e[0], e[1])] = e
            if e[2] <= 0:
                self.arcs[(e[1], e[0])] = e
        self.comp = components(n, self.arcs)
        self.adj = defaultdict(list)
        for u, v in sorted(self.arcs):
            self.adj[u].append(v)
        self.trees = {}

    def rows(self, start: int, goal: int) -> list[int]:
        """Rows of the edges on a shortest path start -> goal (deterministic: neighbours in sorted order)."""
        if start not in self.trees:
            self.trees[start] = bfs_tree(self.adj, start)
        prev, out, v = self.trees[start], [], goal
        while v != start:
            out.append(self.arcs[(prev[v], v)][5])
            v = prev[v]
        return out[::-1]


def _winner_loser(e) -> tuple[int, int]:
    return (e[0], e[1]) if e[2] == 1 else (e[1], e[0])


def _policies(g: _Graph, live: list, policies, margin: float, exact_max_nodes: int, rejects: _Rejects, stats: dict):
    """Runs the policies on one prompt's live edges, recording each dropped edge's row with its evidence."""
    dead = set()

    def drop(e, reason, detail="", evidence=()):
        rejects.add(e[5], reason, detail, [e[5], *evidence])
        dead.add(id(e))

    def survivors():
        return [e for e in live if id(e) not in dead]

    if "order-inconsistent" in policies:
        for e in live:
            if e[4] is False:
                drop(e, "order-inconsistent", "the judge's verdict flips with the order the responses are shown")
            elif e[4] is None:
                stats["order_unknown"] += 1
        live = survivors()
    if "score-conflict" in policies:
        for e in live:
            sx, sy = g.scores[e[0]], g.scores[e[1]]
            if sx is None or sy is None:
                continue
            against = (sy - sx) if e[2] == 1 else (sx - sy) if e[2] == -1 else abs(sx - sy)
            if against > margin:
                drop(e, "score-conflict", f"pairwise {'tie' if e[2] == 0 else 'win'} vs scores {sx:.3f}, {sy:.3f}")
        live = survivors()
    if "equivalence" in policies:
        # A tie inside a strongly connected component that holds a strict pair lies on a closed walk
        # x = y >= ... > ... >= x: the tie contradicts the strict pair through the tie chain.
        walks = _Walks(len(g.texts), live)
        strict = {}
        for e in live:
            if e[2] != 0 and walks.comp[e[0]] == walks.comp[e[1]]:
                strict.setdefault(walks.comp[e[0]], e)
        for e in live:
            if e[2] == 0 and walks.comp[e[0]] in strict:
                s = strict[walks.comp[e[0]]]
                w, l_ = _winner_loser(s)
                evidence = walks.rows(l_, e[0]) + walks.rows(e[1], w) + [s[5]]
                drop(e, "equivalence", "a tie contradicted by a strict pair through a chain of ties", evidence)
        live = survivors()
    if "min-feedback" in policies:
        strict = [e for e in live if e[2] != 0]
        weights = {_winner_loser(e): e[3] for e in strict}
        dropped, methods = min_feedback(len(g.texts), weights, exact_max_nodes)
        for k, v in methods.items():
            stats["min_feedback_components"][k] += v
        walks = _Walks(len(g.texts), strict)
        for e in strict:
            w, l_ = _winner_loser(e)
            if (w, l_) in dropped:
                detail = "on a cycle; in the least-weight set of pairs that breaks every cycle"
                drop(e, "min-feedback", detail, walks.rows(l_, w))
        live = survivors()
    if "drop-cycles" in policies:
        walks = _Walks(len(g.texts), live)
        for e in live:
            if e[2] != 0 and walks.comp[e[0]] == walks.comp[e[1]]:
                w, l_ = _winner_loser(e)
                drop(e, "cycle", "a strict pair on a cycle of preferences", walks.rows(l_, w))


def clean_dataset(
    data,
    policies=("equivalence", "drop-cycles"),
    judge=None,
    relations: str = "both",
    margin: float = 0.0,
    delta: float = 0.0,
    ks=(3, 4, 5),
    exact_max_nodes: int = EXACT_MAX_NODES,
    progress: bool = True,
    row_ids=None,
):
    """Drops contradictory preference rows; every dropped row keeps its reason.

    Args:
        data: a `datasets.Dataset` or a list of row dicts (formats: see `parse_row`).
        policies: any of `POLICIES`; always applied in that order. `[]` only checks the input and measures.
        judge: a `reward.Judge` for fresh bidirectional preferences (and scores, for `score-conflict`).
        relations: with a judge, whose relation builds the graph: `labels`, `judge`, or `both` (labels, the judge
            where a row has none; a label the judge strictly contradicts is a reason).
        margin: `score-conflict` drops a pair whose scores go against its verdict by more than this.
        delta: conflict-ratio tie threshold in the report.
        ks: subset sizes for NTR_k in the report.
        exact_max_nodes: `min-feedback` solves components up to this many candidates exactly, larger ones greedily.
        row_ids: each row's index in the whole dataset, for `row_index` and `evidence_rows` (default: its position);
            a shard of a dataset (all rows of some prompts) is cleaned exactly as within the whole.

    Returns:
        `(kept, rejected, report)`: `kept` the same type as `data` with the kept rows in order; `rejected` a list of
        `{"row_index", "reason", "detail", "evidence_rows", "row"}`; `report` counts and CR / NTR before and after.

    ```python
    >>> rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "b", "rejected": "c"},
    ...         {"prompt": "q", "chosen": "c", "rejected": "a"}, {"prompt": "q", "chosen": "a", "rejected": "d"}]
    >>> kept, rejected, report = clean_dataset(rows, ["drop-cycles"], progress=False)
    >>> [r["row_index"] for r in rejected], report["rows_kept"], report["before"]["non_transitivity"]["3"]
    ([0, 1, 2], 1, 1.0)

    ```
    """
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    if relations not in RELATIONS:
        raise ValueError(f"relations must be one of {RELATIONS}, got {relations!r}")
    if margin < 0 or delta < 0:
        raise ValueError("margin and delta must be >= 0")
    if not 0 <= exact_max_nodes <= MAX_EXACT_LIMIT:
        raise ValueError(f"exact_max_nodes must be in 0..{MAX_EXACT_LIMIT}, got {exact_max_nodes}")
    is_dataset = not isinstance(data, list)
    rows = data.to_list() if is_dataset else data
    need_label = judge is None or relations == "labels"
    parsed = parse_rows(tqdm(rows, desc="reading rows", disable=not progress, leave=False), need_label)
    reasons, report = clean_parsed(
        parsed, len(rows), policies, judge, relations, margin, delta, ks, exact_max_nodes, progress
    )
    ids = range(len(rows)) if row_ids is None else [int(i) for i in row_ids]
    rejected = [
        {"row_index": ids[r], "reason": reason, "detail": detail, "evidence_rows": [ids[x] for x in evidence],
         "row": rows[r]}
        for r, (reason, detail, evidence) in sorted(reasons.items())
    ]  # fmt: skip
    kept_index = [r for r in range(len(rows)) if r not in reasons]
    kept = data.select(kept_index) if is_dataset else [rows[r] for r in kept_index]
    return kept, rejected, report


def clean_parsed(
    parsed,
    n_rows: int,
    policies=("equivalence", "drop-cycles"),
    judge=None,
    relations: str = "both",
    margin: float = 0.0,
    delta: float = 0.0,
    ks=(3, 4, 5),
    exact_max_nodes: int = EXACT_MAX_NODES,
    progress: bool = False,
):
    """The core of `clean_dataset` on parsed rows: `parsed` yields `(row, _Row or BadRow)` for rows 0..n_rows-1
    (from `parse_rows`, or `parse_columns` for Arrow columns), or is a `PairColumns` (built vectorised).
    Returns `({row: (reason, detail, evidence)}, report)`.
    """
    rejects = _Rejects()
    with _no_gc():
        graphs = build_columns(parsed, rejects, _Graph) if isinstance(parsed, PairColumns) else _build(parsed, rejects)
    stats = {"order_unknown": 0, "min_feedback_components": {"exact": 0, "eades-lin-smyth": 0}}
    if judge is not None:
        stats |= _apply_judge(
            graphs, judge, relations, rejects, need_scores="score-conflict" in policies or relations == "judge"
        )

    def usable(e):
        return e[5] not in rejects.reason and e[2] is not None

    with _no_gc():
        before = [g.preference_graph(usable) for g in graphs.values()]
        for g in tqdm(list(graphs.values()), desc="cleaning", disable=not progress or not policies, leave=False):
            _policies(g, [e for e in g.edges if usable(e)], policies, margin, exact_max_nodes, rejects, stats)
        after = [g.preference_graph(usable) for g in graphs.values()] if policies else before
        by_reason = defaultdict(int)
        for reason, _, _ in rejects.reason.values():
            by_reason[reason] += 1
        rows_rejected = len(rejects.reason)
        report = {
            "rows_in": n_rows,
            "rows_kept": n_rows - rows_rejected,
            "rows_rejected": rows_rejected,
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "policies": [p for p in POLICIES if p in policies],
            "relations": relations if judge is not None else "labels",
            "margin": margin,
            "min_feedback_exact_max_nodes": exact_max_nodes,
            **stats,
            "before": audit_graphs(before, ks, delta),
        }
        report["after"] = audit_graphs(after, ks, delta) if policies else report["before"]  # no policy: no change
    return rejects.reason, report
