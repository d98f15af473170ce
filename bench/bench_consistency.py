"""Consistency at dataset scale: `audit` (CR, NTR_3/4/5) and `clean` on ~1M synthetic pairwise relations.

Prints wall times and the speed-up over a straightforward baseline (itertools subset enumeration for NTR,
networkx `simple_cycles` for cycle dropping) run on a sample of the same graphs in the same run.

    python bench/bench_consistency.py            # 1,000,000 relations (the issue's target: <= 10 s each, >= 50x)
    python bench/bench_consistency.py --quick    # 20,000 relations, CI: checks results, never times

Synthetic data: graphs of 3 to 20 candidates; each candidate gets a random quality level (equal levels are
planted ties), relations follow the levels, then 5% are flipped (planted cycles) and 5% left unknown.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import networkx as nx
import numpy as np

from reward.consistency import TRIPLE_TABLE, PreferenceGraph, audit_graphs, clean_dataset


def synthetic(n_relations: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    graphs, total = [], 0
    while total < n_relations:
        n = int(rng.integers(3, 21))
        level = rng.integers(0, n, size=n)
        x, y = np.triu_indices(n, 1)
        keep = rng.random(len(x)) > 0.05
        x, y = x[keep], y[keep]
        rel = np.sign(level[x] - level[y]).astype(np.int8)
        flip = rng.random(len(x)) < 0.05
        rel[flip] = -rel[flip] if rng.random() < 0.5 else rng.choice([-1, 0, 1], size=flip.sum())
        scores = level + rng.normal(0, 0.5, size=n)
        graphs.append(PreferenceGraph(n, x, y, rel, scores, category=f"c{len(graphs) % 8}"))
        total += len(x)
    return graphs


def rows_of(graphs):
    label = {1: "a", -1: "b", 0: "tie"}
    return [
        {"prompt": f"prompt {g_id}", "response_a": f"answer {x}", "response_b": f"answer {y}", "label": label[int(r)]}
        for g_id, g in enumerate(graphs)
        for x, y, r in zip(g.first.tolist(), g.second.tolist(), g.relation.tolist())
    ]


def baseline_audit(graphs, ks=(3, 4, 5)):
    """Every k-subset enumerated in Python, each triple looked up in the 27-case table."""
    bad = {k: 0 for k in ks}
    for g in graphs:
        R = g.matrix().tolist()
        for k in ks:
            for subset in itertools.combinations(range(g.n), k):
                if any(R[a][b] == 2 for a, b in itertools.combinations(subset, 2)):
                    continue
                bad[k] += any(
                    TRIPLE_TABLE[(R[i][j], R[j][m], R[i][m])] != "good"
                    for i, j, m in itertools.combinations(subset, 3)
                )
    return bad


def baseline_drop_cycles(graphs, budget_s: float = 0.5):
    """networkx `simple_cycles` over each graph (a tie is an arc each way); strict pairs on a cycle are dropped.

    Cycle enumeration is exponential on dense graphs: a graph that runs past `budget_s` is cut short and counted,
    so the baseline's time is then a lower bound (and the speed-up too).
    """
    dropped, capped = 0, 0
    for g in graphs:
        G = nx.DiGraph()
        for x, y, r in zip(g.first.tolist(), g.second.tolist(), g.relation.tolist()):
            G.add_edges_from([(x, y)] * (r >= 0) + [(y, x)] * (r <= 0))
        strict = {
            (x, y) if r == 1 else (y, x)
            for x, y, r in zip(g.first.tolist(), g.second.tolist(), g.relation.tolist())
            if r
        }
        on_cycle, start = set(), time.perf_counter()
        for cycle in nx.simple_cycles(G):
            on_cycle |= set(zip(cycle, cycle[1:] + cycle[:1])) & strict
            if time.perf_counter() - start > budget_s:
                capped += 1
                break
        dropped += len(on_cycle)
    return dropped, capped


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relations", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=100, help="graphs given to the baselines")
    parser.add_argument("--budget", type=float, default=0.5, help="baseline seconds per graph before it is cut")
    parser.add_argument("--quick", action="store_true", help="CI mode: 20k relations, 40 baseline graphs, 0.1 s cap")
    args = parser.parse_args()
    if args.quick:
        args.relations, args.sample, args.budget = 20_000, 40, 0.1
    n_rel = args.relations
    graphs = synthetic(n_rel)
    relations = sum(len(g.relation) for g in graphs)
    print(f"{relations:,} relations in {len(graphs):,} graphs of 3-20 candidates")

    report, t_audit = timed(audit_graphs, graphs, (3, 4, 5))
    print(
        f"audit (CR, NTR_3/4/5), graphs in memory: {t_audit:.2f} s  "
        f"CR={report['conflict_ratio']:.4f} NTR={ {k: round(v, 4) for k, v in report['non_transitivity'].items()} }"
    )
    rows = rows_of(graphs)
    (_, rejected, clean_report), t_drop = timed(clean_dataset, rows, ["drop-cycles"], ks=(), progress=False)
    (_, _, mf_report), t_mf = timed(clean_dataset, rows, ["min-feedback"], ks=(), progress=False)
    print(f"clean drop-cycles, rows in memory: {t_drop:.2f} s  rejected {clean_report['rows_rejected']:,}")
    print(
        f"clean min-feedback, rows in memory: {t_mf:.2f} s  rejected {mf_report['rows_rejected']:,} "
        f"(components exact / heuristic: {mf_report['min_feedback_components']})"
    )

    sample = graphs[:: max(1, len(graphs) // args.sample)][: args.sample]
    sample_rel = sum(len(g.relation) for g in sample)
    ours_sample = audit_graphs(sample, (3, 4, 5))
    base_bad, t_base_audit = timed(baseline_audit, sample)
    assert all(base_bad[k] == ours_sample["non_transitivity_counts"][str(k)]["bad"] for k in (3, 4, 5))
    _, t_ours_sample = timed(audit_graphs, sample, (3, 4, 5))
    (base_drop, capped), t_base_drop = timed(baseline_drop_cycles, sample, args.budget)
    sample_rows = rows_of(sample)
    (_, ours_rejected, _), t_ours_drop = timed(clean_dataset, sample_rows, ["drop-cycles"], ks=(), progress=False)
    assert capped or base_drop == len(ours_rejected), (base_drop, len(ours_rejected))
    # Per relation, full-size ours vs the baseline's rate on the sample.
    audit_ratio = (t_base_audit / sample_rel) / (t_audit / relations)
    drop_ratio = (t_base_drop / sample_rel) / (t_drop / relations)
    print(
        f"baseline on {len(sample)} graphs ({sample_rel:,} relations): audit {t_base_audit:.2f} s "
        f"(ours {t_ours_sample:.3f} s on the same), drop-cycles {t_base_drop:.2f} s (ours {t_ours_drop:.3f} s)"
    )
    at_least = f" (at least: {capped} baseline graphs cut at the time budget)" if capped else ""
    print(f"speed-up per relation: audit {audit_ratio:.0f}x, drop-cycles {drop_ratio:.0f}x{at_least} (goal >= 50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
