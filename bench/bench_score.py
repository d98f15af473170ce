"""Items/s of `Judge.score` (direct mode) vs a generate-and-parse judge and G-Eval-style sampling (n=20).

Same model (the embedded judge), same prompts, side by side in one run; prints ratios, not absolute goals.
    python bench/bench_score.py [--items 8] [--samples 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

import torch

from reward import load_judge
from trainers.mt_bench import mt_bench_rows

DIGITS = re.compile(r"^\s*(\d+)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="CI: 2 items, 4 samples; never fails on times")
    args = parser.parse_args()
    if args.quick:  # the sampled run prefills every sample's copy of the prompt: most of the bench's compute
        args.items, args.samples = 2, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = load_judge("embedded", device="cpu", progress=False)
    rows = [r for r in mt_bench_rows() if r["reference"]]
    if args.quick:  # CI checks what is read, not its speed: the shortest references keep the prefills short
        rows.sort(key=lambda r: len(r["question"]) + len(r["reference"]))
    rows = rows[: args.items]
    questions, answers = [r["question"] for r in rows], [r["reference"] for r in rows]
    prompts = [
        judge._build(
            judge.pointwise_template,
            {"question": q, "response": a, "min_score": "1", "max_score": "5"},
            ("response",),
            "direct",
        )[0]
        + judge.pointwise_template.slot
        for q, a in zip(questions, answers)
    ]
    tok, model = judge.tokenizer, judge.model
    judge.score(questions[:1], answers[:1])  # warm-up

    t = time.perf_counter()
    exact = judge.score(questions, answers, method="mean")
    t_exact = time.perf_counter() - t

    def run(do_sample: bool, n: int):
        out = []
        for p in prompts:  # one prompt at a time, as a generate-and-parse judge runs
            ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
            kwargs = {"do_sample": True, "temperature": 1.0, "top_k": 0} if do_sample else {"do_sample": False}
            with torch.inference_mode():
                gen = model.generate(
                    ids, max_new_tokens=3, num_return_sequences=n, pad_token_id=tok.pad_token_id, **kwargs
                )
            texts = tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
            values = [int(m.group(1)) for m in map(DIGITS.match, texts) if m and 1 <= int(m.group(1)) <= 5]
            out.append(values)
        return out

    t = time.perf_counter()
    greedy = run(False, 1)
    t_greedy = time.perf_counter() - t
    t = time.perf_counter()
    sampled = run(True, args.samples)
    t_sampled = time.perf_counter() - t

    n = len(prompts)
    errors = [abs(statistics.fmean(v) - s.expected) for v, s in zip(sampled, exact) if v]
    print(f"items: {n}, model: embedded SmolLM2-135M-Instruct, torch threads: {torch.get_num_threads()}")
    mass = statistics.fmean(s.valid_mass for s in exact)
    print(f"Judge.score direct (exact expectation): {n / t_exact:7.2f} items/s")
    print(f"generate-and-parse (greedy, 3 tokens):  {n / t_greedy:7.2f} items/s", end="")
    print(f"  -> direct is {t_greedy / t_exact:.1f}x faster")
    print(f"G-Eval sampling (n={args.samples}, 3 tokens):    {n / t_sampled:7.2f} items/s", end="")
    print(f"  -> direct is {t_sampled / t_exact:.1f}x faster")
    print(f"greedy parse failures: {sum(not v for v in greedy)}/{n}; valid sampled draws: ", end="")
    print(f"{sum(map(len, sampled))}/{n * args.samples} (valid_mass of the exact read: {mass:.2f})")
    if errors:
        print(f"sampling error |mean of {args.samples} draws - exact mean|: ", end="")
        print(f"mean {statistics.fmean(errors):.3f}, max {max(errors):.3f} (scale 1-5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
