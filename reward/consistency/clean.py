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
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..scoring import entropy
from ..text import text_key
from .columns import CONSISTENT, NONE, Edges, Graphs, PairColumns, build_columns
from .graphs import EXACT_MAX_NODES, MAX_EXACT_LIMIT, bfs_arcs_back, min_feedback, strong_labels
from .metrics import audit_columns
from .rejected import Rejects
from .rows import LABELS, BadRow, parse_row

RELATIONS = ("labels", "judge", "both")


def _bar(items, desc: str, progress: bool):
    """`items` under a progress bar when `progress`; tqdm is imported only then (tqdm.auto brings asyncio and
    importlib.metadata: ~0.15 s of every `trustreward clean`, whose shards run without a bar)."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


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


class Edge(NamedTuple):
    """A pair read from a row: candidates x < y of its prompt, r(x, y) (None: unlabelled), and the row's numbers."""

    x: int
    y: int
    relation: int | None
    weight: float
    order_consistent: bool | None
    row: int
    entropy: float | None


class _Prompt:
    """One prompt while rows are read one by one: candidates by text, its edges, the rows that carry each pair."""

    __slots__ = ("prompt", "category", "nodes", "texts", "scores", "edges", "pairs", "seen")

    def __init__(self, prompt, category):
        self.prompt, self.category = prompt, category
        self.nodes: dict[str, int] = {}
        self.texts: list = []
        self.scores: list = []
        self.edges: list[Edge] = []
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


def parse_rows(rows, need_label: bool = True):
    """`(row, parse_row's _Row or the BadRow it raised)` for each row."""
    for r, row in enumerate(rows):
        try:
            yield r, parse_row(row, need_label)
        except BadRow as exc:
            yield r, exc


_new = tuple.__new__  # `_new(Edge, fields)`: a NamedTuple without its Python-level __new__, half the cost per row


def _build(parsed_rows, rejects: Rejects) -> Graphs:
    graphs: dict[str, _Prompt] = {}
    parsed = []
    for r, p in parsed_rows:
        if isinstance(p, BadRow):
            rejects.add(r, "bad-input", str(p))
            continue
        prompt = p.prompt
        k = prompt if type(prompt) is str else text_key(prompt)  # inlined: this loop runs once per row
        g = graphs.get(k)
        if g is None:
            g = graphs[k] = _Prompt(prompt, p.category)
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
            edges.append(_new(Edge, (x, y, relation, weight, consistent, r, ent)))
        else:
            parsed.append((r, g, edges))
            for e in edges:
                g.pairs[(e.x, e.y)].append((r, e.relation))
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
    rejected = set(rejects.rows().tolist())
    for r, g, edges in parsed:
        if r in rejected:
            continue
        if len(edges) == 1:  # the common case, without building lists
            e = edges[0]
            key = (e.x, e.y)
            if key in g.seen:
                first = g.pairs[key][0][0]
                rejects.add(r, "duplicate-pair", "this pair already appears in another row", [first, r])
            else:
                g.seen.add(key)
                g.edges.append(e)
            continue
        fresh = [e for e in edges if (e.x, e.y) not in g.seen]
        g.seen.update((e.x, e.y) for e in fresh)
        g.edges += fresh
    return _graphs_of(list(graphs.values()))


def _graphs_of(prompts: list[_Prompt]) -> Graphs:
    """The prompts' candidates and edges, gathered into columns."""
    edges = [e for g in prompts for e in g.edges]
    x, y, relation, weight, consistent, row, ent = zip(*edges) if edges else ((),) * 7
    relation = np.array([NONE if r is None else r for r in relation], dtype=np.int64)
    columns = Edges(
        np.repeat(np.arange(len(prompts)), [len(g.edges) for g in prompts]).astype(np.int64),
        np.array(x, dtype=np.int64),
        np.array(y, dtype=np.int64),
        relation,
        np.array(weight, dtype=float),
        np.array([CONSISTENT[c] for c in consistent], dtype=np.int8),
        np.array(row, dtype=np.int64),
        relation.copy(),
        np.array([math.nan if v is None else v for v in ent], dtype=float),
    )
    scores = [math.nan if s is None else s for g in prompts for s in g.scores]
    return Graphs.from_columns(
        [g.prompt for g in prompts], [g.category for g in prompts], [len(g.texts) for g in prompts],
        [t for g in prompts for t in g.texts], scores, columns,
    )  # fmt: skip


