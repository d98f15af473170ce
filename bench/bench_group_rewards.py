"""Group rewards against simulated judges with known truth: which pairs to judge, and how to aggregate them.

Each group holds G answers of latent quality q ~ N(0, 1) (and a reference answer of quality 0 for `anchor`). A
simulated judge shown answers A and B in one order (one judge prompt) returns probabilities for "A", "B" and "tie";
every noise draw belongs to one prompt, as with a deterministic judge. The two orders of a pair are merged as
`reward.scoring.merge_bidirectional` does, and the group's pairings and aggregates (`reward.groups`) run on those
merged probabilities, as `JudgePairwiseReward` does. Simulators, d = q_A - q_B and e ~ N(0, 1) per prompt:

- `logistic`: Bradley-Terry, P(A) = 0.9 s(d + 0.3 + 0.5 e), tie 0.1 (position bias 0.3; the earlier bench's judge);
- `thurstone`: probit, no position bias, ties when close: P(A) = Phi(d + 0.5 e - 0.3), P(B) = Phi(-d - 0.5 e - 0.3);
- `biased`: logistic with a strong position bias and many ties: 0.8 s(d + 1 + 0.5 e), tie 0.2;
- `sharp`: an overconfident judge, near-hard verdicts: 0.95 s(4 (d + 0.3 + 0.3 e)), tie 0.05;
- `gap`: noise that grows as the gap shrinks: 0.9 s(2 (d + 0.3 + (0.1 + 1.5 exp(-|d| / 0.3)) e)), tie 0.1.

For each G it prints, per simulator, the mean Kendall tau (tau-b) of each group's rewards with the latent order
for `all` (the best of its aggregates: the reference), then for every design x aggregate that tau as a multiple of
the reference, with judge prompts per group as a multiple of `all`'s (both orders count; `adaptive` adds its G
pointwise prompts). The default row `swiss` runs `GroupJudge` itself (the engine TRL, the server and verl run) on a
stand-in judge answering from the simulation; the other `swiss/...` rows vary the bench's copy of that design
(`swiss/#29`: the default before, closing on G // 8 neighbours, prior 0.1; `swiss/points`, `swiss/no-closing` and
`swiss/uncertain` spend the default's budget in whole rounds). Each design draws its random choices from its own
stream, so a row does not depend on which rows are picked.

Goal: with the defaults (`reward.groups.DEFAULT_AGGREGATE`, `SWISS_PAIR_BY`, `BT_PRIOR`, `swiss_rounds`, the
closing calls),
`swiss` >= 0.95x at <= 0.35x at G=16 on every simulator, the same or better at G=32; the goal line gives each
ratio's standard error (of the per-group tau differences, paired).
`--sweep` prints instead the defaults (and the earlier Swiss default) against the `logistic` judge's noise.

    python bench/bench_group_rewards.py [--groups 200] [--sizes 8 16 32] [--sweep] [--quick] [--embedded]

`--quick` (CI): the ranking logic on a planted order (a noiseless judge: every design x aggregate, and the
defaults, recover it exactly where they must; the closing calls judge pairs next to each other in it), tau-b
against a brute-force count, the merge against `merge_bidirectional`, the engine's Swiss pairs against the bench's
copy of the design, and the defaults on 24 groups of 16 per simulator far from the goal fails. Never a time.
`--embedded` runs the embedded judge (SmolLM2-135M) on one MT-Bench group of 8 through `JudgePairwiseReward`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.group_judging import Group as EngineGroup  # noqa: E402
from reward.group_judging import GroupJudge  # noqa: E402
from reward.groups import (  # noqa: E402
    BT_PRIOR,
    DEFAULT_AGGREGATE,
    SWISS_PAIR_BY,
    Outcome,
    all_pairs,
    bradley_terry,
    circular_pairs,
    closing_counts,
    closing_pairs,
    cycle_free,
    fit_strengths,
    mean_win,
    swiss_pairs,
    swiss_rounds,
    swiss_standings,
)
from reward.scoring import Preference, merge_bidirectional  # noqa: E402

_erf = np.vectorize(math.erf)


def phi(x):
    return 0.5 * (1.0 + _erf(np.asarray(x) / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logistic(bias=0.3, noise=0.5, tie=0.1, sharpness=1.0):
    def judge(d, e):
        s = sigmoid(sharpness * (d + bias + noise * e))
        return (1 - tie) * s, (1 - tie) * (1 - s), np.full_like(s, tie)

    return judge


def thurstone(noise=0.5, band=0.3):
    def judge(d, e):
        a, b = phi(d + noise * e - band), phi(-d - noise * e - band)
        return a, b, 1 - a - b

    return judge


def gap_noise(judge_d, e):
    sd = 0.1 + 1.5 * np.exp(-np.abs(judge_d) / 0.3)
    s = sigmoid(2.0 * (judge_d + 0.3 + sd * e))
    return 0.9 * s, 0.9 * (1 - s), np.full_like(s, 0.1)


SIMULATORS = {
    "logistic": logistic(),
    "thurstone": thurstone(),
    "biased": logistic(bias=1.0, tie=0.2),
    "sharp": logistic(noise=0.3, tie=0.05, sharpness=4.0),
    "gap": gap_noise,
}


class Group(NamedTuple):
    quality: np.ndarray  # the G answers' latent qualities, then the reference's (0)
    p_a: np.ndarray  # merged probabilities: p_a[i, j] = P(i beats j), both orders merged
    p_b: np.ndarray
    p_tie: np.ndarray
    rating: np.ndarray  # expected pointwise rating 1..5 of each answer (`adaptive`)

    def outcome(self, a: int, b: int) -> Outcome:
        return Outcome(a, b, float(self.p_a[a, b]), float(self.p_b[a, b]), float(self.p_tie[a, b]))


def simulate_group(judge: Callable, size: int, rng: np.random.Generator) -> Group:
    """A group of `size` answers and a reference; order[i, j] is the prompt showing i first, j second."""
    q = np.append(rng.normal(0, 1, size), 0.0)
    p_a, p_b, p_tie = merge(*judge(q[:, None] - q[None, :], rng.normal(0, 1, (size + 1, size + 1))))
    mu = 3 + q[:size] + rng.normal(0, 0.8, size)  # ratings around 3 + q, as the earlier bench's pointwise judge
    levels = np.arange(1, 6)
    w = np.exp(-((levels[None, :] - mu[:, None]) ** 2) / 2)
    return Group(q, p_a, p_b, p_tie, (w / w.sum(1, keepdims=True)) @ levels)


def merge(a, b, tie):
    """`merge_bidirectional` on every pair at once: a[i, j] is "A" with i shown first, so i's wins are a[i, j]
    (shown first) plus b[j, i] (shown second), renormalised."""
    total = a + b + tie + a.T + b.T + tie.T
    return (a + b.T) / total, (b + a.T) / total, (tie + tie.T) / total


# -- designs: which pairs are judged -----------------------------------------------------------------------------


def whole_rounds(n: int) -> int:
    """The default Swiss budget in whole rounds: its closing calls (`closing_counts`) spend one round's pairs and
    G // 8 more, from G = 8 on."""
    return swiss_rounds(n) + bool(closing_counts(n))


