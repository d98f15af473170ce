"""Group designs and aggregation: which pairs of a group's G completions to judge, and how to turn the judged
pairs into one reward per completion.

Pure math over local indices 0..n-1 (the reward in `trainers/reward_funcs.py` maps them to batch rows). A judged pair
is an `Outcome`: the merged (both orders) probabilities that `a` wins, `b` wins, or they tie.

Pairings (`pair design` -> pairs per group of n): `all_pairs` n(n-1)/2, `circular_pairs` n (a random cycle; 1 at
n=2), `swiss_pairs` floor(n/2) per round over `swiss_rounds(n)` rounds (max(ceil(log2 n) + 1, (n - 1) // 3) by
default, one less from n = 8 on; at most a full round robin), then `closing_pairs` n // 2 + n // 8 in two calls
(`closing_counts`). Each pair costs 2 judge prompts (both orders); a bye costs nothing.

Aggregations: `mean_win` (mean probability of beating the peers met, ties half), `bradley_terry` (strengths fitted
to the judged pairs with a Gaussian prior; the reward is the fitted win probability against the group),
`cycle_free` (drop a minimum-weight feedback arc set, weights |p_a - p_b|, then `mean_win`).
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np

from .consistency import components, min_feedback

AGGREGATES = ("mean_win", "bradley_terry", "cycle_free")
BT_PRIOR = 0.03  # precision of the Gaussian prior on strengths: keeps an undefeated completion's strength finite
# cycle_free solves a cyclic component exactly up to this many completions: the DP costs n 2^n (about 0.1-0.4 s and
# 30 MB at 16 on this CPU, 16x that at 20); beyond, Eades-Lin-Smyth's greedy order (not minimal).
EXACT_NODES = 16
_SEARCH_BUDGET = 20_000  # backtracking steps per Swiss round before falling back to greedy pairing
PAIR_BY = ("strength", "points")
# Defaults chosen on bench/bench_group_rewards.py (docs/group-pairings.md has the table): Swiss rounds pair by
# fitted strength; a sparse design (circular, swiss) needs Bradley-Terry, a complete one ranks alike with mean_win.
SWISS_PAIR_BY = "strength"
DEFAULT_AGGREGATE = {"all": "mean_win", "adaptive": "mean_win", "anchor": "mean_win"}
DEFAULT_AGGREGATE |= {"circular": "bradley_terry", "swiss": "bradley_terry"}


class Outcome(NamedTuple):
    """One judged pair: merged probabilities that `a` wins, `b` wins, or a tie."""

    a: int
    b: int
    p_a: float
    p_b: float
    p_tie: float

    @property
    def win(self) -> float:
        """P(a beats b), a tie counting half."""
        return self.p_a + 0.5 * self.p_tie


# -- pairings ---------------------------------------------------------------------------------------------------


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair once.

    ```python
    >>> all_pairs(3)
    [(0, 1), (0, 2), (1, 2)]

    ```
    """
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def circular_pairs(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """A random cycle through the group, each completion against the next: n pairs (one pair at n=2).

    ```python
    >>> pairs = circular_pairs(4, random.Random(0))
    >>> len(pairs), sorted(k for p in pairs for k in p)
    (4, [0, 0, 1, 1, 2, 2, 3, 3])

    ```
    """
    if n < 2:
        return []
    order = list(range(n))
    rng.shuffle(order)
    cycle = [(order[k], order[(k + 1) % n]) for k in range(n if n > 2 else 1)]
    return [(min(p), max(p)) for p in cycle]


def swiss_rounds(n: int, rounds: int | None = None) -> int:
    """Rounds a Swiss design of n completions plays before its closing calls (`closing_counts`): `rounds`, by default
    ceil(log2 n) + 1 or a third of a round robin, (n - 1) // 3, whichever is more (from n = 22 on the third: at
    most a third of `all_pairs`' judge prompts, what 0.95x its Kendall tau needs at n = 32 in
    bench/bench_group_rewards.py), less one round from n = 8 on, whose pairs the closing calls spend instead; at
    most a full round robin (n - 1 rounds for even n, n for odd n, where each round someone sits out).

    ```python
    >>> [swiss_rounds(n) for n in (1, 2, 3, 4, 7, 8, 16, 17, 32, 64)]
    [0, 1, 3, 3, 4, 3, 4, 5, 9, 20]

    ```
    """
    if n < 2:
        return 0
    if rounds is None:
        rounds = max(math.ceil(math.log2(n)) + 1, (n - 1) // 3) - (n >= 8)
    return max(0, min(rounds, n - 1 if n % 2 == 0 else n))


def closing_counts(n: int) -> list[int]:
    """Pairs of each closing call of a Swiss design of n completions: from n = 8 on, one round's pairs (n // 2) and
    n // 8 more, over two calls (`closing_pairs` picks them on the outcomes judged before each call); none below.

    ```python
    >>> [closing_counts(n) for n in (7, 8, 16, 17, 32)]
    [[], [3, 2], [5, 5], [5, 5], [10, 10]]

    ```
    """
    total = n // 2 + n // 8 if n >= 8 else 0
    return [total - total // 2, total // 2] if total else []


def _matchings(order: list[int], played: set, budget: list[int]):
    """Perfect matchings of `order` (best first) without rematches, each vertex paired as close to its standing
    as possible first (Monrad order), found by backtracking; `budget[0]` counts the steps left."""
    if not order:
        yield []
        return
    v, rest = order[0], order[1:]
    for k, u in enumerate(rest):
        budget[0] -= 1
        if budget[0] < 0:
            return
        if frozenset((v, u)) in played:
            continue
        for tail in _matchings(rest[:k] + rest[k + 1 :], played, budget):
            yield [(v, u), *tail]


def swiss_pairs(standings: list[int], played: set, more_rounds: bool = False) -> list[tuple[int, int]]:
    """One Swiss round: pairs of completions next to each other in `standings` (best first), no rematches.

    With an odd number of completions the last standing without a bye sits out (a bye: no pair, nothing judged);
    byes and pairs are added to `played` (frozensets; a bye is `{i, -1}`). With `more_rounds`, the round is chosen
    so that the next one can still pair everyone (one round of look-ahead: what a full pairing needs at n = 5, 6).
    When no rematch-free pairing of everyone exists (more rounds than the default), it pairs greedily and some sit
    out.

    ```python
    >>> played = set()
    >>> swiss_pairs([3, 1, 0, 2], played), swiss_pairs([3, 0, 1, 2], played)
    ([(1, 3), (0, 2)], [(0, 3), (1, 2)])

    ```
    """
    order = list(standings) + ([-1] if len(standings) % 2 else [])  # -1: the bye, last in the standings
    budget, chosen = [_SEARCH_BUDGET], None  # one budget for the round, look-aheads included: a fresh one per
    for candidate in _matchings(order, played, budget):  # candidate costs up to 20,000^2 steps near a round robin
        chosen = chosen or candidate
        if not more_rounds or next(_matchings(order, played | {frozenset(p) for p in candidate}, budget), 0):
            chosen = candidate
            break
    if chosen is None:  # greedy: the best left meets the closest it has not met
        chosen, left = [], list(order)
        while left:
            v = left.pop(0)
            u = next((u for u in left if frozenset((v, u)) not in played), None)
            if u is not None:
                left.remove(u)
                chosen.append((v, u))
    played |= {frozenset(p) for p in chosen}
    return [(min(p), max(p)) for p in chosen if -1 not in p]


def standings(points: dict[int, float], tiebreak: list[int]) -> list[int]:
    """Completions by running points, best first; equal points in `tiebreak` order (a random permutation)."""
    rank = {v: k for k, v in enumerate(tiebreak)}
    return sorted(tiebreak, key=lambda v: (-points.get(v, 0.0), rank[v]))


def swiss_standings(
    n: int, outcomes: list[Outcome], tiebreak: list[int], pair_by: str = SWISS_PAIR_BY, prior: float = BT_PRIOR
) -> list[int]:
    """Standings for the next Swiss round, best first, from the outcomes judged so far: by Bradley-Terry strength
    (`pair_by="strength"`, `fit_strengths`: a win over a strong completion counts more than one over a weak one)
    or by points (`"points"`: the sum of win probabilities). Equal values in `tiebreak` order.

    ```python
    >>> outcomes = [Outcome(0, 3, 0.9, 0.1, 0), Outcome(0, 4, 0.9, 0.1, 0), Outcome(0, 1, 0.3, 0.7, 0)]
    >>> outcomes += [Outcome(2, 3, 0.7, 0.3, 0)]  # 1 and 2 won 0.7 each: 1 against the strong 0, 2 against 3
    >>> swiss_standings(5, outcomes, [0, 2, 1, 3, 4], "points"), swiss_standings(5, outcomes, [0, 2, 1, 3, 4])
    ([0, 2, 1, 3, 4], [1, 0, 2, 3, 4])

    ```
    """
    if pair_by not in PAIR_BY:
        raise ValueError(f"pair_by must be one of {PAIR_BY}, got {pair_by!r}")
    if pair_by == "points" or not outcomes:
        value = dict.fromkeys(range(n), 0.0)
        for o in outcomes:
            value[o.a] += o.win
            value[o.b] += 1.0 - o.win
    else:
        value = dict(enumerate(fit_strengths(n, outcomes, prior).tolist()))
    return standings(value, tiebreak)


def swiss_round(
    n: int,
    outcomes: list[Outcome],
    played: set,
    tiebreak: list[int],
    more_rounds: bool = False,
    pair_by: str = SWISS_PAIR_BY,
) -> list[tuple[int, int]]:
    """The pairs of a group's next Swiss round: `swiss_pairs` on `swiss_standings` of the outcomes so far (`played`
    is updated as there).

    ```python
    >>> played, outcomes = set(), []
    >>> first = swiss_round(4, outcomes, played, [3, 1, 0, 2])
    >>> outcomes += [Outcome(1, 3, 0.2, 0.8, 0.0), Outcome(0, 2, 0.7, 0.3, 0.0)]
    >>> first, swiss_round(4, outcomes, played, [3, 1, 0, 2])
    ([(1, 3), (0, 2)], [(0, 3), (1, 2)])

    ```
    """
    return swiss_pairs(swiss_standings(n, outcomes, tiebreak, pair_by), played, more_rounds)


def closing_pairs(
    n: int, outcomes: list[Outcome], played: set, count: int, prior: float = BT_PRIOR
) -> list[tuple[int, int]]:
    """A Swiss design's closing call, judged only where the order is least sure: the `count` pairs
    that have not met whose fitted order (`fit_strengths`) is most likely wrong under the fit's Laplace
    approximation, i.e. of smallest |t_a - t_b| / sd(t_a - t_b) (a completion may appear in several). The pairs are
    added to `played`.

    ```python
    >>> outcomes = [Outcome(0, 1, 0.9, 0.1, 0), Outcome(2, 3, 0.6, 0.4, 0), Outcome(0, 2, 0.5, 0.5, 0)]
    >>> played = {frozenset((o.a, o.b)) for o in outcomes}
    >>> closing_pairs(4, outcomes, played, 2)  # unmet: 0-3 close, 1-3 far apart but linked only through 0 and 2
    [(0, 3), (1, 3)]

    ```
    """
    theta = fit_strengths(n, outcomes, prior)
    unmet = [(a, b) for a, b in all_pairs(n) if frozenset((a, b)) not in played]
    if not unmet or count <= 0:
        return []
    a, b = np.array(unmet).T
    p = 1.0 / (1.0 + np.exp(-(theta[[o.a for o in outcomes]] - theta[[o.b for o in outcomes]])))
    cov = np.linalg.pinv(_neg_hessian(n, outcomes, p, prior))
    sd = np.sqrt(np.maximum(cov[a, a] + cov[b, b] - 2 * cov[a, b], 1e-12))
    z = np.abs(theta[a] - theta[b]) / sd
    chosen = [unmet[k] for k in np.lexsort((b, a, z))[:count]]  # least sure first, ties by index
    played |= {frozenset(p) for p in chosen}
    return chosen


# -- aggregation ------------------------------------------------------------------------------------------------


def mean_win(n: int, outcomes: list[Outcome]) -> list[float | None]:
    """Each completion's mean probability of beating the peers it met (ties half); `None` if it met none.

    ```python
    >>> [round(r, 3) for r in mean_win(3, [Outcome(0, 1, 0.8, 0.1, 0.1), Outcome(1, 2, 0.5, 0.5, 0.0)])]
    [0.85, 0.325, 0.5]

    ```
    """
    wins = [[] for _ in range(n)]
    for o in outcomes:
        wins[o.a].append(o.win)
        wins[o.b].append(1.0 - o.win)
    return [sum(w) / len(w) if w else None for w in wins]


def fit_strengths(n: int, outcomes: list[Outcome], prior: float = BT_PRIOR) -> np.ndarray:
    """Bradley-Terry strengths: the MAP of sum over pairs of w log s(ta - tb) + (1 - w) log s(tb - ta), with
    w = P(a wins) (ties half), s the logistic function, and a N(0, 1/prior) prior on each strength (finite and
    unique even when a completion won every pair). Newton's method on the concave objective.

    ```python
    >>> t = fit_strengths(2, [Outcome(0, 1, 0.73, 0.27, 0.0)], prior=0.0)
    >>> round(float(t[0] - t[1]), 2)
    0.99

    ```
    """
    theta = np.zeros(n)
    if not outcomes:
        return theta
    a = np.array([o.a for o in outcomes])
    b = np.array([o.b for o in outcomes])
    w = np.array([o.win for o in outcomes])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
        grad = -prior * theta
        np.add.at(grad, a, w - p)
        np.add.at(grad, b, p - w)
        # singular without a prior: strengths are up to a shift
        step = np.linalg.lstsq(_neg_hessian(n, outcomes, p, prior), grad, rcond=None)[0]
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return theta - theta.mean()


def _neg_hessian(n: int, outcomes: list[Outcome], p: np.ndarray, prior: float) -> np.ndarray:
    """The negative Hessian of `fit_strengths`' objective where the fitted P(a beats b) is `p` (per outcome): the
    Newton step's matrix, and the inverse covariance of the Laplace approximation (`closing_pairs`)."""
    a, b, h = [o.a for o in outcomes], [o.b for o in outcomes], p * (1 - p)
    hess = prior * np.eye(n)
    np.add.at(hess, (a, a), h)
    np.add.at(hess, (b, b), h)
    np.add.at(hess, (a, b), -h)
    np.add.at(hess, (b, a), -h)
    return hess


def bradley_terry(n: int, outcomes: list[Outcome], prior: float = BT_PRIOR) -> list[float | None]:
    """Each completion's fitted probability of beating the others it is connected to by judged pairs, on average
    (`fit_strengths`); `None` if it met none.

    ```python
    >>> [round(r, 3) for r in bradley_terry(3, [Outcome(0, 1, 0.9, 0.1, 0.0), Outcome(1, 2, 0.9, 0.1, 0.0)])]
    [0.909, 0.5, 0.091]

    ```
    """
    theta = fit_strengths(n, outcomes, prior)
    met = sorted({o.a for o in outcomes} | {o.b for o in outcomes})
    out: list[float | None] = [None] * n
    for i in met:
        others = [j for j in met if j != i]
        out[i] = float(np.mean(1.0 / (1.0 + np.exp(-(theta[i] - theta[others])))))
    return out


def _arcs(outcomes: list[Outcome]) -> dict[tuple[int, int], float]:
    """The strict graph: winner -> loser, weight |p_a - p_b|; exact ties are no arc."""
    arcs = {}
    for o in outcomes:
        if o.p_a != o.p_b:
            edge = (o.a, o.b) if o.p_a > o.p_b else (o.b, o.a)
            arcs[edge] = arcs.get(edge, 0.0) + abs(o.p_a - o.p_b)
    return arcs


def has_cycle(n: int, outcomes: list[Outcome]) -> bool:
    """Whether the judged pairs' strict preferences hold a cycle.

    ```python
    >>> has_cycle(3, [Outcome(0, 1, 0.6, 0.4, 0), Outcome(1, 2, 0.6, 0.4, 0), Outcome(0, 2, 0.3, 0.7, 0)])
    True

    ```
    """
    comp = components(n, _arcs(outcomes))
    return len(set(comp)) < n


def feedback_arcs(n: int, outcomes: list[Outcome]) -> list[int]:
    """Indices of the outcomes to drop so that the strict preferences are acyclic, of least total |p_a - p_b|
    (`reward.consistency.min_feedback`, exact up to `EXACT_NODES` = 16 completions per cyclic component).

    ```python
    >>> feedback_arcs(3, [Outcome(0, 1, 0.9, 0.1, 0), Outcome(1, 2, 0.9, 0.1, 0), Outcome(0, 2, 0.4, 0.6, 0)])
    [2]

    ```
    """
    dropped, _ = min_feedback(n, _arcs(outcomes), exact_max_nodes=EXACT_NODES)
    return [
        k
        for k, o in enumerate(outcomes)
        if o.p_a != o.p_b and ((o.a, o.b) if o.p_a > o.p_b else (o.b, o.a)) in dropped
    ]


class CycleFree(NamedTuple):
    rewards: list[float | None]
    dropped: list[int]  # indices of the outcomes dropped


def cycle_free(n: int, outcomes: list[Outcome]) -> CycleFree:
    """`mean_win` after dropping a minimum feedback arc set (`feedback_arcs`). A completion whose every pair was
    dropped (an optimal drop never does this) would keep its `mean_win` over them.

    ```python
    >>> cycle = [Outcome(0, 1, 0.9, 0.1, 0), Outcome(1, 2, 0.9, 0.1, 0), Outcome(0, 2, 0.4, 0.6, 0)]
    >>> rewards, dropped = cycle_free(3, cycle)
    >>> [round(r, 3) for r in rewards], dropped
    ([0.9, 0.5, 0.1], [2])

    ```
    """
    dropped = feedback_arcs(n, outcomes)
    gone = set(dropped)
    kept = mean_win(n, [o for k, o in enumerate(outcomes) if k not in gone])
    full = mean_win(n, outcomes)
    return CycleFree([k if k is not None else f for k, f in zip(kept, full)], dropped)
