"""Effective FLOP/s of the judge against this machine's fp32 matmul rate.

Effective FLOP/s = 2 x parameters x (the tokens a judge must see: the radix tree of its prompts, every shared
prefix counted once, no padding) / wall time of `Judge.score` and `Judge.compare` on MT-Bench items. The
reference is a 2048^3 fp32 matmul measured in the same run (goal >= 60%: what is lost is padding, recomputed
prefixes and overhead; attention FLOPs are not counted, so long prompts read a little low). The 1-100 scale's
time is also shown against the 5-point score's on the same items (goal <= 2x: its label step adds ~100 head rows
per item, a few percent of a 135M judge's forward).

Times are CPU seconds of this process (`--clock cpu`, default) on `--threads` torch threads (default 1), for the
judge and the matmul alike: on a shared, oversubscribed machine wall time mostly measures waiting for a core
(two OpenMP threads wait at every barrier for each other), CPU time the work; `--clock wall` on a quiet one.

    python bench/bench_flops.py [--questions 4] [--threads 1] [--clock cpu|wall] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from common import judge, tree_tokens

from trainers.mt_bench import mt_bench_candidates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="CI: 1 question, never fails on times")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    n = 1 if args.quick else args.questions
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed(fn, *inputs, repeat=1):
        best = float("inf")
        for _ in range(repeat):
            start = clock()
            fn(*inputs)
            best = min(best, clock() - start)
        return best

    j = judge(batch_size=64)
    params = sum(p.numel() for p in j.model.parameters() if p.dim() > 1 and p.shape[0] != j.model.config.vocab_size)
    params += j.model.config.hidden_size * j.model.config.vocab_size  # the LM head (tied to the embeddings)
    cands = mt_bench_candidates(max_words=80)[:n]
    seen = []
    encode = j.backend._encode

    def record(prompts, labels, _orig=j.backend.label_logprobs):
        seen.extend(encode(p) for p in prompts)
        return _orig(prompts, labels)

    j.score([cands[0]["question"]], [cands[0]["answers"]["reference"]])  # warm-up
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / timed(torch.matmul, a, b, repeat=3)
    j.backend.label_logprobs = record
    rows = []
    pointwise = [c["question"] for c in cands for _ in c["answers"]], [a for c in cands for a in c["answers"].values()]
    for name, fn, inputs in (
        ("score", j.score, pointwise),
        ("score100", lambda *a: j.score(*a, scale=100), pointwise),
        ("compare", j.compare, tuple(zip(*[(c["question"], c["answers"][x], c["answers"][y]) for c in cands
                                           for x, y in itertools.combinations(c["answers"], 2)]))),
    ):  # fmt: skip
        seen.clear()
        t = timed(fn, *inputs)
        tokens = tree_tokens(seen)
        rows.append((name, len(inputs[0]), tokens, t, 2 * params * tokens / t))
    print(f"fp32 matmul 2048^3: {peak / 1e9:.0f} GFLOP/s; judge: {params / 1e6:.0f}M parameters; "
          f"{args.threads} torch thread(s), {args.clock} time")  # fmt: skip
    for name, items, tokens, t, flops in rows:
        goal = f"{t / rows[0][3]:.2f}x the 5-point score (goal <= 2x)" if name == "score100" else "goal >= 60%"
        print(f"{name:<8} {items:>3} items, {tokens:>6} tree tokens, {t:6.2f} s: {flops / 1e9:6.1f} GFLOP/s = "
              f"{flops / peak:.0%} of matmul ({goal})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
