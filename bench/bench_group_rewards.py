"""Group rewards against a judge with known truth: every pairing x aggregation of `JudgePairwiseReward`.

A simulated `JudgeBackend` (`LatentJudge`) gives every answer a latent quality q ~ N(0, 1). Shown answers A and B in
one order, the judge says A with (1 - tie) s(d), B with (1 - tie)(1 - s(d)) and tie with `tie`, where
s is the logistic function and d = q_A - q_B + bias + noise: Bradley-Terry on the quality difference, a position
bias toward the first answer shown, Gaussian noise drawn per prompt (each order is its own prompt; the same prompt
always gets the same draw, as from a deterministic judge) and a fixed tie mass. Pointwise, it rates 1..5 around
3 + q plus per-prompt noise (for `adaptive`). Defaults: bias 0.3, noise 0.5, tie 0.1, rating noise 0.8.

For G in {8, 16} and every pairing x aggregation it prints, from one run: the mean Kendall tau (tau-b) of each
group's rewards with the latent order, and judge prompts per group (pointwise ones included). Goal: at G=16 an
O(G log G) pairing reaches >= 0.95x the tau of `all` at <= 0.35x its prompts.

`--embedded` also runs the embedded judge (SmolLM2-135M) on one MT-Bench group of 8 for mechanics and cost: its
rewards' tau with `all` + `mean_win` (no latent truth there), prompts and seconds.

    python bench/bench_group_rewards.py [--groups 40] [--sizes 8 16] [--embedded] [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import kendalltau  # noqa: E402

from reward import Judge  # noqa: E402
from reward.backends import JudgeBackend  # noqa: E402
from reward.groups import AGGREGATES  # noqa: E402
from trainers import JudgePairwiseReward  # noqa: E402

PAIRINGS = ("all", "adaptive", "anchor", "circular", "swiss")
REFERENCE = "the reference answer"  # `anchor`'s reference, of latent quality 0 (the median)


def shown(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0]


class LatentJudge(JudgeBackend):
    """A JudgeBackend whose verdicts follow latent qualities (see the module docstring for the model)."""

    max_length = 4096

    def __init__(self, tokenizer, quality: dict, bias=0.3, noise=0.5, tie=0.1, rating_noise=0.8, seed=0):
        self.tokenizer, self.quality = tokenizer, quality
        self.bias, self.noise, self.tie, self.rating_noise, self.seed = bias, noise, tie, rating_noise, seed
        self.prompts = 0

    def _gauss(self, prompt: str, sd: float) -> float:
        return random.Random(zlib.crc32(f"{self.seed}:{prompt}".encode())).gauss(0, sd)

    def label_logprobs(self, prompts, labels):
        self.prompts += len(prompts)
        out = []
        for p in prompts:
            if set(labels) == {"A", "B", "C"}:
                a = shown(p, "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]")
                b = shown(p, "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]")
                d = self.quality[a] - self.quality[b] + self.bias + self._gauss(p, self.noise)
                s = 1 / (1 + math.exp(-d))
                probs = {"A": (1 - self.tie) * s, "B": (1 - self.tie) * (1 - s), "C": self.tie}
            else:
                r = shown(p, "[The Start of Assistant's Answer]\n", "\n[The End of Assistant's Answer]")
                mu = 3 + self.quality[r] + self._gauss(p, self.rating_noise)
                weights = {label: math.exp(-((int(label) - mu) ** 2) / 2) for label in labels}
                probs = {label: w / sum(weights.values()) for label, w in weights.items()}
            out.append({label: math.log(probs[label]) if probs.get(label, 0) > 0 else -math.inf for label in labels})
        return out

    def generate(self, prompts, max_new_tokens, stop):
        return [("", 0.0, 0) for _ in prompts]


class Cached(JudgeBackend):
    """Wraps a backend: each distinct prompt is computed once (the judges here are deterministic), every prompt
    asked is counted, so the aggregations of one pairing share its judgements."""

    def __init__(self, backend):
        self.backend, self.asked, self.cache = backend, 0, {}
        self.tokenizer, self.max_length = backend.tokenizer, backend.max_length

    def label_logprobs(self, prompts, labels):
        self.asked += len(prompts)
        new = [p for p in dict.fromkeys(prompts) if (p, tuple(labels)) not in self.cache]
        for p, lp in zip(new, self.backend.label_logprobs(new, labels) if new else []):
            self.cache[(p, tuple(labels))] = lp
        return [self.cache[(p, tuple(labels))] for p in prompts]

    def generate(self, prompts, max_new_tokens, stop):
        return self.backend.generate(prompts, max_new_tokens, stop)


def reward_for(judge, pairing, aggregate, size):
    options = {"reference_column": "reference"} if pairing == "anchor" else {}
    if pairing == "adaptive":
        options |= {"adaptive_margin": 0.5, "max_pairs_per_group": size}
    return JudgePairwiseReward(judge, pairing=pairing, aggregate=aggregate, **options)


def tokenizer():
    from transformers import AutoTokenizer

    from reward.embedded import embedded_judge_path

    return AutoTokenizer.from_pretrained(str(embedded_judge_path()))


def simulate(tok, size: int, groups: int, seed: int = 0) -> dict:
    """{(pairing, aggregate): (mean Kendall tau with the latent order, judge prompts per group)}."""
    rng = random.Random(seed)
    quality, prompts, answers = {REFERENCE: 0.0}, [], []
    for g in range(groups):
        for k in range(size):
            text = f"answer {k} to question {g}"
            quality[text] = rng.gauss(0, 1)
            prompts.append(f"question {g}")
            answers.append(text)
    out = {}
    for pairing in PAIRINGS:
        backend = Cached(LatentJudge(tok, quality, seed=seed))
        judge = Judge(backend, progress=False, batch_size=4096)
        for aggregate in AGGREGATES:
            before = backend.asked
            rewards = reward_for(judge, pairing, aggregate, size)(
                prompts=prompts, completions=answers, reference=[REFERENCE] * len(answers)
            )
            taus = []
            for g in range(groups):
                rows = range(g * size, (g + 1) * size)
                taus.append(kendalltau([rewards[i] for i in rows], [quality[answers[i]] for i in rows]).statistic)
            out[(pairing, aggregate)] = (statistics.fmean(taus), (backend.asked - before) / groups)
    return out


def embedded(size: int = 8) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import group, judge

    j = judge(batch_size=128)
    question, answers = group(size)
    print(f"\nembedded judge, one MT-Bench group of {size} (tau with all + mean_win; no latent truth):", flush=True)
    base = None
    for pairing in ("all", "circular", "swiss"):
        backend = Cached(j.backend)
        cached = Judge(backend, progress=False, batch_size=128)
        for aggregate in AGGREGATES:
            start, before = time.perf_counter(), backend.asked
            log = {}
            rewards = reward_for(cached, pairing, aggregate, size)(
                prompts=[question] * size, completions=answers, log_metric=log.__setitem__
            )
            seconds = time.perf_counter() - start
            base = base or rewards
            tau = kendalltau(rewards, base).statistic
            print(f"  {pairing:9s} {aggregate:13s} prompts {backend.asked - before:3d}  {seconds:6.1f} s  "
                  f"tau {tau:5.2f}  cyclic {log.get('judge/cyclic_groups', float('nan')):.0f}  "
                  f"dropped {log.get('judge/arcs_dropped', 0):.0f}  "
                  f"rewards {[round(r, 2) for r in rewards]}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedded", action="store_true", help="also one group of 8 on the embedded judge")
    parser.add_argument("--quick", action="store_true", help="CI: 6 groups; fails only far outside the goal")
    args = parser.parse_args()
    groups = 6 if args.quick else args.groups
    tok = tokenizer()
    results = {size: simulate(tok, size, groups, args.seed) for size in args.sizes}
    header = "".join(f" | G={s}: tau  prompts  (x all)" for s in args.sizes)
    print(
        f"{groups} simulated groups per size (bias 0.3, noise 0.5, tie 0.1)\n{'pairing':9s} {'aggregate':13s}{header}"
    )
    for pairing in PAIRINGS:
        for aggregate in AGGREGATES:
            row = f"{pairing:9s} {aggregate:13s}"
            for s in args.sizes:
                tau, prompts = results[s][(pairing, aggregate)]
                all_tau, all_prompts = results[s][("all", aggregate)]
                row += f" | {tau:9.3f} {prompts:7.1f}  ({tau / all_tau:.2f}, {prompts / all_prompts:.2f})"
            print(row, flush=True)
    status = 0
    if 16 in results:
        r = results[16]
        best_all = max(r[("all", a)][0] for a in AGGREGATES)
        cheap = {k: v for k, v in r.items() if k[0] in ("circular", "swiss")}
        (pairing, aggregate), (tau, prompts) = max(cheap.items(), key=lambda kv: kv[1][0])
        ratio, cost = tau / best_all, prompts / r[("all", "mean_win")][1]
        met = ratio >= 0.95 and cost <= 0.35
        print(f"goal at G=16: {pairing} + {aggregate}: tau {tau:.3f} = {ratio:.2f}x the best of all ({best_all:.3f}) "
              f"at {cost:.2f}x its prompts: {'met' if met else 'NOT met'} (>= 0.95x at <= 0.35x)")  # fmt: skip
        if args.quick and (ratio < 0.85 or cost > 0.35):
            print("FAIL: far outside the goal", file=sys.stderr)
            status = 1
    if args.embedded:
        embedded()
    return status


if __name__ == "__main__":
    sys.exit(main())
