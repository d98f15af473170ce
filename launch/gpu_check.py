"""GPU check (a few minutes): the ZeRO-3-sharded judge in bf16 on one GPU against the plain HF backend.

    python launch/gpu_check.py [--judge embedded] [--items 64]

Prints the largest difference in verdict and score probabilities (bf16: expect ~1e-2, not fp32's 1e-5) and
items/s of each backend on the same MT-Bench items.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from reward import load_judge
from trainers.data import mt_bench_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a GPU"
    cands = mt_bench_candidates()
    pairs = [(c["question"], c["answers"][x], c["answers"][y]) for c in cands
             for x, y in itertools.combinations(c["answers"], 2)][: args.items]  # fmt: skip
    singles = [(c["question"], a) for c in cands for a in c["answers"].values()][: args.items]
    results = {}
    for backend in ("hf", "deepspeed"):
        judge = load_judge(args.judge, backend=backend, device="cuda", dtype="bfloat16", progress=False)
        judge.compare(*map(list, zip(*pairs[:2])))  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        prefs = judge.compare(*map(list, zip(*pairs)))
        scores = judge.score(*map(list, zip(*singles)))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        results[backend] = (prefs, scores, (len(pairs) + len(singles)) / elapsed)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{backend}: {results[backend][2]:.1f} items/s, peak memory {peak:.2f} GiB")
        del judge
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    (p1, s1, _), (p2, s2, _) = results["hf"], results["deepspeed"]
    dp = max(abs(getattr(a, k) - getattr(b, k)) for a, b in zip(p1, p2) for k in ("p_a", "p_b", "p_tie"))
    ds = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(s1, s2) for k in a.probs)
    same = sum(a.verdict == b.verdict for a, b in zip(p1, p2)) / len(p1)
    print(f"max |dp| verdicts {dp:.2e}, scores {ds:.2e}; same verdict on {same:.0%} of {len(p1)} pairs")


if __name__ == "__main__":
    main()
