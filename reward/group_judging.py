"""Group judging: a prompt's completions judged against each other (and a reference) into one reward each.

The one place where a group's pairs are chosen (`pairing`), judged in both orders (`Judge.compare`), and turned
into rewards (`aggregate`, `reward.groups`), with the counts the monitors read. Every caller (TRL's
`JudgePairwiseReward`, the reward server, verl's functions, `JudgeRewardModel`) hands it its groups and reads
`GroupResult`s back; all groups of a call share each judge call (one call, or one per Swiss round).

Pairings (`PAIRINGS`):

- `all`: every pair of the group; G completions cost G(G-1) judge prompts.
- `adaptive`: pointwise expected scores first (G prompts); only pairs whose scores are within `adaptive_margin`
  are compared, closest first, at most `max_pairs_per_group` per group; a pair left out counts as won by the
  higher score (ties half).
- `anchor`: each completion against its reference answer only (2 prompts each).
- `circular`: a random cycle through the group, each completion against the next: 2G prompts (2 at G=2).
- `swiss`: Swiss-system rounds pairing neighbours in the standings by fitted strength, no rematches, a bye for odd
  G (`reward.groups.swiss_round`), then from G = 8 on two closing calls of G // 2 + G // 8 unmet pairs in all
  (`reward.groups.closing_counts`), each the pairs whose fitted order is least sure (`reward.groups.closing_pairs`):
  per group `swiss_rounds(G) * (G // 2) + sum(closing_counts(G))` pairs at most. The rounds and closing calls are
  successive judge calls shared by all groups of the call (docs/group-pairings.md has the measurements).

A group whose completions all have a reference (`Group.references`) is, with a peer pairing, compared with its
peers and with the reference too: the reference is one more opponent (one node of the group's graph, per distinct
reference text). With `mean_win` a completion's reward is then the mean win probability over all its judged
opponents, the peers it met and the reference, each opponent weighing the same (with `all` and G completions:
the reference weighs 1/G).

Rules defined here once:

- a lone completion (no peer, no reference) gets no reward from the judge (`None`, counted in `lone`); a
  client that has no missing value gives it `NEUTRAL_WIN`, the mean reward of any group judged in pairs (each
  pair hands out a total of 1 between its two members), so it sits at its would-be peers' average instead of on
  another scale (its pointwise score would also be the reward a policy can talk into a rating);
- a failed judgement is `None` (counted in `failures`); `neutral` is the value such a client gets where nothing of
  a group was judged.

Example:
```python
>>> from reward.group_judging import Group, GroupJudge
>>> engine = GroupJudge(pairing="all", aggregate="mean_win")
>>> (result,) = engine(judge, [Group("What is 2+2?", ["4", "5", "four"])])  # doctest: +SKIP
>>> result.rewards, result.pairs, result.consistent  # doctest: +SKIP
([0.8..., 0.1..., 0.5...], 3, 3)

```
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from .groups import (
    AGGREGATES,
    DEFAULT_AGGREGATE,
    Outcome,
    all_pairs,
    bradley_terry,
    circular_pairs,
    closing_counts,
    closing_pairs,
    cycle_free,
    has_cycle,
    mean_win,
    swiss_round,
    swiss_rounds,
)
from .judge import MODES
from .scoring import PREFERENCE_METHODS, Preference, Score, check_choice
from .text import as_text, text_key

logger = logging.getLogger(__name__)

PAIRINGS = ("all", "adaptive", "anchor", "circular", "swiss")
NEUTRAL_WIN = 0.5  # the mean reward of a group judged in pairs; a lone completion's and an unjudged group's value


def neutral(reward: str, scale: int = 5) -> float:
    """The value a client without a missing reward gets where nothing was judged: the scale's midpoint for a
    pointwise score, else `NEUTRAL_WIN` (pairwise and against a reference: both are win probabilities).

    ```python
    >>> neutral("score", 5), neutral("pairwise"), neutral("reference")
    (3.0, 0.5, 0.5)

    ```
    """
    return (1 + scale) / 2 if reward == "score" else NEUTRAL_WIN


def check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 100:
        raise ValueError(f"scale must be an integer in [2, 100], got {scale!r}")


def groups_of(keys: Sequence, completions: Sequence) -> list[list[int]]:
    """Indices of the usable completions (not `None`) grouped by their key's identity (`text_key`: a prompt, a
    conversation, a verl uid), groups in order of first appearance.

    ```python
    >>> groups_of(["q1", "q2", "q1", "q1"], ["a", "b", None, "c"])
    [[0, 3], [1]]

    ```
    """
    groups: dict[str, list[int]] = {}
    for i, (key, completion) in enumerate(zip(keys, completions)):
        if completion is not None:
            groups.setdefault(text_key(key), []).append(i)
    return list(groups.values())


class Group(NamedTuple):
    """One prompt's completions (usable texts), with each completion's reference answer where there is one."""

    prompt: str
    completions: list[str]
    references: list[str | None] | None = None


class GroupResult(NamedTuple):
    """A group's rewards and what the monitors count (local indices: positions in `Group.completions`)."""

    rewards: list[float | None]  # None: lone or failed
    pairs: int  # peer pairs judged in both orders without error
    consistent: int  # ... of which the two orders agreed
    cyclic: bool  # its judged strict preferences hold a cycle
    arcs_dropped: int  # cycle_free's dropped pairs
    lone: bool  # one completion, no reference: nothing to judge it against
    prompts: int  # judge prompts it cost (2 per pair, 1 per pointwise score)
    prefs: dict[tuple[int, int], Preference]  # peer pairs asked, failed ones included
    against_reference: dict[int, Preference]  # each completion against its reference, failed ones included
    scores: dict[int, Score]  # adaptive's pointwise scores

    @property
    def failures(self) -> int:
        """Completions without a reward other than a lone one."""
        return 0 if self.lone else sum(r is None for r in self.rewards)


