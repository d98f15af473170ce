"""The vectorised graph engine against plain references: components, BFS paths, metrics on columns, evidence."""

import random

import networkx as nx
import numpy as np
import pytest

import reward.consistency.graphs as graphs
from reward.consistency import PreferenceGraph, audit_graphs, clean_dataset, components
from reward.consistency.graphs import bfs_paths, bfs_tree, strong_labels
from reward.consistency.metrics import merge_audits


def random_prompts(rng, n_prompts=40, max_n=9, density=0.3):
    """Many prompts' arcs, nodes numbered across prompts: (sizes, tails, heads), at most one arc per pair."""
    sizes = [rng.randint(0, max_n) for _ in range(n_prompts)]
    start = np.concatenate([[0], np.cumsum(sizes)])
    arcs = [(start[p] + u, start[p] + v) for p, n in enumerate(sizes) for u in range(n) for v in range(n)
            if u != v and rng.random() < density]  # fmt: skip
    rng.shuffle(arcs)  # any order: no function may rely on arcs grouped by prompt
    tails, heads = (np.array(c, dtype=np.int64) for c in zip(*arcs)) if arcs else (np.zeros(0, np.int64),) * 2
    return np.array(sizes), tails, heads


@pytest.mark.parametrize("closure_max", [48, 3])  # 3: most prompts through the per-prompt Tarjan instead
def test_strong_labels_match_networkx_and_tarjan(monkeypatch, closure_max):
    monkeypatch.setattr(graphs, "CLOSURE_MAX_NODES", closure_max)
    rng = random.Random(closure_max)
    for _ in range(20):
        sizes, tails, heads = random_prompts(rng, density=rng.choice([0.1, 0.3, 0.6]))
        label = strong_labels(sizes, tails, heads)
        G = nx.DiGraph()
        G.add_nodes_from(range(int(sizes.sum())))
        G.add_edges_from(zip(tails.tolist(), heads.tolist()))
        for comp in nx.strongly_connected_components(G):
            assert {int(label[u]) for u in comp} == {min(comp)}  # one label per component: its smallest node
        start = np.concatenate([[0], np.cumsum(sizes)])
        for p, n in enumerate(sizes.tolist()):  # the same partition as `components`, prompt by prompt
            inside = (tails >= start[p]) & (tails < start[p] + n)
            tarjan = components(n, zip((tails[inside] - start[p]).tolist(), (heads[inside] - start[p]).tolist()))
            mine = label[start[p] : start[p] + n].tolist()
            assert all((tarjan[u] == tarjan[v]) == (mine[u] == mine[v]) for u in range(n) for v in range(n))


@pytest.mark.parametrize("closure_max", [48, 3])
def test_bfs_paths_equal_bfs_tree_paths(monkeypatch, closure_max):
    monkeypatch.setattr(graphs, "CLOSURE_MAX_NODES", closure_max)
    rng = random.Random(10 + closure_max)
    for _ in range(20):
        sizes, tails, heads = random_prompts(rng, density=rng.choice([0.2, 0.4, 0.7]))
        start = np.concatenate([[0], np.cumsum(sizes)])
        arc = {(int(u), int(v)): i for i, (u, v) in enumerate(zip(tails, heads))}
        adj = {}
        for u, v in sorted(arc):
            adj.setdefault(u, []).append(v)
        queries, expected = [], []
        for p, n in enumerate(sizes.tolist()):
            for s in rng.sample(range(n), min(n, 3)):
                prev = bfs_tree(adj, int(start[p] + s))
                for goal in sorted(prev):
                    path, v = [], goal
                    while v != start[p] + s:
                        path.append(arc[(prev[v], v)])
                        v = prev[v]
                    queries.append((int(start[p] + s), goal))
                    expected.append(path[::-1])
        rng.shuffle(pairs := list(zip(queries, expected)))
        got = bfs_paths(sizes, tails, heads, [q[0] for q, _ in pairs], [q[1] for q, _ in pairs])
        assert got == [e for _, e in pairs]
        assert any(len(e) > 2 for e in expected)  # real paths, not only single arcs
    with pytest.raises(ValueError, match="not reachable"):
        bfs_paths(np.array([3]), np.array([0]), np.array([1]), [0], [2])


