"""Reward callables for TRL's `GRPOTrainer` / `RLOOTrainer` (`reward_funcs=`), backed by a `reward.Judge`.

TRL calls `reward(prompts=..., completions=..., completion_ids=..., **dataset_columns, log_metric=..., ...)` and
treats `None` as "no reward for this sample". We never turn a failed judgement into 0: it is `None`, counted.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from statistics import fmean

from reward import Judge
from reward.anchored import reward_scores
from reward.group_judging import Group, GroupJudge, check_scale, groups_of
from reward.judge import MODES
from reward.rubric_judging import RUBRIC_MODES
from reward.rubrics import parse_rubric
from reward.scoring import SCORE_METHODS, check_choice, entropy
from reward.text import as_text

logger = logging.getLogger(__name__)
INJECTION_WARNING = (
    "JudgeScoreReward on a judge with score_reading='direct': a judge read at its score slot can be talked into a "
    "rating by the answer it judges; the defenses only remove known patterns. Keep the default anchored reading "
    "or prefer JudgePairwiseReward (docs/injection.md)."
)


class _JudgeReward:
    """Shared plumbing: a lazily loaded judge, a stable `__name__`, metric logging, failure counting."""

    def __init__(self, judge: Judge | str, name: str, metric_prefix: str, monitor=None):
        self._judge = judge
        self.__name__ = name
        self.metric_prefix = metric_prefix
        self.failures = 0  # judgements that produced no reward, over the life of this callable
        self.monitor = monitor
        if monitor is not None:
            monitor.attach(self)

    @property
    def judge(self) -> Judge:
        if isinstance(self._judge, str):  # a spec: load in the process that uses it
            from .judge_args import JudgeArguments

            self._judge = JudgeArguments(judge=self._judge).load()
        return self._judge

    def _finish(self, rewards: list, failures: int, metrics: dict, latency: float, kwargs: dict, **results) -> list:
        """Logs the batch's judge metrics; hands the judgements to the monitor, which never changes `rewards`."""
        self.failures += failures
        metrics |= {"failures": failures, "failure_rate": failures / max(1, len(rewards)), "latency_s": latency}
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for key, value in metrics.items():
                if value is not None:
                    log_metric(f"{self.metric_prefix}/{key}", float(value))
        if self.monitor is not None:
            self.monitor.observe(self, rewards=rewards, latency=latency, kwargs=kwargs, **results)
        return rewards


def _mean(values):
    return fmean(values) if values else None