class _Job(NamedTuple):
    group: int
    a: int
    b: int | None  # a peer's local index, or None: the reference
    text: str  # b's text


class GroupJudge:
    """Judges groups of completions into rewards (see the module docstring); options checked when built.

    Args:
        pairing: one of `PAIRINGS`.
        aggregate: one of `reward.groups.AGGREGATES`: `mean_win`, `bradley_terry` or `cycle_free`; default
            `reward.groups.DEFAULT_AGGREGATE[pairing]` (`bradley_terry` for the sparse `swiss` and `circular`
            designs, `mean_win` for the rest: docs/group-pairings.md).
        method: "likelihood", "ppl" or "baseline" (see `Judge.compare`).
        mode: "direct" or "rationale".
        adaptive_margin, max_pairs_per_group, scale: `adaptive`'s score margin, per-group budget, rating scale.
        swiss_rounds: `swiss`'s rounds before its closing calls (default `reward.groups.swiss_rounds`:
            max(ceil(log2 G) + 1, (G - 1) // 3), one less from G = 8 on).
        seed: seed of `circular`'s cycles and `swiss`'s first-round order (one stream over the calls).
    """

    def __init__(self, *, pairing="all", aggregate=None, method="likelihood", mode="direct",
                 adaptive_margin=0.5, max_pairs_per_group=None, scale=5, swiss_rounds=None, seed=0):  # fmt: skip
        check_choice("pairing", pairing, PAIRINGS)
        aggregate = aggregate or DEFAULT_AGGREGATE[pairing]
        check_choice("aggregate", aggregate, AGGREGATES)
        check_choice("method", method, PREFERENCE_METHODS)
        check_choice("mode", mode, MODES)
        check_scale(scale)
        if swiss_rounds is not None and (not isinstance(swiss_rounds, int) or swiss_rounds < 1):
            raise ValueError(f"swiss_rounds must be a positive integer or None, got {swiss_rounds!r}")
        self.pairing, self.aggregate, self.method, self.mode = pairing, aggregate, method, mode
        self.adaptive_margin, self.max_pairs_per_group, self.scale = adaptive_margin, max_pairs_per_group, scale
        self.swiss_rounds = swiss_rounds
        self._rng = random.Random(seed)

    def __call__(self, judge, groups: Sequence[Group]) -> list[GroupResult]:
        """Each group's `GroupResult`. A completion that is not usable text (`None`, empty) gets no reward (a
        failure) and takes no part; a judge that raises costs the pairs not judged yet (logged), never the call;
        under a sharded (lockstep) judge every rank makes the same judge calls, with or without groups."""
        usable = [[k for k, c in enumerate(g.completions) if as_text(c) is not None] for g in groups]
        inner = [g._replace(completions=[g.completions[k] for k in u],
                            references=None if g.references is None else [g.references[k] for k in u])
                 for g, u in zip(groups, usable)]  # fmt: skip
        return [self._widen(r, u, len(g.completions)) for r, u, g in zip(self._judge(judge, inner), usable, groups)]

    @staticmethod
    def _widen(result: GroupResult, usable: list[int], n: int) -> GroupResult:
        """A result over the usable completions, re-indexed to the whole group (the others: `None`)."""
        if len(usable) == n:
            return result
        rewards: list[float | None] = [None] * n
        for k, r in zip(usable, result.rewards):
            rewards[k] = r
        prefs = {(usable[a], usable[b]): p for (a, b), p in result.prefs.items()}
        return result._replace(rewards=rewards, lone=result.lone and n == 1, prefs=prefs,
                               against_reference={usable[k]: p for k, p in result.against_reference.items()},
                               scores={usable[k]: s for k, s in result.scores.items()})  # fmt: skip

    def _judge(self, judge, groups: list[Group]) -> list[GroupResult]:
        groups, cut = self._fitted(judge, groups)
        has_ref = [g.references is not None and all(g.references) for g in groups]
        jobs = [_Job(g, k, None, ref) for g, group in enumerate(groups) if has_ref[g]
                for k, ref in enumerate(group.references)]  # fmt: skip
        peers = [g for g, group in enumerate(groups) if not (self.pairing == "anchor" and has_ref[g])]
        scores: list[dict[int, Score]] = [{} for _ in groups]
        judged: list[tuple[_Job, Preference]] = []
        try:
            if self.pairing == "adaptive":
                todo = [(g, k) for g in peers for k in range(len(groups[g].completions))]
                results = judge.score(
                    [groups[g].prompt for g, _ in todo],
                    [groups[g].completions[k] for g, k in todo],
                    scale=self.scale,
                    mode=self.mode,
                )
                for (g, k), s in zip(todo, results):
                    scores[g][k] = s
            if self.pairing == "swiss":
                self._swiss(judge, groups, peers, jobs, judged)
            else:
                jobs += [job for g in peers for job in self._pairs(groups[g], g, scores[g])]
                judged += zip(jobs, self._compare(judge, groups, jobs))
        except Exception as exc:  # a broken judge costs this call's rewards, never the training run
            logger.warning("group judging: judge call failed: %s", exc)
        for job, pref in judged:  # a response cut before its pairs were built is still reported cut
            pref.truncated = pref.truncated or cut[job.group][job.a] or (job.b is not None and cut[job.group][job.b])
        return self._results(groups, has_ref, judged, scores)

    def _fitted(self, judge, groups) -> tuple[list[Group], list[list[bool]]]:
        """The groups with each completion cut once to what its pairwise prompts hold (`Judge.fit_responses`),
        before pairs are built, and which were cut."""
        fitted, cut = [], []
        for group in groups:
            texts = judge.fit_responses(group.prompt, group.completions, self.mode) if group.completions else []
            fitted.append(group._replace(completions=[t for t, _ in texts]))
            cut.append([c for _, c in texts])
        return fitted, cut

    # -- which pairs -------------------------------------------------------------------------------------------

    def _pairs(self, group: Group, g: int, scores: dict[int, Score]) -> list[_Job]:
        """The one-call pairings' jobs of a group (a < b)."""
        texts, n = group.completions, len(group.completions)
        if self.pairing == "adaptive":
            points = {k: s.expected for k, s in scores.items() if s.error is None}
            close = [(abs(points[a] - points[b]), a, b) for a, b in all_pairs(n)
                     if a in points and b in points and abs(points[a] - points[b]) < self.adaptive_margin]  # fmt: skip
            pairs = [(a, b) for _, a, b in sorted(close)[: self.max_pairs_per_group]]
        elif self.pairing == "circular":
            pairs = circular_pairs(n, self._rng)
        else:
            pairs = all_pairs(n)
        return [_Job(g, a, b, texts[b]) for a, b in pairs]

    def _compare(self, judge, groups: list[Group], jobs: list[_Job]) -> list[Preference]:
        # Called even with no pairs: a sharded (lockstep) judge needs every rank in every call.
        if not jobs and not judge.backend.lockstep:
            return []
        return judge.compare([groups[j.group].prompt for j in jobs], [groups[j.group].completions[j.a] for j in jobs],
                             [j.text for j in jobs], method=self.method, mode=self.mode)  # fmt: skip

    def _swiss(self, judge, groups, peers, first, judged) -> None:
        """Swiss rounds, then the closing calls, one judge call each, shared by all groups (round one also holds the
        reference jobs); each group's rounds pair on the peer outcomes it has so far."""
        sizes = [len(groups[g].completions) for g in peers]
        rounds = [swiss_rounds(n, self.swiss_rounds) for n in sizes]
        # The closing calls, where the rounds left a pair unmet (not after a full round robin).
        closing = [closing_counts(n) if r * (n // 2) < n * (n - 1) // 2 else [] for r, n in zip(rounds, sizes)]
        calls = [r + len(c) for r, c in zip(rounds, closing)]
        total = max([*calls, 1 if first else 0])
        if judge.backend.lockstep:  # every rank runs as many rounds as the busiest, judging nothing if it has nothing
            total = judge.backend.agree(total)
        played, outcomes = [set() for _ in peers], [[] for _ in peers]
        tiebreak = [self._rng.sample(range(n), n) for n in sizes]
        slot = {g: p for p, g in enumerate(peers)}
        for r in range(total):
            jobs = list(first) if r == 0 else []
            for p, g in enumerate(peers):
                if r < rounds[p]:
                    more = r + 1 < rounds[p]
                    pairs = swiss_round(sizes[p], outcomes[p], played[p], tiebreak[p], more_rounds=more)
                else:
                    count = closing[p][r - rounds[p]] if r < calls[p] else 0
                    pairs = closing_pairs(sizes[p], outcomes[p], played[p], count) if count else []
                jobs += [_Job(g, a, b, groups[g].completions[b]) for a, b in pairs]
            prefs = self._compare(judge, groups, jobs)
            judged += zip(jobs, prefs)
            for job, pref in zip(jobs, prefs):
                if pref.error is None and job.b is not None:
                    outcomes[slot[job.group]].append(Outcome(job.a, job.b, pref.p_a, pref.p_b, pref.p_tie))

    # -- rewards -----------------------------------------------------------------------------------------------

    def _results(self, groups, has_ref, judged, scores) -> list[GroupResult]:
        by_group = defaultdict(list)
        for job, pref in judged:
            by_group[job.group].append((job, pref))
        return [self._group(group, has_ref[g], by_group[g], scores[g]) for g, group in enumerate(groups)]

    def _group(self, group: Group, has_ref: bool, judged: list, scores: dict[int, Score]) -> GroupResult:
        n = len(group.completions)
        node = {k: k for k in range(n)}  # completions, then one node per reference text
        outcomes, prefs, against, consistent = [], {}, {}, 0
        for job, pref in judged:
            if job.b is None:
                against[job.a] = pref
            else:
                prefs[job.a, job.b] = pref
            if pref.error is None:
                b = job.b if job.b is not None else node.setdefault(("reference", job.text), len(node))
                outcomes.append(Outcome(job.a, b, pref.p_a, pref.p_b, pref.p_tie))
                consistent += job.b is not None and bool(pref.order_consistent)
        if self.pairing == "adaptive":  # pairs not asked about: the higher score wins (a failed one stays out)
            points = {k: s.expected for k, s in scores.items() if s.error is None}
            for a, b in all_pairs(n):
                if (a, b) not in prefs and a in points and b in points:
                    win = 0.5 if points[a] == points[b] else float(points[a] > points[b])
                    outcomes.append(Outcome(a, b, float(win == 1), float(win == 0), float(win == 0.5)))
        rewards: list[float | None] = [None] * n
        cyclic, dropped = False, 0
        if outcomes:
            cyclic = has_cycle(len(node), outcomes)
            if self.aggregate == "cycle_free":
                values, arcs = cycle_free(len(node), outcomes)
                dropped = len(arcs)
            else:
                values = (bradley_terry if self.aggregate == "bradley_terry" else mean_win)(len(node), outcomes)
            rewards = values[:n]
        pairs = sum(p.error is None for p in prefs.values())
        return GroupResult(rewards, pairs, consistent, cyclic, dropped, n == 1 and not has_ref,
                           2 * len(judged) + len(scores), prefs, against, scores)  # fmt: skip


ANCHOR = GroupJudge(pairing="anchor")  # each completion against its reference only: draws nothing at random


def against_references(judge, prompts, responses, references) -> list[float | None]:
    """Each response's P(it beats its own reference) + P(tie) / 2, both orders merged, in one call (groups of one,
    `anchor`), so samples of any prompts batch together; `None` where a text is unusable or the judge failed."""
    texts = [tuple(map(as_text, sample)) for sample in zip(prompts, responses, references)]
    usable = [k for k, sample in enumerate(texts) if None not in sample]
    results = ANCHOR(judge, [Group(texts[k][0], [texts[k][1]], [texts[k][2]]) for k in usable]) if usable else []
    out: list[float | None] = [None] * len(texts)
    for k, result in zip(usable, results):
        out[k] = result.rewards[0]
    return out
