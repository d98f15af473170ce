"""GPU check (a few minutes): the judge on one GPU, four ways, on the same MT-Bench items.

    python launch/gpu_check.py [--judge embedded] [--items 64]

- fp32 with the prefix cache against fp32 without it: the radix KV cache must not change a probability (expect
  ~1e-5: the same sums in another order);
- bf16 plain HF against bf16 ZeRO-3 (DeepSpeed inference engine, one rank): expect ~1e-2, bf16's rounding.
Prints items/s and peak memory of each, the largest probability differences and how often verdicts agree.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from reward import load_judge
from trainers.mt_bench import mt_bench_candidates


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
    runs = {  # name: (backend, dtype, prefix cache)
        "hf fp32": ("hf", "float32", True),
        "hf fp32, no prefix cache": ("hf", "float32", False),
        "hf bf16": ("hf", "bfloat16", True),
        "deepspeed bf16": ("deepspeed", "bfloat16", True),
    }
    results = {}
    for name, (backend, dtype, prefix_cache) in runs.items():
        judge = load_judge(args.judge, backend=backend, device="cuda", dtype=dtype, progress=False)
        judge.backend.prefix_cache = prefix_cache
        judge.compare(*map(list, zip(*pairs[:2])))  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        prefs = judge.compare(*map(list, zip(*pairs)))
        scores = judge.score(*map(list, zip(*singles)))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        results[name] = (prefs, scores)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{name}: {(len(pairs) + len(singles)) / elapsed:.1f} items/s, peak memory {peak:.2f} GiB", flush=True)
        del judge
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for x, y in (("hf fp32", "hf fp32, no prefix cache"), ("hf bf16", "deepspeed bf16")):
        (p1, s1), (p2, s2) = results[x], results[y]
        dp = max(abs(getattr(a, k) - getattr(b, k)) for a, b in zip(p1, p2) for k in ("p_a", "p_b", "p_tie"))
        ds = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(s1, s2) for k in a.probs)
        same = sum(a.verdict == b.verdict for a, b in zip(p1, p2)) / len(p1)
        print(f"{x} vs {y}: max |dp| verdicts {dp:.2e}, scores {ds:.2e}; same verdict on {same:.0%} of {len(p1)}")


if __name__ == "__main__":
    main()