class JudgeScoreReward(_JudgeReward):
    """Pointwise reward: each completion's score on 1..scale, read as the judge's `score_reading` says.

    The default reading is anchored (`reward.anchored`): the completion is compared with an anchor answer in both
    orders and scored 1 + (scale - 1) * P(it wins), a tie counted half; the anchor is the row's reference answer
    (`reference_column`) where there is one, else `reward.anchored.ANCHOR`. Two judge prompts per completion. A
    judge loaded with `score_reading="direct"` is read at its score slot (the expected score; one prompt), which
    copies ratings written in the answer in spellings no pattern list covers (docs/injection.md): it warns.

    Args:
        judge: a `reward.Judge`, or a spec for `reward.load_judge` (loaded on first use).
        scale: ratings 1..scale.
        method: "trustjudge", "mean", "geval" or "argmax" (the direct reading only).
        mode: "direct" or "rationale".
        reference_column: dataset column holding each row's reference answer, the anchor of the anchored reading.
        name: the reward's name in TRL's logs (`rewards/<name>/mean`).
        metric_prefix: prefix of the judge metrics it logs (`judge/entropy`, ...); give two judge rewards of one
            trainer different prefixes so their metrics are not averaged together.
        monitor: a `trainers.JudgeMonitor` shared by the trainer's judge rewards (consistency checks, W&B).

    Example:
    ```python
    >>> from trainers import JudgeScoreReward
    >>> reward = JudgeScoreReward("embedded")  # doctest: +SKIP
    >>> reward(prompts=["What is 2+2?"], completions=["4"])  # doctest: +SKIP
    [1.9...]

    ```
    """

    def __init__(
        self,
        judge: Judge | str = "embedded",
        *,
        scale=5,
        method="trustjudge",
        mode="direct",
        reference_column=None,
        name="judge_score",
        metric_prefix="judge",
        monitor=None,
    ):
        check_choice("method", method, SCORE_METHODS)
        check_choice("mode", mode, MODES)
        check_scale(scale)
        super().__init__(judge, name, metric_prefix, monitor)
        self.scale, self.method, self.mode, self.reference_column = scale, method, mode, reference_column
        if getattr(judge, "score_reading", None) == "direct":  # a spec loads with the default: anchored
            warnings.warn(INJECTION_WARNING, stacklevel=2)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        questions = [as_text(p) for p in prompts]
        answers = [as_text(c) for c in completions]
        ok = [i for i, (q, a) in enumerate(zip(questions, answers)) if q is not None and a is not None]
        references = kwargs.get(self.reference_column) if self.reference_column else None
        rewards: list[float | None] = [None] * len(completions)
        scores = []
        start = time.perf_counter()
        try:
            scores = reward_scores(
                self.judge,
                [questions[i] for i in ok],
                [answers[i] for i in ok],
                None if references is None else [as_text(references[i]) for i in ok],
                scale=self.scale,
                method=self.method,
                mode=self.mode,
            )
        except Exception as exc:  # a broken judge costs this batch's rewards, never the training run
            logger.warning("%s: judge call failed: %s", self.__name__, exc)
        for i, s in zip(ok, scores):
            rewards[i] = s.expected
        good = [s for s in scores if s.error is None]
        metrics = {
            "entropy": _mean([s.entropy for s in good]),
            "valid_mass": _mean([s.valid_mass for s in good]),
            "truncated": sum(s.truncated for s in scores),
        }
        latency = time.perf_counter() - start
        results = {"prompts": prompts, "questions": questions, "answers": answers, "scores": dict(zip(ok, scores))}
        return self._finish(rewards, sum(r is None for r in rewards), metrics, latency, kwargs, **results)