def _apply_judge(graphs: Graphs, judge, relations: str, rejects: Rejects, need_scores: bool) -> dict:
    """Fresh bidirectional preferences for every pair (and scores for candidates), folded into the graphs."""
    from ..text import as_text

    e = graphs.edges
    prompt, start = e.prompt.tolist(), graphs.node_start[e.prompt]
    xs, ys = (start + e.x).tolist(), (start + e.y).tolist()
    prefs = (
        judge.compare(
            [as_text(graphs.prompts[p]) for p in prompt],
            [as_text(graphs.texts[x]) for x in xs],
            [as_text(graphs.texts[y]) for y in ys],
        )
        if len(prompt)
        else []
    )
    stats = {"judged_pairs": len(prompt), "judge_failures": 0, "judge_contradicts_label": 0}
    labels, rows = e.label_relation.tolist(), e.row.tolist()
    for i, pref in enumerate(prefs):
        label = None if labels[i] == NONE else labels[i]
        if pref.error is not None or pref.verdict is None:
            stats["judge_failures"] += 1
            if relations == "judge" or label is None:
                rejects.add(rows[i], "judge-error", str(pref.error))
            continue
        verdict = LABELS[pref.verdict]
        e.weight[i], e.order_consistent[i] = abs(pref.p_a - pref.p_b), CONSISTENT[pref.order_consistent]
        e.entropy[i] = entropy({"a": pref.p_a, "b": pref.p_b, "tie": pref.p_tie})
        if relations == "judge" or label is None:
            e.relation[i] = verdict
        elif relations == "both" and verdict != 0 and verdict == -label and label != 0:
            stats["judge_contradicts_label"] += 1
            rejects.add(
                rows[i],
                "judge-contradicts-label",
                f"label says {'a' if label == 1 else 'b'} wins, the judge {'a' if verdict == 1 else 'b'} "
                f"(p_a={pref.p_a:.3f}, p_b={pref.p_b:.3f}, p_tie={pref.p_tie:.3f})",
            )
    if need_scores:
        todo = np.arange(len(graphs.texts)) if relations == "judge" else np.flatnonzero(np.isnan(graphs.scores))
        todo = todo.tolist()
        owner = (np.searchsorted(graphs.node_start, todo, side="right") - 1).tolist()
        scores = (
            judge.score([as_text(graphs.prompts[p]) for p in owner], [as_text(graphs.texts[i]) for i in todo])
            if todo
            else []
        )
        for i, s in zip(todo, scores):
            graphs.scores[i] = math.nan if s.expected is None else s.expected  # unknown on failure: no score
        stats["judged_candidates"] = len(todo)
        stats["judge_score_failures"] = sum(s.expected is None for s in scores)
    return stats


