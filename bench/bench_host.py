"""Host work per item: the Judge on a near-zero-FLOP model, against one tokenisation of its prompt.

The model has the embedded judge's tokenizer and vocabulary but 1 layer, 64 wide, so what is timed is the host
work around the forwards (rendering, tokenising, batching, the label step, Python), which is what bounds a small
judge on a GPU. Side by side in one run, per item: one tokenisation of the rendered pointwise prompt,
`Judge.score` (5-point), `Judge.score` (1-100) and `Judge.compare` (per pair, both orders). Rounds alternate the
four and each keeps its fastest round. Times are this process's CPU time (`time.process_time`) on one torch
thread: on a shared, oversubscribed machine wall time mostly measures waiting (two OpenMP threads wait at every
barrier for each other to be scheduled); CPU time measures the work.
Goals: score <= 4x and compare <= 8x one tokenisation, 1-100 <= 2x the 5-point score.

    python bench/bench_host.py [--questions 4] [--rounds 3] [--profile score|score100|compare] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from reward import Judge
from reward.backends.hf import HFBackend
from reward.embedded import embedded_judge_path
from trainers.mt_bench import mt_bench_candidates


def tiny_judge(batch_size: int = 32) -> Judge:
    """1 layer, 64 wide, the embedded judge's tokenizer and vocabulary: the forwards cost almost nothing."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_judge_path()))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return Judge(HFBackend(model, tokenizer), progress=False, batch_size=batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--profile", choices=("score", "score100", "compare"), help="cProfile one call instead")
    parser.add_argument("--quick", action="store_true", help="CI: 1 question, 1 round, fails only far off the goals")
    args = parser.parse_args()
    n, rounds = (1, 1) if args.quick else (args.questions, args.rounds)
    torch.set_num_threads(args.threads)
    j = tiny_judge()
    cands = mt_bench_candidates(max_words=80)[:n]
    qs = [c["question"] for c in cands for _ in c["answers"]]
    rs = [a for c in cands for a in c["answers"].values()]
    pairs = [(c["question"], c["answers"][x], c["answers"][y]) for c in cands
             for x, y in itertools.combinations(c["answers"], 2)]  # fmt: skip
    pq, pa, pb = (list(col) for col in zip(*pairs))
    fields = [{"question": q, "response": r, "min_score": "1", "max_score": "5"} for q, r in zip(qs, rs)]
    prompts = [j._render(j.pointwise_template, f, text=True) + j.pointwise_template.slot for f in fields]
    tok = j.tokenizer

    def tokenise():
        for p in prompts:
            _ = tok(p, add_special_tokens=False).input_ids

    cases = {
        "tokenise": (tokenise, len(prompts)),
        "score": (lambda: j.score(qs, rs), len(qs)),
        "score100": (lambda: j.score(qs, rs, scale=100), len(qs)),
        "compare": (lambda: j.compare(pq, pa, pb), len(pq)),
    }
    for fn, _ in cases.values():  # warm-up: label tries, end tokens, allocator
        fn()
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(cases[args.profile][0])
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return 0
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, (fn, items) in cases.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], (time.process_time() - start) / items)
    t = best["tokenise"]
    print(f"near-zero-FLOP judge (1 layer, 64 wide, {len(tok)} vocab), {len(qs)} items / {len(pq)} pairs, "
          f"{torch.get_num_threads()} torch thread(s), best of {rounds} rounds, CPU time per item:")  # fmt: skip
    print(f"  tokenise once  {t * 1e3:7.2f} ms")
    for name, label, ref, goal in (("score", "score 5-pt", t, 4), ("compare", "compare/pair", t, 8),
                                   ("score100", "score 1-100", best["score"], 2)):  # fmt: skip
        what = "5-pt score" if name == "score100" else "tokenise"
        ratio = best[name] / ref
        print(f"  {label:<14} {best[name] * 1e3:7.2f} ms = {ratio:5.1f}x {what} (goal <= {goal}x)")
    ratios = (best["score"] / t / 4, best["compare"] / t / 8, best["score100"] / best["score"] / 2)
    if args.quick and max(ratios) > 10:  # CI: only far off the goals (times on a shared machine are noise)
        print("FAIL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