def test_bfs_paths_follow_the_queue_order_not_the_node_order():
    # 0 -> 2 and 0 -> 1 (queued 1 then 2); 2 -> 3 and 1 -> 4; 3 -> 5 and 4 -> 5. BFS from 0 queues 1, 2, then 4
    # (from 1) before 3 (from 2): 5 is reached from 4, although 3 is the smaller node.
    arcs = [(0, 2), (0, 1), (2, 3), (1, 4), (3, 5), (4, 5)]
    tails, heads = (np.array(c) for c in zip(*arcs))
    assert bfs_paths(np.array([6]), tails, heads, [0], [5]) == [[1, 3, 5]]


def random_graphs(rng, count=60):
    out = []
    for _ in range(count):
        n = rng.randint(0, 8)
        edges = [(i, j, rng.choice((-1, 0, 1))) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.8]
        scores = None if rng.random() < 0.3 else [None if rng.random() < 0.2 else rng.random() * 3 for _ in range(n)]
        g = PreferenceGraph.from_edges(n, edges, scores, rng.choice([None, "math", "code"]))
        if edges and rng.random() < 0.5:
            g.entropy = np.array([np.nan if rng.random() < 0.3 else rng.random() for _ in edges])
        out.append(g)
    return out


def test_audit_of_all_prompts_at_once_equals_the_merge_of_each_prompts_audit():
    # Prompts stacked into columns must not leak into each other: the audit of the union equals merging the
    # audits of single prompts (counts added, ratios recomputed).
    rng = random.Random(3)
    gs = random_graphs(rng)
    for ks, delta in (((3, 4, 5), 0.0), ((3, 6), 0.4)):
        whole = audit_graphs(gs, ks, delta)
        merged = merge_audits([audit_graphs([g], ks, delta) for g in gs])
        histograms = ("score_histogram", "entropy_histogram")  # one prompt's span can be 0: a grid of its own
        assert {k: v for k, v in whole.items() if k not in histograms} == {
            k: v for k, v in merged.items() if k not in histograms
        }
        scores = np.concatenate([g.scores for g in gs if g.scores is not None])
        assert sum(whole["score_histogram"]["counts"]) == int((~np.isnan(scores)).sum())
        assert whole["non_transitivity_counts"]["3"]["bad"] > 0 and whole["conflict_counts"]["conflicts"] > 0


def test_cycle_evidence_is_a_shortest_path_of_kept_relations():
    # Every dropped strict pair w > l has evidence: its own row and the rows of a shortest path l -> w (BFS
    # length) through the prompt's relations, each a row of the same prompt.
    rng = random.Random(5)
    rows = []
    for p in range(30):
        k = rng.randint(3, 9)
        for i in range(k):
            for j in range(i + 1, k):
                if rng.random() < 0.7:
                    label = rng.choice(["a", "b", "tie"] if rng.random() < 0.3 else ["a"])
                    rows.append({"prompt": f"q{p}", "response_a": f"r{i}", "response_b": f"r{j}", "label": label})
    _, rejected, _ = clean_dataset(rows, ["drop-cycles"], progress=False)
    assert len(rejected) > 20

    def arcs(r):
        a, b = int(r["response_a"][1:]), int(r["response_b"][1:])
        return {"a": [(a, b)], "b": [(b, a)], "tie": [(a, b), (b, a)]}[r["label"]]

    for rej in rejected:
        row, i = rej["row"], rej["row_index"]
        ((w, l_),) = arcs(row)
        path = [x for x in rej["evidence_rows"] if x != i]
        assert all(rows[x]["prompt"] == row["prompt"] for x in path)
        G = nx.DiGraph([a for x, r in enumerate(rows) if r["prompt"] == row["prompt"] for a in arcs(r)])
        assert len(path) == nx.shortest_path_length(G, l_, w)
        chain = nx.DiGraph([a for x in path for a in arcs(rows[x])])  # the path's rows lead from l to w
        assert chain.has_node(l_) and nx.has_path(chain, l_, w)
