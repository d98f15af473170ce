"""Shared-prefix KV cache on vs off: `Judge.compare` over every pair of a group of answers to one question.

The pairwise prompts of a group share the instructions and the question (a few hundred tokens), and the prompts
with the same first answer share that answer too. Same judge, same inputs, side by side; prints the speed-up,
the tokens run through the model, and the largest difference in probabilities (must be <= 1e-5, fp32).

Times are CPU seconds of this process on `--threads` torch threads (default 1): on a shared, oversubscribed
machine wall time mostly measures waiting for a core (`--clock wall` on a quiet one).

    python bench/bench_prefix_cache.py [--group 6] [--threads 1] [--clock cpu|wall] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from common import group, judge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="CI: a group of 3, never fails on times")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    size = 3 if args.quick else args.group
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed(fn, *inputs, repeat=1):
        best, out = float("inf"), None
        for _ in range(repeat):
            start = clock()
            out = fn(*inputs)
            best = min(best, clock() - start)
        return out, best

    j = judge(batch_size=64)
    question, answers = group(size, question=3)
    pairs = list(itertools.combinations(range(size), 2))
    qs, a, b = [question] * len(pairs), [answers[x] for x, _ in pairs], [answers[y] for _, y in pairs]
    prefix = len(j.tokenizer(j.pairwise_template.system, add_special_tokens=False).input_ids)
    j.compare(qs[:1], a[:1], b[:1])  # warm-up
    runs = {}
    for on in (True, False):
        j.backend.prefix_cache, j.backend.forward_tokens = on, 0
        prefs, t = timed(j.compare, qs, a, b, repeat=1 if args.quick else 2)
        runs[on] = (prefs, t, j.backend.forward_tokens // (1 if args.quick else 2))
    diff = max(abs(getattr(p, k) - getattr(q, k)) for p, q in zip(runs[True][0], runs[False][0])
               for k in ("p_a", "p_b", "p_tie"))  # fmt: skip
    speedup = runs[False][1] / runs[True][1]
    print(f"{len(pairs)} pairs x 2 orders, instructions ~{prefix} tokens + question: "
          f"cache on {runs[True][1]:.2f} s ({runs[True][2]} tokens), off {runs[False][1]:.2f} s "
          f"({runs[False][2]} tokens): {speedup:.2f}x faster (goal >= 2x), max |dp| = {diff:.1e}")  # fmt: skip
    # CI: the cache must never change results and must cut the tokens run by half (its speed is for the full run).
    if diff > 1e-5 or (args.quick and runs[True][2] > 0.5 * runs[False][2]):  # exactness and tokens, never times
        print("FAIL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
