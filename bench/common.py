"""Shared by the benchmark scripts: the embedded judge, MT-Bench inputs, timers and this machine's matmul rate."""

from __future__ import annotations

import time

import torch

from reward import load_judge
from trainers.mt_bench import mt_bench_candidates


def judge(prefix_cache: bool = True, **options):
    """The embedded judge on CPU, without a progress bar (one load; `prefix_cache` set on its backend)."""
    j = load_judge("embedded", device="cpu", progress=False, **options)
    j.backend.prefix_cache = prefix_cache
    return j


def group(size: int, max_words: int | None = 80, question: int = 0) -> tuple[str, list[str]]:
    """One MT-Bench question and `size` distinct answers (its 4 known-quality answers, then halves of them)."""
    c = mt_bench_candidates(max_words=max_words)[question]
    answers = list(c["answers"].values())
    for a in list(answers):
        if len(answers) >= size:
            break
        answers.append(" ".join(a.split()[: max(2, len(a.split()) // 2)]))
    return c["question"], answers[:size]


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result of the last call, the fastest wall time of `repeat` calls): the least disturbed by noise."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def matmul_flops(n: int = 2048, repeat: int = 3) -> float:
    """This machine's fp32 matmul rate (FLOP/s) on an n x n x n product, best of `repeat`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    _, t = timed(torch.matmul, a, b, repeat=repeat)
    return 2 * n**3 / t


def tree_tokens(prompts: list[list[int]]) -> int:
    """Tokens in the radix tree of the prompts: every shared prefix counted once, no padding."""
    total, prev = 0, []
    for ids in sorted(prompts):
        common = 0
        while common < min(len(ids), len(prev)) and ids[common] == prev[common]:
            common += 1
        total += len(ids) - common
        prev = ids
    return total