@dataclass(slots=True)
class _Run:
    """What the policies share: the graphs, the rejects and counts; a policy drops its pairs in one call."""

    graphs: Graphs
    rejects: Rejects
    stats: dict
    margin: float
    exact_max_nodes: int
    nodes: np.ndarray | None = None  # each edge's (x, y) as node numbers across prompts, (2, edges)
    dead: list = field(default_factory=list)  # edges dropped by the policy running now

    def __post_init__(self):
        e = self.graphs.edges
        start = self.graphs.node_start[e.prompt]
        self.nodes = np.stack([start + e.x, start + e.y])

    def drop(self, edges: np.ndarray, reason: str, detail, evidence=None) -> None:
        """Drops pairs `edges` (in this order), each with its own row as evidence and the rows of `evidence`,
        `(entry, row)`: row `row[i]` is evidence for pair `edges[entry[i]]`."""
        edges = np.asarray(edges, dtype=np.int64)
        rows = self.graphs.edges.row[edges]
        entry, ev = np.arange(len(edges)), rows
        if evidence is not None:
            entry, ev = np.concatenate([entry, evidence[0]]), np.concatenate([ev, evidence[1]])
        self.rejects.add_many(rows, reason, detail, entry, ev)
        self.dead.append(edges)

    def arcs(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The directed arcs winner -> loser (both ways for a tie) of the edges in `edges` (a mask): tails, heads
        (node numbers across prompts) and the edge of each."""
        rel, (gx, gy) = self.graphs.edges.relation, self.nodes
        forward, backward = np.flatnonzero(edges & (rel >= 0)), np.flatnonzero(edges & (rel <= 0))
        return (
            np.concatenate([gx[forward], gy[backward]]),
            np.concatenate([gy[forward], gx[backward]]),
            np.concatenate([forward, backward]),
        )

    def same_component(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of the graph of the edges in `edges` (a mask): each node's strongly connected component (its smallest
        node), and per edge whether both its ends are in one."""
        tails, heads, _ = self.arcs(edges)
        label = strong_labels(np.diff(self.graphs.node_start), tails, heads)
        return label, label[self.nodes[0]] == label[self.nodes[1]]

    def paths(self, edges: np.ndarray, starts, goals) -> tuple[np.ndarray, np.ndarray]:
        """The rows along the shortest path start -> goal of each query, over the graph of the edges in `edges`,
        as `(query, row)` arrays (a path's rows together, from the goal back)."""
        tails, heads, edge_of = self.arcs(edges)
        path = bfs_arcs_back(np.diff(self.graphs.node_start), tails, heads, starts, goals)
        query, step = np.nonzero(path >= 0)  # each path's arcs goal first: evidence is sorted per reject anyway
        return query, self.graphs.edges.row[edge_of[path[query, step]]]

    def ends(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Winner and loser (node numbers across prompts) of strict edges."""
        rel, (gx, gy) = self.graphs.edges.relation[edges], self.nodes[:, edges]
        return np.where(rel == 1, gx, gy), np.where(rel == 1, gy, gx)


def _order_inconsistent(run: _Run, live: np.ndarray) -> None:
    consistent = run.graphs.edges.order_consistent
    edges = np.flatnonzero(live & (consistent == 0))
    run.drop(edges, "order-inconsistent", "the judge's verdict flips with the order the responses are shown")
    run.stats["order_unknown"] += int((live & (consistent == -1)).sum())


def _score_conflict(run: _Run, live: np.ndarray) -> None:
    rel, (gx, gy) = run.graphs.edges.relation, run.nodes
    sx, sy = run.graphs.scores[gx], run.graphs.scores[gy]
    known = live & ~(np.isnan(sx) | np.isnan(sy))
    with np.errstate(invalid="ignore"):
        against = np.where(rel == 1, sy - sx, np.where(rel == -1, sx - sy, np.abs(sx - sy)))
        conflict = np.flatnonzero(known & (against > run.margin))
    details = [
        f"pairwise {'tie' if r == 0 else 'win'} vs scores {a:.3f}, {b:.3f}"
        for r, a, b in zip(rel[conflict].tolist(), sx[conflict].tolist(), sy[conflict].tolist())
    ]
    run.drop(conflict, "score-conflict", details)


def _equivalence(run: _Run, live: np.ndarray) -> None:
    # A tie inside a strongly connected component that holds a strict pair lies on a closed walk
    # x = y >= ... > ... >= x: the tie contradicts the strict pair through the tie chain.
    rel = run.graphs.edges.relation
    label, inside = run.same_component(live)
    comp = label[run.nodes[0]]
    strict = np.flatnonzero(live & (rel != 0) & inside)
    comps, first = np.unique(comp[strict], return_index=True)  # each component's first strict pair
    ties = np.flatnonzero(live & (rel == 0) & np.isin(comp, comps))
    pair = strict[first[np.searchsorted(comps, comp[ties])]]
    w, l_ = run.ends(pair)
    (gx, gy), k = run.nodes[:, ties], len(ties)
    query, rows = run.paths(live, np.concatenate([l_, gy]), np.concatenate([gx, w]))  # l -> x, then y -> w
    evidence = np.concatenate([query % max(k, 1), np.arange(k)]), np.concatenate([rows, run.graphs.edges.row[pair]])
    run.drop(ties, "equivalence", "a tie contradicted by a strict pair through a chain of ties", evidence)


def _min_feedback(run: _Run, live: np.ndarray) -> None:
    # Only prompts with a cycle of strict pairs have anything to drop (or components to count).
    e = run.graphs.edges
    strict = live & (e.relation != 0)
    label, inside = run.same_component(strict)
    win, lose = run.ends(np.arange(len(e.relation)))  # meaningful for the strict pairs, which are all it reads
    sizes, out = np.diff(run.graphs.node_start), []
    for p in np.unique(e.prompt[strict & inside]).tolist():
        lo = run.graphs.edge_start[p]
        edges = lo + np.flatnonzero(strict[lo : run.graphs.edge_start[p + 1]])
        lo_node = run.graphs.node_start[p]
        comp = (label[lo_node : lo_node + sizes[p]] - lo_node).tolist()  # the components, found already
        pairs = list(zip((win[edges] - lo_node).tolist(), (lose[edges] - lo_node).tolist()))
        weights = dict(zip(pairs, e.weight[edges].tolist()))
        dropped, methods = min_feedback(int(sizes[p]), weights, run.exact_max_nodes, comp)
        for k, v in methods.items():
            run.stats["min_feedback_components"][k] += v
        out += [i for i, pair in zip(edges.tolist(), pairs) if pair in dropped]
    out = np.array(out, dtype=np.int64)
    w, l_ = run.ends(out)
    detail = "on a cycle; in the least-weight set of pairs that breaks every cycle"
    run.drop(out, "min-feedback", detail, run.paths(strict, l_, w))


def _drop_cycles(run: _Run, live: np.ndarray) -> None:
    _, inside = run.same_component(live)
    edges = np.flatnonzero(live & (run.graphs.edges.relation != 0) & inside)
    w, l_ = run.ends(edges)
    run.drop(edges, "cycle", "a strict pair on a cycle of preferences", run.paths(live, l_, w))


# The policies in the order they run, whatever order they are asked in. Each sees the pairs that survived the
# policies before it (`live`), and drops pairs through `run.drop`.
POLICY_TABLE = (
    ("order-inconsistent", _order_inconsistent),
    ("score-conflict", _score_conflict),
    ("equivalence", _equivalence),
    ("min-feedback", _min_feedback),
    ("drop-cycles", _drop_cycles),
)
POLICIES = tuple(name for name, _ in POLICY_TABLE)


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
    parsed = parse_rows(_bar(rows, "reading rows", progress), need_label)
    reasons, report = clean_parsed(
        parsed, len(rows), policies, judge, relations, margin, delta, ks, exact_max_nodes, progress
    )
    ids = range(len(rows)) if row_ids is None else [int(i) for i in row_ids]
    rejected = [
        {"row_index": ids[r], "reason": reason, "detail": detail, "evidence_rows": [ids[x] for x in evidence],
         "row": rows[r]}
        for r, (reason, detail, evidence) in sorted(reasons.items())
    ]  # fmt: skip
    gone = np.zeros(len(rows), dtype=bool)
    gone[reasons.rows] = True
    kept_index = np.flatnonzero(~gone).tolist()
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
    Returns `(rejected, report)`: `rejected` a `Rejected`, the mapping `{row: (reason, detail, evidence)}`.
    """
    rejects = Rejects()
    with _no_gc():
        graphs = build_columns(parsed, rejects) if isinstance(parsed, PairColumns) else _build(parsed, rejects)
    stats = {"order_unknown": 0, "min_feedback_components": {"exact": 0, "eades-lin-smyth": 0}}
    if judge is not None:
        stats |= _apply_judge(
            graphs, judge, relations, rejects, need_scores="score-conflict" in policies or relations == "judge"
        )

    def usable():
        return ~rejects.mask(n_rows)[graphs.edges.row] & (graphs.edges.relation != NONE)

    with _no_gc():
        live = usable()
        before = graphs.metrics(live)
        run = _Run(graphs, rejects, stats, margin, exact_max_nodes)
        todo = [(name, policy) for name, policy in POLICY_TABLE if name in policies]
        for _, policy in _bar(todo, "cleaning", progress and bool(policies)):
            policy(run, live)
            for dead in run.dead:
                live[dead] = False
            run.dead = []
        after = graphs.metrics(usable()) if policies else before
        rejected = rejects.done()
        rows_rejected = len(rejected)
        report = {
            "rows_in": n_rows,
            "rows_kept": n_rows - rows_rejected,
            "rows_rejected": rows_rejected,
            "rejected_by_reason": rejected.counts(),
            "policies": [p for p in POLICIES if p in policies],
            "relations": relations if judge is not None else "labels",
            "margin": margin,
            "min_feedback_exact_max_nodes": exact_max_nodes,
            **stats,
            "before": audit_columns(before, ks, delta),
        }
        report["after"] = audit_columns(after, ks, delta) if policies else report["before"]  # no policy: no change
    return rejected, report
