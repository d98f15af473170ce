"""How consistent is a real judge? CR and NTR of the embedded judge on MT-Bench, discrete vs TrustJudge readings.

For each of the first N MT-Bench questions with a GPT-4 reference, 4 candidates: the reference, its first
third, the reference of another question (off-topic) and the reference with its words shuffled. Every pair is
judged once in both orders and every candidate scored once; the readings below are all taken from those
same judge calls (so the comparison is side by side):

- single order: the verdict of the order (a, b) alone; both orders agree: TrustJudge's discrete baseline
  (disagreement is a tie); likelihood: both orders' probabilities merged (TrustJudge);
- pointwise: the most likely rating (argmax) vs the expected score (TrustJudge), on a 5-point scale.

Low NTR alone is no proof of a good judge: a judge that always picks the first answer shown is perfectly
transitive. So it also prints how often the reference beats the off-topic answer (`ref>off`).

    python bench/bench_judge_consistency.py [--questions 10] [--judge embedded] [--quick]

`--quick` (CI): 1 question, answers <= 40 words; fails when a judgement fails or the merged verdicts are not those of
`reward.scoring.decide_preference` on the same two orders.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from reward import load_judge
from reward.consistency import PreferenceGraph, audit_graphs
from reward.scoring import decide_preference
from trainers.mt_bench import mt_bench_candidates

RELATION = {"a": 1, "b": -1, "tie": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="CI: 1 question; checks results, never times")
    args = parser.parse_args()
    # CI checks the readings, not the judge: one question, answers cut to 40 words (the full run judges 10, whole).
    max_words = None
    if args.quick:
        args.questions, args.max_length, max_words = 1, 512, 40
    judge = load_judge(args.judge, max_length=args.max_length)
    start = time.perf_counter()
    names = ("reference", "truncated", "off_topic", "shuffled")
    candidates = mt_bench_candidates(max_words=max_words)
    groups = [(c["question"], [c["answers"][n] for n in names], c["category"]) for c in candidates]
    groups = groups[: args.questions]
    pairs = [(q, c, x, y) for q, c, _ in groups for x, y in itertools.combinations(range(len(c)), 2)]
    prefs = judge.compare([q for q, *_ in pairs], [c[x] for _, c, x, _ in pairs], [c[y] for _, c, _, y in pairs])
    scores = judge.score([q for q, c, _ in groups for _ in c], [a for _, c, _ in groups for a in c], scale=5)
    elapsed = time.perf_counter() - start
    failures = sum(p.error is not None for p in prefs) + sum(s.error is not None for s in scores)

    def single(p):
        best = max(p.order_ab, key=p.order_ab.get)
        return {"A": "a", "B": "b", "C": "tie"}[best]

    readings = {
        "single order": single,
        "both orders agree": lambda p: decide_preference(p.order_ab, p.order_ba, "baseline").verdict,
        "likelihood (merged)": lambda p: p.verdict,
    }
    print(
        f"{args.questions} questions x 4 candidates: {len(pairs)} pairs (both orders) and {len(scores)} scores "
        f"in {elapsed:.0f} s, {failures} failures"
    )
    # Pair (0, 2) of each question is reference vs off-topic: the reference should win.
    print(f"{'pairwise reading':<22} {'pointwise':<9} {'NTR_3':>7} {'NTR_4':>7} {'CR':>7} {'ties':>6} {'ref>off':>8}")
    for name, read in readings.items():
        for score_name, pick in (("argmax", lambda s: s.argmax), ("expected", lambda s: s.expected)):
            graphs, k, n = [], 0, 0
            for _, cands, category in groups:
                edges = []
                for x, y in itertools.combinations(range(len(cands)), 2):
                    p = prefs[k]
                    k += 1
                    if p.error is None:
                        edges.append((x, y, RELATION[read(p)]))
                graphs.append(
                    PreferenceGraph.from_edges(len(cands), edges, [pick(s) for s in scores[n : n + 4]], category)
                )
                n += 4
            report = audit_graphs(graphs, (3, 4))
            ties = sum(int((g.relation == 0).sum()) for g in graphs) / max(1, sum(len(g.relation) for g in graphs))
            ntr = report["non_transitivity"]
            cr = report["conflict_ratio"]
            ref = sum(read(prefs[6 * i + 1]) == "a" for i in range(len(groups))) / len(groups)
            print(f"{name:<22} {score_name:<9} {ntr['3']:>7.3f} {ntr['4']:>7.3f} {cr:>7.3f} {ties:>6.2f} {ref:>8.2f}")
    merged_ok = all(p.verdict == decide_preference(p.order_ab, p.order_ba).verdict for p in prefs if p.error is None)
    if args.quick and (failures or not merged_ok):
        print(f"FAIL: {failures} failed judgements; merged verdicts right: {merged_ok}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