def neighbours(n: int, outcomes: list[Outcome], played: set, count: int, prior: float) -> list[tuple[int, int]]:
    """The closing round before the uncertainty-chosen one (row `swiss/#29`): the `count` unmet neighbours in fitted
    strength, closest first."""
    theta = fit_strengths(n, outcomes, prior)
    order = sorted(range(n), key=lambda k: -theta[k])
    unmet = [(theta[u] - theta[v], min(u, v), max(u, v)) for u, v in zip(order, order[1:])]
    chosen = [(a, b) for _, a, b in sorted(p for p in unmet if frozenset(p[1:]) not in played)[:count]]
    played |= {frozenset(p) for p in chosen}
    return chosen


def swiss(g: Group, n: int, rng: random.Random, rounds=None, pair_by=SWISS_PAIR_BY, closing="uncertain",
          uncertain=None, prior=BT_PRIOR):  # fmt: skip
    """The Swiss design on one group: `swiss_rounds` rounds of `swiss_round`, then the closing calls:
    `closing="uncertain"` the default's (`closing_counts` pairs, `closing_pairs`), `"neighbours"` one call of
    G // 8 unmet neighbours (the design before), None none. `prior`: the Bradley-Terry prior of the pairing and
    closing fits. `uncertain`: a measured idea, not a default: from the second round on, pairs whose fitted win
    probability is already beyond 0.5 +- `uncertain` are skipped and rounds go on (up to a round robin) until the
    rounds' pairs are spent."""
    total = swiss_rounds(n, rounds)
    budget, limit = total * (n // 2), (n - 1 if n % 2 == 0 else n) if uncertain else total
    played, outcomes, tiebreak = set(), [], rng.sample(range(n), n)
    for r in range(limit):
        order = swiss_standings(n, outcomes, tiebreak, pair_by, prior)
        pairs = swiss_pairs(order, played, more_rounds=r + 1 < limit)
        if uncertain and outcomes:
            theta = fit_strengths(n, outcomes, prior)
            pairs = [(a, b) for a, b in pairs if abs(sigmoid(theta[a] - theta[b]) - 0.5) < uncertain]
            pairs = pairs[: budget - len(outcomes)]
        outcomes += [g.outcome(a, b) for a, b in pairs]
        if len(outcomes) >= budget:
            break
    if closing == "neighbours":
        outcomes += [g.outcome(a, b) for a, b in neighbours(n, outcomes, played, n // 8, prior)]
    elif closing == "uncertain" and total * (n // 2) < n * (n - 1) // 2:
        for count in closing_counts(n):
            outcomes += [g.outcome(a, b) for a, b in closing_pairs(n, outcomes, played, count, prior)]
    return outcomes, 2 * len(outcomes)


class SimulatedJudge:
    """What `GroupJudge` calls on a judge, answered from a simulated group's merged probabilities (completions are
    their indices as text): the default row runs the engine that TRL, the server and verl run, not a copy of it."""

    backend = type("Backend", (), {"lockstep": False})()

    def __init__(self, g: Group):
        self.g = g

    def fit_responses(self, prompt, responses, mode="direct"):
        return [(r, False) for r in responses]

    def compare(self, prompts, responses_a, responses_b, method, mode):
        return [Preference(*self.g.outcome(int(a), int(b))[2:]) for a, b in zip(responses_a, responses_b)]


def engine(g: Group, n: int, rng: random.Random, pairing="swiss"):
    """`GroupJudge(pairing)` with its defaults on the group: the outcomes it judged and the prompts they cost."""
    (result,) = GroupJudge(pairing=pairing, seed=rng.randrange(2**32))(
        SimulatedJudge(g), [EngineGroup("q", list(map(str, range(n))))]
    )
    outcomes = [Outcome(a, b, p.p_a, p.p_b, p.p_tie) for (a, b), p in result.prefs.items()]
    return outcomes, result.prompts


def adaptive(g: Group, n: int, rng: random.Random, margin=0.5):
    """`JudgePairwiseReward`'s `adaptive`: pairs within `margin` of pointwise rating, closest first, at most G; the
    rest go to the higher rating (ties half)."""
    close = sorted((abs(g.rating[i] - g.rating[j]), i, j) for i, j in all_pairs(n))
    asked = {(i, j) for gap, i, j in close[:n] if gap < margin}
    outcomes = [g.outcome(i, j) for i, j in sorted(asked)]
    for i, j in all_pairs(n):
        if (i, j) not in asked:
            win = 0.5 if g.rating[i] == g.rating[j] else float(g.rating[i] > g.rating[j])
            outcomes.append(Outcome(i, j, float(win == 1), float(win == 0), float(win == 0.5)))
    return outcomes, n + 2 * len(asked)


def judged(g: Group, pairs) -> tuple[list[Outcome], int]:
    outcomes = [g.outcome(a, b) for a, b in pairs]
    return outcomes, 2 * len(outcomes)


DESIGNS = {  # name -> (design(group, G, rng) -> (outcomes, judge prompts), aggregates measured)
    "all": (lambda g, n, rng: judged(g, all_pairs(n)), ("mean_win", "bradley_terry")),
    "adaptive": (adaptive, ("mean_win",)),
    "anchor": (lambda g, n, rng: judged(g, [(i, n) for i in range(n)]), ("mean_win",)),
    "circular": (lambda g, n, rng: judged(g, circular_pairs(n, rng)), ("mean_win", "bradley_terry")),
    "swiss": (engine, ("mean_win", "bradley_terry", "bt_hard")),  # GroupJudge's Swiss path: the default design
    "swiss/#29": (  # the default before: all rounds by strength, G // 8 closest unmet neighbours, prior 0.1
        lambda g, n, rng: swiss(g, n, rng, whole_rounds(n), closing="neighbours", prior=0.1),
        ("bradley_terry/0.1", "bradley_terry"),
    ),
    "swiss/points": (
        lambda g, n, rng: swiss(g, n, rng, whole_rounds(n), pair_by="points", closing=None),
        ("mean_win", "bradley_terry"),
    ),
    "swiss/no-closing": (lambda g, n, rng: swiss(g, n, rng, whole_rounds(n), closing=None), ("bradley_terry",)),
    "swiss/points+closing": (lambda g, n, rng: swiss(g, n, rng, pair_by="points"), ("bradley_terry",)),
    "swiss/uncertain": (
        lambda g, n, rng: swiss(g, n, rng, whole_rounds(n), closing=None, uncertain=0.2),
        ("bradley_terry",),
    ),
    "swiss/log": (
        lambda g, n, rng: swiss(g, n, rng, rounds=math.ceil(math.log2(n)) + 1, pair_by="points", closing=None),
        ("bradley_terry",),
    ),  # fmt: skip
}
CYCLE_FREE = ("all", "circular", "swiss/points")  # with --cycle-free: its DP costs 0.1-0.4 s per cyclic group of 16


def aggregate(name: str, n: int, outcomes: list[Outcome]) -> list[float]:
    if name == "bt_hard":  # Bradley-Terry on the verdicts (win 1, loss 0, tie half), not the merged probabilities
        hard = [Outcome(o.a, o.b, float(o.win > 0.5), float(o.win < 0.5), float(o.win == 0.5)) for o in outcomes]
        return bradley_terry(n, hard)
    if name == "cycle_free":
        return cycle_free(n, outcomes).rewards
    if name.startswith("bradley_terry/"):  # another prior than the default's
        return bradley_terry(n, outcomes, float(name.split("/")[1]))
    return {"mean_win": mean_win, "bradley_terry": bradley_terry}[name](n, outcomes)


def tau_b(x, y) -> float:
    """Kendall's tau-b of two sequences (ties in either count as in scipy.stats.kendalltau)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denominator = math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float(np.sum(sx * sy) / denominator) if denominator else float("nan")


class Cell(NamedTuple):
    tau: float  # mean over groups
    prompts: float  # judge prompts per group
    taus: np.ndarray  # each group's tau (the same groups in every cell of a run: differences are paired)


def measure(judge: Callable, size: int, groups: int, seed: int, designs=DESIGNS, cycle_free_too=False) -> dict:
    """{(design, aggregate): Cell} over `groups` groups of `size`; every design sees the same judgements, and draws
    its random choices from a stream of its own (a row does not change with the other rows picked)."""
    rng, pair_rngs = np.random.default_rng(seed), {design: random.Random(f"{seed}/{design}") for design in designs}
    taus, prompts = {}, {}
    for _ in range(groups):
        g = simulate_group(judge, size, rng)
        n = size + 1  # the reference is answer `size`: `anchor` meets it, the rest never do
        for design, (make, aggregates) in designs.items():
            outcomes, asked = make(g, size, pair_rngs[design])
            if cycle_free_too and design in CYCLE_FREE:
                aggregates = (*aggregates, "cycle_free")
            for name in aggregates:
                rewards = aggregate(name, n if design == "anchor" else size, outcomes)[:size]
                taus.setdefault((design, name), []).append(tau_b(rewards, g.quality[:size]))
                prompts.setdefault((design, name), []).append(asked)
    return {k: Cell(float(np.mean(taus[k])), float(np.mean(prompts[k])), np.array(taus[k])) for k in taus}


# -- output ------------------------------------------------------------------------------------------------------

DEFAULT = ("swiss", DEFAULT_AGGREGATE["swiss"])


def reference(cells: dict) -> Cell:
    """`all` with its best aggregate: the tau to reach, and its prompts."""
    return max((c for (d, _), c in cells.items() if d == "all"), key=lambda c: c.tau)


def print_table(size: int, results: dict) -> None:
    """Markdown: one row per design x aggregate, tau as a multiple of `all`'s per simulator."""
    sims = list(results)
    refs = {s: reference(results[s]) for s in sims}
    print(f"\nG={size}: tau of `all` (best aggregate) " + ", ".join(f"{s} {refs[s].tau:.3f}" for s in sims)
          + f"; its prompts {refs[sims[0]].prompts:.0f}")  # fmt: skip
    print("| design | aggregate | prompts (x `all`) | " + " | ".join(sims) + " |")
    print("| --- | --- | --- |" + " --- |" * len(sims))
    for key in results[sims[0]]:
        prompts = max(results[s][key].prompts for s in sims)
        default = key == DEFAULT or (key[0] != "swiss" and DEFAULT_AGGREGATE.get(key[0]) == key[1])
        mark = " (default)" if default else ""
        row = f"| `{key[0]}` | `{key[1]}`{mark} | {prompts:.0f} ({prompts / refs[sims[0]].prompts:.2f}x) | "
        print(row + " | ".join(f"{results[s][key].tau / refs[s].tau:.3f}x" for s in sims) + " |", flush=True)


def standard_error(cell: Cell, ref: Cell) -> float:
    """Of `cell`'s tau as a multiple of `ref`'s: the per-group differences' standard error over `ref`'s mean."""
    return float(np.std(cell.taus - ref.taus, ddof=1) / math.sqrt(len(ref.taus)) / ref.tau)


def goal(size: int, results: dict) -> bool:
    ok = True
    parts = []
    for sim, cells in results.items():
        ref, cell = reference(cells), cells[DEFAULT]
        ratio, cost = cell.tau / ref.tau, cell.prompts / ref.prompts
        ok &= ratio >= 0.95 and cost <= 0.35
        parts.append(f"{sim} {ratio:.3f}x (+-{standard_error(cell, ref):.3f}) at {cost:.2f}x")
    print(f"goal at G={size} (defaults: swiss + {DEFAULT[1]} (prior {BT_PRIOR}), pair by {SWISS_PAIR_BY}, "
          f"{swiss_rounds(size)} rounds + {'+'.join(map(str, closing_counts(size)))} least-sure closing pairs; "
          f">= 0.95x the tau of `all` at <= 0.35x its prompts): {'met' if ok else 'NOT met'}: "
          + ", ".join(parts))  # fmt: skip
    return ok


def sweep(sizes, groups: int, seed: int) -> None:
    designs = {k: DESIGNS[k] for k in ("all", "swiss", "swiss/log")}
    print(f"\nthe `logistic` judge's per-prompt noise vs the defaults ({groups} groups per cell): tau of `swiss` + "
          f"{DEFAULT[1]} as a multiple of `all`'s (prompts x `all`)")  # fmt: skip
    print("| noise | " + " | ".join(f"G={s} swiss | G={s} swiss/log" for s in sizes) + " |")
    print("| --- |" + " --- | --- |" * len(sizes))
    for noise in (0.2, 0.5, 0.8, 1.2):
        row = f"| {noise} |"
        for size in sizes:
            cells = measure(logistic(noise=noise), size, groups, seed, designs)
            ref = reference(cells)
            for key in (DEFAULT, ("swiss/log", "bradley_terry")):
                row += f" {cells[key].tau / ref.tau:.3f}x ({cells[key].prompts / ref.prompts:.2f}x) |"
        print(row, flush=True)


# -- CI: the ranking logic on a planted order --------------------------------------------------------------------


def quick(seed: int) -> int:
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok' if ok else 'FAIL'}: {what}", flush=True)
        if not ok:
            failures.append(what)

    rng = random.Random(seed)
    wrong = []
    for _ in range(20):  # tau-b against counting concordant and discordant pairs by hand (ties in both)
        x, y = [rng.randint(0, 4) for _ in range(9)], [rng.randint(0, 4) for _ in range(9)]
        pairs = list(itertools.combinations(range(9), 2))
        concordant = sum((x[i] - x[j]) * (y[i] - y[j]) > 0 for i, j in pairs)
        discordant = sum((x[i] - x[j]) * (y[i] - y[j]) < 0 for i, j in pairs)
        untied = sum(x[i] != x[j] for i, j in pairs) * sum(y[i] != y[j] for i, j in pairs)
        wrong += [(x, y)] if abs(tau_b(x, y) - (concordant - discordant) / math.sqrt(untied)) > 1e-12 else []
    check(not wrong, f"tau_b = (concordant - discordant) / sqrt(untied pairs in x * in y) {wrong[:1]}")
    for sim, judge in SIMULATORS.items():
        d = np.subtract.outer(*[np.linspace(-2, 2, 5)] * 2)
        a, b, tie = judge(d, np.random.default_rng(seed).normal(size=d.shape))
        merged = merge(a, b, tie)
        check(all(np.allclose(merge_bidirectional({"A": a[i, j], "B": b[i, j], "C": tie[i, j]},
                                                  {"A": a[j, i], "B": b[j, i], "C": tie[j, i]}),
                              [m[i, j] for m in merged]) for i, j in all_pairs(5)),
              f"{sim}: the merge equals merge_bidirectional of the two orders")  # fmt: skip

    # A noiseless judge on a planted order: P(A) = s(q_A - q_B), no tie, no position bias. Bradley-Terry with a
    # negligible prior reads the exact differences off any connected design: the planted order, exactly.
    noiseless = lambda d, e: (sigmoid(d), 1 - sigmoid(d), np.zeros_like(d))  # noqa: E731
    designs = ("all", "anchor", "circular", "swiss/points", "swiss", "swiss/uncertain")
    for design in designs:
        taus = []
        for k in range(4):
            g = simulate_group(noiseless, 16, np.random.default_rng(seed + k))
            outcomes, _ = DESIGNS[design][0](g, 16, random.Random(seed + k))
            taus.append(tau_b(bradley_terry(17, outcomes, prior=1e-9)[:16], g.quality[:16]))
        check(min(taus) == 1.0, f"noiseless judge, G=16: {design} + Bradley-Terry (no prior) recovers the planted "
              f"order (tau {min(taus):.3f})")  # fmt: skip
    far = []
    for k in range(4):  # the closing calls judge where the order is least sure: neighbours in the planted order
        g = simulate_group(noiseless, 16, np.random.default_rng(seed + k))
        rank = np.argsort(np.argsort(-g.quality[:16]))
        outcomes, _ = swiss(g, 16, random.Random(seed + k), closing=None)
        played = {frozenset((o.a, o.b)) for o in outcomes}
        gaps = [abs(rank[a] - rank[b]) for a, b in closing_pairs(16, outcomes, played, 5)]
        far += [int(gap) for gap in gaps if gap > 3]
    check(not far, "noiseless judge, G=16: after the 4 rounds the closing call's 5 pairs (of 88 unmet) are at most 3 "
          f"places apart in the planted order {far[:3]}")  # fmt: skip
    same = []
    for judge in SIMULATORS.values():  # the variant rows change the bench's copy of the default design
        for k, n in enumerate((16, 13, 32)):
            g, draw = (
                simulate_group(judge, n, np.random.default_rng(seed + k)),
                random.Random(seed + k).randrange(2**32),
            )
            same.append(set(engine(g, n, random.Random(seed + k))[0]) == set(swiss(g, n, random.Random(draw))[0]))
    check(all(same), "the engine's Swiss path (GroupJudge) judges what the bench's `swiss` design does")
    exact = measure(noiseless, 16, 4, seed)
    for key in (("all", "mean_win"), ("anchor", "mean_win")):
        check(exact[key].tau == 1.0, f"noiseless judge: {key[0]} + {key[1]} too (tau {exact[key].tau:.3f})")
    check(exact[DEFAULT].tau >= 0.95, f"noiseless judge: the defaults (swiss + {DEFAULT[1]}, prior {BT_PRIOR}) within "
          f"0.05 of it (tau {exact[DEFAULT].tau:.3f})")  # fmt: skip
    check(exact[("swiss", "mean_win")].tau < 0.9, "...and swiss + mean_win far from it: it ignores who was met (tau "
          f"{exact[('swiss', 'mean_win')].tau:.3f})")  # fmt: skip
    verdicts = lambda d, e: ((d > 0) * 1.0, (d < 0) * 1.0, (d == 0) * 1.0)  # noqa: E731
    hard = measure(verdicts, 16, 4, seed, {"all": DESIGNS["all"]})
    check(hard[("all", "mean_win")].tau == 1.0, "all-or-nothing verdicts: all + mean_win ranks by wins, exactly")
    results = {sim: measure(judge, 16, 24, seed, {k: DESIGNS[k] for k in ("all", "swiss")}) for sim, judge in
               SIMULATORS.items()}  # fmt: skip
    met = goal(16, results)
    far = [sim for sim, c in results.items() if c[DEFAULT].tau < 0.85 * reference(c).tau or
           c[DEFAULT].prompts > 0.35 * reference(c).prompts]  # fmt: skip
    check(not far, f"defaults at G=16 (24 groups) within 0.85x at <= 0.35x on every simulator (goal {met})")
    return 1 if failures else 0


# -- the embedded judge: mechanics and cost through JudgePairwiseReward -------------------------------------------


def embedded(size: int = 8) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import group, judge

    from reward import Judge
    from reward.backends import JudgeBackend
    from reward.groups import AGGREGATES
    from trainers import JudgePairwiseReward

    class Cached(JudgeBackend):
        """Each distinct prompt computed once (the judge is deterministic), every prompt asked counted."""

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

    j = judge(batch_size=128)
    question, answers = group(size)
    print(f"\nembedded judge, one MT-Bench group of {size} (tau with all + mean_win; no latent truth):", flush=True)
    base = None
    for pairing in ("all", "circular", "swiss"):
        backend = Cached(j.backend)
        cached = Judge(backend, progress=False, batch_size=128)
        for name in AGGREGATES:
            start, before, log = time.perf_counter(), backend.asked, {}
            rewards = JudgePairwiseReward(cached, pairing=pairing, aggregate=name)(
                prompts=[question] * size, completions=answers, log_metric=log.__setitem__
            )
            seconds = time.perf_counter() - start
            base = base or rewards
            print(f"  {pairing:9s} {name:13s} prompts {backend.asked - before:3d}  {seconds:6.1f} s  "
                  f"tau {tau_b(rewards, base):5.2f}  cyclic {log.get('judge/cyclic_groups', float('nan')):.0f}  "
                  f"dropped {log.get('judge/arcs_dropped', 0):.0f}  "
                  f"rewards {[round(r, 2) for r in rewards]}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200, help="groups per simulator and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS), help="table rows")
    parser.add_argument("--sweep", action="store_true", help="only the defaults against the judge's noise")
    parser.add_argument("--cycle-free", action="store_true", help=f"also cycle_free on {', '.join(CYCLE_FREE)}")
    parser.add_argument("--embedded", action="store_true", help="also one group of 8 on the embedded judge")
    parser.add_argument("--quick", action="store_true", help="CI: the ranking logic on a planted order")
    args = parser.parse_args()
    if args.quick:
        return quick(args.seed)
    start = time.perf_counter()
    print(f"{args.groups} groups per simulator and size, seed {args.seed}; defaults: pairing aggregates "
          f"{DEFAULT_AGGREGATE} (Bradley-Terry prior {BT_PRIOR}), swiss pairs by {SWISS_PAIR_BY}, "
          "max(ceil(log2 G) + 1, (G - 1) // 3) rounds (one less from G = 8 on), then two calls of G // 2 + G // 8 "
          "least-sure pairs in all")  # fmt: skip
    for size in [] if args.sweep else args.sizes:
        designs = {k: DESIGNS[k] for k in ("all", *args.designs)}
        results = {s: measure(j, size, args.groups, args.seed, designs, args.cycle_free)
                   for s, j in SIMULATORS.items()}  # fmt: skip
        print_table(size, results)
        if size in (16, 32):
            goal(size, results)
    if args.sweep:
        sweep(args.sizes, args.groups, args.seed)
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.embedded:
        embedded()
    return 0


if __name__ == "__main__":
    sys.exit(main())