class JudgePairwiseReward(_JudgeReward):
    """Pairwise reward: each completion's standing among its group peers, from bidirectional judgements.

    Completions that share a prompt form a group (by prompt identity, so groups split across batches or
    processes still work), judged by `reward.group_judging.GroupJudge`: which pairs (`pairing`: `all`,
    `adaptive`, `anchor`, `circular`, `swiss`) and how judged pairs become rewards (`aggregate`: `mean_win`,
    `bradley_terry`, `cycle_free`) are described there.

    With `reference_column`, a group whose rows all hold a reference answer is compared with its peers and with
    the reference too (`anchor`: with the reference only); with `mean_win` a completion's reward is the mean win
    probability over all its judged opponents, the reference counting as one opponent like each peer.

    A completion without peer or reference gets `None` (counted), never 0.

    Args:
        judge: a `reward.Judge`, or a spec for `reward.load_judge` (loaded on first use).
        method: "likelihood", "ppl" or "baseline" (see `Judge.compare`); the reward uses the merged probabilities.
        mode: "direct" or "rationale".
        pairing: one of `reward.group_judging.PAIRINGS`.
        aggregate: one of `reward.groups.AGGREGATES`; default `reward.groups.DEFAULT_AGGREGATE[pairing]`.
        reference_column: dataset column holding the reference answer (needed by `anchor`).
        adaptive_margin, max_pairs_per_group, scale: `adaptive`'s score margin, per-group budget, rating scale.
        swiss_rounds: `swiss`'s rounds before its closing calls (default `reward.groups.swiss_rounds`:
            max(ceil(log2 G) + 1, (G - 1) // 3), one less from G = 8 on).
        seed: seed of `circular`'s cycles and `swiss`'s first-round order.
        name: the reward's name in TRL's logs (`rewards/<name>/mean`).
        metric_prefix: prefix of the judge metrics it logs (`judge/order_consistency`, `judge/cyclic_groups`, ...).
        monitor: a `trainers.JudgeMonitor` shared by the trainer's judge rewards (consistency checks, W&B).
    """

    def __init__(
        self,
        judge: Judge | str = "embedded",
        *,
        method="likelihood",
        mode="direct",
        pairing="all",
        aggregate=None,
        reference_column=None,
        adaptive_margin=0.5,
        max_pairs_per_group=None,
        scale=5,
        swiss_rounds=None,
        seed=0,
        name="judge_pairwise",
        metric_prefix="judge",
        monitor=None,
    ):
        self.engine = GroupJudge(pairing=pairing, aggregate=aggregate, method=method, mode=mode,
                                 adaptive_margin=adaptive_margin, max_pairs_per_group=max_pairs_per_group,
                                 scale=scale, swiss_rounds=swiss_rounds, seed=seed)  # fmt: skip
        if pairing == "anchor" and not reference_column:
            raise ValueError("pairing='anchor' needs reference_column (the dataset column with the reference answer)")
        super().__init__(judge, name, metric_prefix, monitor)
        self.method, self.mode, self.pairing, self.reference_column = method, mode, pairing, reference_column
        self.aggregate, self.scale, self.swiss_rounds = self.engine.aggregate, scale, swiss_rounds

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        questions = [as_text(p) for p in prompts]
        answers = [as_text(c) if q is not None else None for q, c in zip(questions, completions)]
        references = kwargs.get(self.reference_column) if self.reference_column else None
        if self.pairing == "anchor" and references is None:
            raise ValueError(f"pairing='anchor': the batch has no column {self.reference_column!r}")
        members = groups_of(prompts, answers)
        refs = [None if references is None else [as_text(references[i]) for i in m] for m in members]
        groups = [Group(questions[m[0]], [answers[i] for i in m], r) for m, r in zip(members, refs)]
        start = time.perf_counter()
        results = self.engine(self.judge, groups)
        rewards: list[float | None] = [None] * len(completions)
        prefs, peers, scores = [], {}, {}
        for m, result in zip(members, results):
            for i, r in zip(m, result.rewards):
                rewards[i] = r
            prefs += [*result.against_reference.values(), *result.prefs.values()]
            peers |= {(m[a], m[b]): p for (a, b), p in result.prefs.items()}
            scores |= {m[k]: s for k, s in result.scores.items()}
        good = [p for p in prefs if p.error is None]
        graphs = sum(any(r is not None for r in result.rewards) for result in results)
        possible = sum(len(m) * (len(m) - 1) // 2 for m in members)
        metrics = {
            "order_consistency": _mean([float(p.order_consistent) for p in good]),
            "tie_rate": _mean([float(p.verdict == "tie") for p in good]),
            "entropy": _mean([entropy({"a": p.p_a, "b": p.p_b, "tie": p.p_tie}) for p in good]),
            "valid_mass": _mean([p.valid_mass for p in good]),
            "no_peer": sum(a is not None and rewards[i] is None for i, a in enumerate(answers)),
            "truncated": sum(p.truncated for p in prefs),
            "compared_fraction": sum(r.pairs for r in results) / possible if possible else None,
            "cyclic_groups": sum(r.cyclic for r in results) / graphs if graphs else None,
            "arcs_dropped": sum(r.arcs_dropped for r in results) if self.aggregate == "cycle_free" else None,
            "prompts_per_group": sum(r.prompts for r in results) / len(groups) if groups else None,
        }
        latency = time.perf_counter() - start
        out = {"prompts": prompts, "questions": questions, "answers": answers, "prefs": peers}
        if scores:
            out["scores"] = scores
        return self._finish(rewards, sum(r is None for r in rewards), metrics, latency, kwargs, **out)


class JudgeRubricReward(_JudgeReward):
    """Rubric reward: each completion read against its prompt's rubric (`reward.rubric_judging`), on [0, 1].

    The rubric comes from a dataset column (`rubric_column`: a list of criteria in any format
    `reward.rubrics.parse_rubric` reads, or its JSON text); TRL hands it over as a keyword argument, one entry per
    completion. `mode`: "explicit" (each criterion's choices read exactly, weighted, pitfalls take off),
    "implicit" (one 1-10 score given every criterion, both criterion orders merged) or "pairwise" (each criterion
    compared with the anchor answer in `reference_column`, both orders merged; 0.5: as good as the anchor; a row
    without one is compared with `reward.anchored.ANCHOR`, as the anchored pointwise reading is).

    `None` (counted in `failures`), never 0: a criterion the judge failed to read, a rubric that does not parse
    (also counted in `rubric_invalid`, with a warning naming the problem).

    Logs through TRL's `log_metric`: `{prefix}/valid_mass`, `entropy` (explicit and pairwise: means over the
    criteria read; implicit: of the 1-10 read), `criteria_failed`, `rubric_invalid`, `truncated`, `order_gap`
    (implicit) and, per criterion (explicit and pairwise), `{prefix}/criterion/<its text>/value` (its mean value
    over the batch: the pass rate) and `.../valid_mass`.

    Args:
        judge: a `reward.Judge`, or a spec for `reward.load_judge` (loaded on first use).
        rubric_column: the dataset column holding each prompt's rubric.
        mode: one of `reward.rubric_judging.RUBRIC_MODES`.
        reference_column: pairwise mode: the column holding the anchor answer (rows without one, or no column at
            all: `reward.anchored.ANCHOR`).
        name: the reward's name in TRL's logs (`rewards/<name>/mean`).
        metric_prefix: prefix of the judge metrics it logs.
        monitor: a `trainers.JudgeMonitor` (rubric-vs-pairwise conflict ratio, criteria that never discriminate).

    Example:
    ```python
    >>> from trainers import JudgeRubricReward
    >>> reward = JudgeRubricReward("embedded")  # doctest: +SKIP
    >>> reward(prompts=["Capital of France?"], completions=["Paris."], rubric=['["Names Paris"]'])  # doctest: +SKIP
    [0.6...]

    ```
    """

    def __init__(
        self,
        judge: Judge | str = "embedded",
        *,
        rubric_column="rubric",
        mode="explicit",
        reference_column=None,
        name="judge_rubric",
        metric_prefix="judge",
        monitor=None,
    ):
        check_choice("mode", mode, RUBRIC_MODES)
        if not isinstance(rubric_column, str) or not rubric_column:
            raise ValueError("rubric_column must name the dataset column holding the rubrics")
        super().__init__(judge, name, metric_prefix, monitor)
        self.rubric_column, self.mode, self.reference_column = rubric_column, mode, reference_column
        self.rubric_invalid = 0  # rows whose rubric did not parse, over the life of this callable

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        rubrics = kwargs.get(self.rubric_column)
        if rubrics is None:
            raise ValueError(f"JudgeRubricReward: the batch has no column {self.rubric_column!r} (rubric_column)")
        questions = [as_text(p) for p in prompts]
        answers = [as_text(c) for c in completions]
        anchors = [None] * len(prompts)
        if self.mode == "pairwise" and self.reference_column:
            column = kwargs.get(self.reference_column)
            if column is None:
                raise ValueError(f"JudgeRubricReward: the batch has no column {self.reference_column!r}")
            anchors = [as_text(a) for a in column]  # `None` where a row has none: the engine's default anchor
        parsed, invalid = _rubrics(rubrics, self.__name__)
        ok = [i for i in range(len(prompts)) if questions[i] is not None and answers[i] is not None
              and i not in invalid]  # fmt: skip
        rewards: list[float | None] = [None] * len(completions)
        results = []
        start = time.perf_counter()
        try:
            results = self.judge.rubric(
                [questions[i] for i in ok],
                [answers[i] for i in ok],
                [parsed[i] for i in ok],
                mode=self.mode,
                references=[anchors[i] for i in ok] if self.mode == "pairwise" else None,
            )
        except Exception as exc:  # a broken judge costs this batch's rewards, never the training run
            logger.warning("%s: judge call failed: %s", self.__name__, exc)
        for i, r in zip(ok, results):
            rewards[i] = r.value
        self.rubric_invalid += len(invalid)
        metrics = rubric_metrics(results) | {"rubric_invalid": len(invalid)}
        latency = time.perf_counter() - start
        out = {"prompts": prompts, "questions": questions, "answers": answers, "rubrics": dict(zip(ok, results))}
        return self._finish(rewards, sum(r is None for r in rewards), metrics, latency, kwargs, **out)


def _rubrics(column, name: str) -> tuple[list, set[int]]:
    """Each row's parsed rubric (`None` where it does not parse) and the rows that did not, warned about once per
    batch with the first problem."""
    parsed, invalid, first = [], set(), None
    for i, value in enumerate(column):
        try:
            parsed.append(parse_rubric(value))
        except (ValueError, TypeError) as exc:
            parsed.append(None)
            invalid.add(i)
            first = first or f"row {i}: {exc}"
    if invalid:
        logger.warning("%s: %d rubric(s) did not parse, their rewards are None (%s)", name, len(invalid), first)
    return parsed, invalid


def criterion_key(text: str) -> str:
    """A criterion's name in metric keys: its text, lower case, runs of other characters as one `_`, at most 48.

    ```python
    >>> criterion_key("States that A is the grandfather of C!")
    'states_that_a_is_the_grandfather_of_c'

    ```
    """
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "criterion"


def rubric_metrics(results) -> dict:
    """The metrics of a batch's `RubricScore`s (see `JudgeRubricReward`): means over what was read."""
    reads = [c for r in results for c in r.criteria if c.error is None]
    whole = [r for r in results if r.error is None]
    metrics = {
        "valid_mass": _mean([c.valid_mass for c in reads] or [r.valid_mass for r in whole if not r.criteria]),
        "entropy": _mean([c.entropy for c in reads] or [r.entropy for r in whole if r.entropy is not None]),
        "criteria_failed": sum(r.failed for r in results),
        "truncated": sum(r.truncated for r in results),
        "order_gap": _mean([r.order_gap for r in whole if r.order_gap is not None]),
    }
    per: dict[str, list] = {}
    for c in reads:
        per.setdefault(criterion_key(c.text), []).append(c)
    for key, crits in per.items():
        metrics[f"criterion/{key}/value"] = fmean(c.value for c in crits)
        metrics[f"criterion/{key}/valid_mass"] = fmean(c.valid_mass for c in crits)
    return metrics


class AsyncJudgeReward:
    """The async face of a judge reward: TRL (GRPO, RLOO) awaits async reward functions together on its event
    loop, so two judge rewards behind servers (or a judge and an async verifier) wait on their servers at the same
    time instead of one after the other. The judge call itself runs in a worker thread.

    Not for a sharded (lockstep) judge: two rewards sharing its collectives at once could interleave them
    differently on each rank.

    Args:
        reward: a `JudgeScoreReward`, `JudgePairwiseReward` or `JudgeRubricReward` (its name, metrics and monitor
            are kept).

    Example:
    ```python
    >>> import asyncio
    >>> from trainers import AsyncJudgeReward, JudgeScoreReward
    >>> reward = AsyncJudgeReward(JudgeScoreReward("openai:http://127.0.0.1:8080/v1"))  # doctest: +SKIP
    >>> asyncio.run(reward(prompts=["What is 2+2?"], completions=["4"]))  # doctest: +SKIP
    [1.9...]

    ```
    """

    def __init__(self, reward: _JudgeReward):
        if not isinstance(reward, _JudgeReward):
            raise TypeError(f"AsyncJudgeReward wraps a judge reward, got {type(reward).__name__}")
        self.reward = reward
        self.__name__ = reward.__name__

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        import asyncio

        return await asyncio.to_thread(self.reward, prompts, completions, completion_ids, **kwargs)

    def __getattr__(self, name):  # failures, judge, monitor, ... of the wrapped reward
        if name == "reward":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.reward, name)
