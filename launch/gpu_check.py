"""GPU check (a few minutes): the judge on one GPU, five ways, on the same MT-Bench items.

    python launch/gpu_check.py [--judge embedded] [--items 64] [--runs hf-bf16 hf-bf16-nocache]
                               [--profile hf-bf16-nocache] [--device cuda]

- fp32 with the prefix cache against fp32 without it: the radix KV cache must not change a probability (expect
  ~1e-5: the same sums in another order);
- bf16 with and without the prefix cache (the GPU default is without);
- bf16 plain HF against bf16 ZeRO-3 (DeepSpeed inference engine, one rank): expect ~1e-2, bf16's rounding.
Prints items/s, the model forwards and the time per forward, and peak memory of each, then the largest
probability differences and how often verdicts agree. `--runs` picks some of them (a device's time is short);
`--profile NAME` profiles that run's timed calls (torch.profiler) and prints where the time goes, and how much of
the wall time the GPU was busy: far below 1 means the judge is bound by launches and host work. `--device cpu`
runs the same script on a CPU (CI keeps it working between device sessions).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from reward import load_judge
from trainers.mt_bench import mt_bench_candidates

RUNS = {  # name: (backend, dtype, prefix cache)
    "hf-fp32": ("hf", "float32", True),
    "hf-fp32-nocache": ("hf", "float32", False),
    "hf-bf16": ("hf", "bfloat16", True),
    "hf-bf16-nocache": ("hf", "bfloat16", False),
    "deepspeed-bf16": ("deepspeed", "bfloat16", True),
}
COMPARED = (("hf-fp32", "hf-fp32-nocache"), ("hf-bf16", "hf-bf16-nocache"), ("hf-bf16", "deepspeed-bf16"))


def profile_summary(prof, wall: float, device: str) -> None:
    """The ops that took the most device (or CPU) time, and the share of the wall time the device was busy."""
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=15))
    if device == "cuda":
        busy = sum(e.self_device_time_total for e in events) / 1e6
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        print(f"GPU busy {busy:.3f} s of {wall:.3f} s wall ({busy / wall:.0%}); {launches} kernel launches")


def timed_run(name: str, args, pairs, singles):
    """(verdicts, scores) of one run; prints its items/s, forwards, time per forward and peak memory."""
    backend, dtype, prefix_cache = RUNS[name]
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    judge = load_judge(args.judge, backend=backend, device=args.device, dtype=dtype, progress=False)
    judge.backend.prefix_cache = prefix_cache
    forwards = [0]  # every forward embeds its tokens once, on every path (lean, transformers, ZeRO-3)
    judge.model.get_input_embeddings().register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    judge.compare(*map(list, zip(*pairs[:2])))  # warm-up
    sync()
    forwards[0] = 0
    profiler = None
    if name == args.profile:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
        profiler.start()
    start = time.perf_counter()
    out = judge.compare(*map(list, zip(*pairs))), judge.score(*map(list, zip(*singles)))
    sync()
    elapsed = time.perf_counter() - start
    failed = [r.error for r in out[0] + out[1] if r.error]
    if failed:  # a failed judgement reads nothing: its speed and agreement would mean nothing
        raise SystemExit(f"FAIL {name}: {len(failed)} judgements failed, the first: {failed[0]}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    per = elapsed / max(forwards[0], 1) * 1e3
    print(f"{name}: {(len(pairs) + len(singles)) / elapsed:.1f} items/s, {forwards[0]} forwards, {per:.1f} ms per "
          f"forward, peak memory {peak:.2f} GiB", flush=True)  # fmt: skip
    if profiler is not None:
        profiler.stop()
        profile_summary(profiler, elapsed, args.device)
    del judge
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="default: all")
    parser.add_argument("--profile", choices=list(RUNS), help="profile this run's timed calls")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    names = [n for n in RUNS if n in args.runs]
    if args.profile is not None and args.profile not in names:
        parser.error(f"--profile {args.profile} is not one of the runs {names}")
    if args.device == "cuda":
        assert torch.cuda.is_available(), "this check needs a GPU (or --device cpu)"
    cands = mt_bench_candidates()
    pairs = [(c["question"], c["answers"][x], c["answers"][y]) for c in cands
             for x, y in itertools.combinations(c["answers"], 2)][: args.items]  # fmt: skip
    singles = [(c["question"], a) for c in cands for a in c["answers"].values()][: args.items]
    results = {name: timed_run(name, args, pairs, singles) for name in names}
    for x, y in COMPARED:
        if x not in results or y not in results:
            continue
        (p1, s1), (p2, s2) = results[x], results[y]
        dp = max(abs(getattr(a, k) - getattr(b, k)) for a, b in zip(p1, p2) for k in ("p_a", "p_b", "p_tie"))
        ds = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(s1, s2) for k in a.probs)
        same = sum(a.verdict == b.verdict for a, b in zip(p1, p2)) / len(p1)
        print(f"{x} vs {y}: max |dp| verdicts {dp:.2e}, scores {ds:.2e}; same verdict on {same:.0%} of {len(p1)}")


if __name__ == "__main__":
    main()
