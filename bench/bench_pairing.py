"""Pairwise group reward, G = 8: `adaptive` pairing vs `all` on the same groups (cost and agreement).

`all` judges the 28 pairs of a group in both orders; `adaptive` scores the 8 answers pointwise first and
compares only pairs whose expected scores are within a margin (closest first, at most a budget per group). For
each group: prompt tokens run through the model (with the prefix cache, the work actually done), wall time,
and agreement with `all`: Spearman's rank correlation of the 8 rewards and the largest reward difference.

    python bench/bench_pairing.py [--groups 3] [--margin 0.5] [--budget 8] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import group, judge, timed

from trainers import JudgePairwiseReward


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(x, y) -> float:
    rx, ry = ranks(x), ranks(y)
    if statistics.pstdev(rx) == 0 or statistics.pstdev(ry) == 0:
        return float("nan")
    return statistics.correlation(rx, ry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="CI: one group of 4, fails only if adaptive costs more")
    args = parser.parse_args()
    n_groups, size = (1, 4) if args.quick else (args.groups, args.size)
    if args.quick:  # 2 of the 6 pairs at most: adaptive must cost less than all
        args.budget = 2
    j = judge(batch_size=128)
    strategies = {
        "all": JudgePairwiseReward(j),
        "adaptive": JudgePairwiseReward(j, pairing="adaptive", adaptive_margin=args.margin,
                                        max_pairs_per_group=args.budget),
    }  # fmt: skip
    totals = {name: [0, 0.0] for name in strategies}
    agreement = []
    for g in range(n_groups):
        question, answers = group(size, question=g)
        rewards = {}
        for name, reward in strategies.items():
            j.backend.forward_tokens = 0
            rewards[name], t = timed(reward, prompts=[question] * size, completions=answers)
            totals[name][0] += j.backend.forward_tokens
            totals[name][1] += t
        rho = spearman(rewards["all"], rewards["adaptive"])
        gap = max(abs(a - b) for a, b in zip(rewards["all"], rewards["adaptive"]))
        agreement.append((rho, gap))
        print(f"group {g}: Spearman {rho:.2f}, max |reward difference| {gap:.3f}", flush=True)
    (t_all, s_all), (t_ad, s_ad) = totals["all"], totals["adaptive"]
    rhos = [r for r, _ in agreement if r == r]
    print(f"{n_groups} groups of {size}: all {t_all} tokens / {s_all:.1f} s; adaptive {t_ad} tokens / {s_ad:.1f} s "
          f"= {t_ad / t_all:.2f}x the tokens, {s_all / s_ad:.2f}x faster; mean Spearman with all "
          f"{statistics.fmean(rhos) if rhos else float('nan'):.2f}")  # fmt: skip
    if args.quick and t_ad > t_all:
        print("FAIL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
