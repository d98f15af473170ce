"""`JudgeMonitor`: reward-consistency monitoring during GRPO / RLOO training, in W&B when enabled, with guards.

The judge rewards hand it their judgements after each batch; when every reward attached to it has reported, it
samples a few groups (completions of one prompt), fills in what is missing with extra judge calls (pointwise
scores, bidirectional pairs), and measures TrustJudge's conflict ratio and NTR_3 on them (`reward.consistency`).

Scalars go through TRL's `log_metric` (averaged over steps and processes, they reach every logger, W&B too).
Histograms and the table of the most inconsistent cases are logged to the W&B run directly by the main process
in `on_log`: TRL's WandbCallback has already run by then, so edits to `logs` would never reach W&B.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import threading
import time
from collections import defaultdict
from typing import NamedTuple

from transformers import TrainerCallback

from reward.anchored import reward_scores
from reward.consistency import PreferenceGraph, conflict_ratio, non_transitivity
from reward.defenses import suspicious_spans
from reward.rubric_checks import MIN_SPREAD, criterion_stats
from reward.scoring import SCORE_METHODS, entropy
from reward.text import text_key

logger = logging.getLogger(__name__)

ACTIONS = ("warn", "stop")
RELATION = {"a": 1, "b": -1, "tie": 0}


class CheckedGroup(NamedTuple):
    """One group the monitor checked, as the end-of-run summary shows it: what the judge preferred.

    `rewards` maps each reward's name to its rewards of `answers` (None: not judged); `pairs` holds
    `(i, j, win, order_consistent)` for the judged pairs, positions in `answers`, `win` = P(i beats j), ties half.
    """

    step: int
    question: str
    answers: list[str]
    rewards: dict[str, list[float | None]]
    pairs: list[tuple[int, int, float, bool]]


def require_wandb(report_to) -> bool:
    """Whether W&B is asked for (`report_to` holds "wandb" or "all"); a clear error now if it is not installed."""
    wanted = report_to if isinstance(report_to, list | tuple) else [report_to]
    if not {"wandb", "all"} & {str(x) for x in wanted}:
        return False
    if importlib.util.find_spec("wandb") is None:
        raise ImportError("report_to='wandb' needs wandb: pip install 'trustreward[wandb]'")
    return True


class JudgeMonitor(TrainerCallback):
    """Watches a judge reward's consistency during training; add it to the trainer's `callbacks` too.

    Args:
        sample_rate: fraction of a batch's groups checked (each with >= 2 completions; triples need >= 3).
        max_groups: most groups checked per batch and process, bounding the extra judge calls.
        table_rows: most inconsistent pairs per logged step in the W&B table.
        min_order_consistency: guard: the checked pairs' verdicts must agree across orders at least this often.
        max_non_transitivity: guard: NTR_3 of the checked groups must stay at or below this.
        on_inconsistency: "warn" (once per guard, with the numbers) or "stop" (also ends training after the step).
        prefix: metric prefix (`judge/conflict_ratio`, ...).
        seed: the group sampling's seed.
        max_injection_gap: guard: the mean reward of injection suspects (completions holding rating-like or
            judge-addressed text, `reward.defenses.suspicious_spans`) minus the rest's must stay at or below this.

    Logs `{prefix}/conflict_ratio`, `non_transitivity` (NTR_3), `monitor_order_consistency`, `monitor_groups`,
    `monitor_failures` and `monitor_overhead` (seconds of extra judge calls per second of reward judging); with
    W&B also `{prefix}/entropy_hist`, `rewards/<name>/hist` and the table `{prefix}/inconsistent_cases` (all under
    W&B's `train/` section, where transformers puts the scalars).
    Injection monitoring (every batch, no judge call): `{prefix}/injection_suspects` (fraction of the batch's
    completions that are suspects), `<reward prefix>/injection_gap` (their mean reward minus the others'), and
    with W&B the table `{prefix}/injection_cases` (the suspects, their spans and rewards).
    Rubric rewards (`JudgeRubricReward`): `{prefix}/rubric_conflict_ratio` on the checked groups (how often the
    rubric reward orders two completions against the merged pairwise preference: TrustJudge's CR with the rubric
    rewards as the scores; its pairs cost extra judge calls like the pointwise checks', and no pointwise score is
    fetched for it), and on every batch (no judge call) `<reward prefix>/never_discriminates`: the fraction of the
    batch's (group, criterion) pairs where the criterion's values spread less than `min_spread` over the group's
    completions (`reward.rubric_checks`). `criteria` tallies each criterion over the run (pass rate, valid mass,
    groups where it did not discriminate), and with W&B the table `{prefix}/rubric_criteria` shows that tally, so
    criteria that never discriminate can be pruned.
    `last` holds the latest check's numbers, `last_group` its first group (`CheckedGroup`), `alerts` every guard
    crossing.
    """

    def __init__(
        self,
        sample_rate: float = 0.1,
        max_groups: int = 4,
        table_rows: int = 8,
        min_order_consistency: float | None = None,
        max_non_transitivity: float | None = None,
        on_inconsistency: str = "warn",
        prefix: str = "judge",
        seed: int = 0,
        max_injection_gap: float | None = None,
        min_spread: float = MIN_SPREAD,
    ):
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if on_inconsistency not in ACTIONS:
            raise ValueError(f"on_inconsistency must be one of {ACTIONS}, got {on_inconsistency!r}")
        if max_groups < 1 or table_rows < 0:
            raise ValueError("max_groups must be >= 1 and table_rows >= 0")
        self.sample_rate, self.max_groups, self.table_rows = sample_rate, max_groups, table_rows
        self.min_order_consistency, self.max_non_transitivity = min_order_consistency, max_non_transitivity
        self.on_inconsistency, self.prefix, self.seed = on_inconsistency, prefix, seed
        self.max_injection_gap, self.min_spread = max_injection_gap, min_spread
        self.criteria: dict = {}  # criterion text -> reward.rubric_checks.CriterionStats, over the run
        self.rewards: list = []
        self.last: dict = {}
        self.last_group: CheckedGroup | None = None
        self.alerts: list[dict] = []
        self._batch: dict = {}
        # Async rewards (`AsyncJudgeReward`) report from worker threads at the same time: one at a time here, or two
        # could both see an incomplete batch (no check) or both take the full one (two checks).
        self._lock = threading.Lock()
        self._checks = 0
        self._registered = self._wandb = self._stop = False
        self._pending = _pending()

    def __getstate__(self):  # a lock does not pickle (rewards holding the monitor may be pickled)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def attach(self, reward) -> None:
        """Called by a judge reward built with `monitor=self`."""
        self.rewards.append(reward)

    # -- from the rewards -------------------------------------------------------------------------------------

    def observe(
        self, reward, *, rewards, latency, kwargs, prompts, questions, answers, scores=None, prefs=None, rubrics=None
    ):
        """One reward's judgements of a batch; the last attached reward to report triggers the check."""
        if self.on_inconsistency == "stop" and not self._registered:
            raise RuntimeError("JudgeMonitor(on_inconsistency='stop') must be in the trainer's callbacks to stop it")
        ents = [s.entropy for s in (scores or {}).values() if s.error is None]
        ents += [entropy({"a": p.p_a, "b": p.p_b, "tie": p.p_tie}) for p in (prefs or {}).values() if p.error is None]
        with self._lock:
            self._pending["rewards"][reward.__name__] += [r for r in rewards if r is not None]
            self._pending["entropy"][reward.metric_prefix] += [e for e in ents if e is not None]
            entry = {"reward": reward, "latency": latency, "scores": scores, "prefs": prefs, "rubrics": rubrics,
                     "rewards": rewards}  # fmt: skip
            self._batch[reward.__name__] = entry
            self._injection(reward, rewards, questions, answers, kwargs)
            if rubrics is not None:
                self._criteria(reward, rubrics, prompts, kwargs.get("log_metric"))
            if len(self._batch) < len(self.rewards):
                return
            batch, self._batch = self._batch, {}
        state = kwargs.get("trainer_state")
        self._check(batch, prompts, questions, answers, kwargs.get("log_metric"), getattr(state, "global_step", 0))

    def _check(self, batch, prompts, questions, answers, log_metric, step) -> None:
        groups = _groups(
            prompts, [i for i in range(len(prompts)) if questions[i] is not None and answers[i] is not None]
        )
        rng = random.Random(f"{self.seed}:{step}:{self._checks}")
        self._checks += 1
        sampled = [m for m in groups.values() if len(m) >= 2 and rng.random() < self.sample_rate][: self.max_groups]
        judge = next(iter(batch.values()))["reward"].judge
        lockstep = judge.backend.lockstep  # a sharded judge: every rank makes every call
        if not sampled and not lockstep:
            return
        scores, prefs, score_reward, pair_reward, rubrics = {}, {}, None, None, None
        for entry in batch.values():
            if entry["rubrics"] is not None and rubrics is None:  # the first rubric reward's values
                rubrics = {i: r.value for i, r in entry["rubrics"].items() if r.value is not None}
            if entry["scores"] is not None:
                scores.update(entry["scores"])
                score_reward = score_reward or entry["reward"]
            if entry["prefs"] is not None:
                prefs.update(entry["prefs"])
                pair_reward = pair_reward or entry["reward"]
        # Rubric rewards are the scores of their own conflict ratio: no pointwise score is fetched just for it.
        need_scores = score_reward is not None or rubrics is None
        want_scores = [i for m in sampled for i in m if i not in scores] if need_scores else []
        want_pairs = [(i, j) for m in sampled for k, i in enumerate(m) for j in m[k + 1 :] if (i, j) not in prefs]
        failures, start = 0, time.perf_counter()
        if want_scores or (lockstep and need_scores):
            options = {"scale": score_reward.scale} if score_reward else {}
            if score_reward and score_reward.method in SCORE_METHODS:  # a pairwise reward's method is not one
                options["method"] = score_reward.method
            try:
                # read as the score reward reads them (`score_reading`), so one graph never mixes two readings
                extra = reward_scores(judge, [questions[i] for i in want_scores], [answers[i] for i in want_scores],
                                      **options)  # fmt: skip
                scores.update(zip(want_scores, extra))
            except Exception as exc:  # a monitoring failure: counted, rewards untouched
                logger.warning("judge monitor: score call failed: %s", exc)
                failures += len(want_scores)
        if want_pairs or lockstep:
            options = {"method": pair_reward.method} if pair_reward else {}
            try:
                extra = judge.compare(
                    [questions[i] for i, _ in want_pairs],
                    [answers[i] for i, _ in want_pairs],
                    [answers[j] for _, j in want_pairs],
                    **options,
                )
                prefs.update(zip(want_pairs, extra))
            except Exception as exc:
                logger.warning("judge monitor: compare call failed: %s", exc)
                failures += len(want_pairs)
        extra_s = time.perf_counter() - start
        if not sampled:  # (a sharded judge's rank that took part with nothing to check)
            return
        failures += sum(scores[i].error is not None for i in want_scores if i in scores)
        failures += sum(prefs[p].error is not None for p in want_pairs if p in prefs)

        graphs, checked, rubric_graphs = [], [], []
        for m in sampled:
            pos = {i: k for k, i in enumerate(m)}
            pairs = [(i, j, prefs[(i, j)]) for k, i in enumerate(m) for j in m[k + 1 :] if (i, j) in prefs]
            pairs = [(i, j, p) for i, j, p in pairs if p.error is None]
            points = [scores[i].expected if i in scores and scores[i].error is None else None for i in m]
            graphs.append(
                PreferenceGraph.from_edges(
                    len(m), [(pos[i], pos[j], RELATION[p.verdict]) for i, j, p in pairs], points
                )
            )
            checked += [(i, j, p, points[pos[i]], points[pos[j]]) for i, j, p in pairs]
            if rubrics is not None:
                values = [rubrics.get(i) for i in m]
                edges = [(pos[i], pos[j], RELATION[p.verdict]) for i, j, p in pairs]
                rubric_graphs.append(PreferenceGraph.from_edges(len(m), edges, values))
        cr, ntr = conflict_ratio(graphs), non_transitivity(graphs, 3)
        order = sum(p.order_consistent for *_, p, _, _ in checked) / len(checked) if checked else None
        reward_s = sum(entry["latency"] for entry in batch.values())
        self.last = {
            "step": step,
            "conflict_ratio": cr["ratio"],
            "non_transitivity": ntr["ratio"],
            "monitor_order_consistency": order,
            "monitor_groups": len(sampled),
            "monitor_failures": failures,
            "monitor_overhead": extra_s / reward_s if reward_s > 0 else None,
        }
        if rubrics is not None:
            self.last["rubric_conflict_ratio"] = conflict_ratio(rubric_graphs)["ratio"]
        if log_metric is not None:
            for key, value in self.last.items():
                if key != "step" and value is not None:
                    log_metric(f"{self.prefix}/{key}", float(value))
        first = {i: k for k, i in enumerate(sampled[0])}
        self.last_group = CheckedGroup(
            step,
            questions[sampled[0][0]],
            [answers[i] for i in sampled[0]],
            {name: [entry["rewards"][i] for i in sampled[0]] for name, entry in batch.items()},
            [(first[i], first[j], p.p_a + p.p_tie / 2, p.order_consistent) for i, j, p, *_ in checked if i in first],
        )
        self._collect_cases(checked, prompts, questions, answers, step)
        self._guard(order, ntr["ratio"], step)

    def _criteria(self, reward, rubrics, prompts, log_metric) -> None:
        """A rubric reward's batch: every group's criteria tallied (`criteria`), the batch's share of (group,
        criterion) pairs that did not discriminate logged."""
        groups = [[rubrics[i] for i in m] for m in _groups(prompts, sorted(rubrics)).values()]
        batch = criterion_stats(groups, self.min_spread)
        criterion_stats(groups, self.min_spread, into=self.criteria)
        checked = sum(c.groups for c in batch.values())
        if log_metric is not None and checked:
            log_metric(
                f"{reward.metric_prefix}/never_discriminates", sum(c.flat_groups for c in batch.values()) / checked
            )
        self._pending["criteria"] = True

    def _collect_cases(self, checked, prompts, questions, answers, step) -> None:
        """Keeps the step's most inconsistent pairs: order flips, conflicts with the scores, then uncertainty."""
        for i, j, p, s_i, s_j in checked:
            problems = []
            if not p.order_consistent:
                problems.append("order-flip")
            if s_i is not None and s_j is not None:
                expected = (s_i > s_j) - (s_i < s_j)
                if RELATION[p.verdict] != expected:
                    problems.append("score-conflict")
            flip = abs(p.order_ab.get("A", 0) - p.order_ba.get("B", 0))  # P(i wins) read in each order
            row = [
                step,
                questions[i],
                answers[i],
                answers[j],
                p.p_a,
                p.p_b,
                p.p_tie,
                json.dumps(p.order_ab),
                json.dumps(p.order_ba),
                s_i,
                s_j,
                p.verdict,
                ", ".join(problems),
            ]
            self._pending["cases"].append((len(problems), flip, row))
        self._pending["cases"] = sorted(self._pending["cases"], key=lambda c: (-c[0], -c[1]))[: self.table_rows]

    def _guard(self, order, ntr, step) -> None:
        checks = [
            ("order_consistency", order, self.min_order_consistency, lambda v, t: v < t),
            ("non_transitivity", ntr, self.max_non_transitivity, lambda v, t: v > t),
        ]
        for name, value, threshold, crossed in checks:
            if value is None or threshold is None or not crossed(value, threshold):
                continue
            self._alert(name, value, threshold, step)

    def _alert(self, name, value, threshold, step, detail=None) -> None:
        """Records a guard crossing; warns once per guard; on_inconsistency="stop" ends training after the step."""
        self.alerts.append({"step": step, "metric": name, "value": value, "threshold": threshold})
        if len([a for a in self.alerts if a["metric"] == name]) == 1:  # warn once per guard
            logger.warning(
                "judge monitor: %s = %.3f crossed its threshold %s at step %d (%s)%s",
                name,
                value,
                threshold,
                step,
                detail or f"{self.last['monitor_groups']} groups checked",
                "; stopping after this step" if self.on_inconsistency == "stop" else "",
            )
        if self.on_inconsistency == "stop":
            self._stop = True

    def _injection(self, reward, rewards, questions, answers, kwargs) -> None:
        """Injection suspects of one reward's batch: their share, their reward gap, examples, and the gap's guard."""
        state, log_metric = kwargs.get("trainer_state"), kwargs.get("log_metric")
        step = getattr(state, "global_step", 0)
        spans = {i: suspicious_spans(a) for i, a in enumerate(answers) if a is not None}
        suspects = [i for i, s in spans.items() if s]
        if log_metric is not None and spans:
            log_metric(f"{self.prefix}/injection_suspects", len(suspects) / len(spans))
        mine = [rewards[i] for i in suspects if rewards[i] is not None]
        rest = [rewards[i] for i in spans if i not in suspects and rewards[i] is not None]
        gap = sum(mine) / len(mine) - sum(rest) / len(rest) if mine and rest else None
        if gap is not None and log_metric is not None:
            log_metric(f"{reward.metric_prefix}/injection_gap", gap)
        for i in suspects[: self.table_rows]:
            texts = " | ".join(text for _, _, text in spans[i])
            self._pending["injection"].append([step, reward.__name__, questions[i], answers[i], texts, rewards[i]])
        self._pending["injection"] = self._pending["injection"][-self.table_rows :]
        if gap is not None and self.max_injection_gap is not None and gap > self.max_injection_gap:
            detail = f"{len(suspects)} suspects of {len(spans)} completions"
            self._alert(f"injection_gap/{reward.__name__}", gap, self.max_injection_gap, step, detail)

    # -- TrainerCallback --------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._registered = True
        self._wandb = require_wandb(args.report_to)

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        pending = self._pending
        self._pending = _pending()
        if not (self._wandb and state.is_world_process_zero):
            return
        import wandb

        if wandb.run is None:
            return
        # "train/" as transformers' WandbCallback writes TRL's scalars, so all of it shares one W&B section.
        data = {f"train/{prefix}/entropy_hist": wandb.Histogram(v) for prefix, v in pending["entropy"].items() if v}
        data |= {f"train/rewards/{name}/hist": wandb.Histogram(v) for name, v in pending["rewards"].items() if v}
        if pending["cases"]:
            columns = [
                "step",
                "prompt",
                "completion_a",
                "completion_b",
                "p_a",
                "p_b",
                "p_tie",
                "order_ab",
                "order_ba",
                "score_a",
                "score_b",
                "verdict",
                "problems",
            ]
            data[f"train/{self.prefix}/inconsistent_cases"] = wandb.Table(
                columns=columns, data=[c[2] for c in pending["cases"]]
            )
        if pending.get("criteria") and self.criteria:
            columns = ["criterion", "weight", "reads", "failures", "pass_rate", "valid_mass", "groups", "flat_groups",
                       "never_discriminates"]  # fmt: skip
            rows = [[c.text, c.weight, c.reads, c.failures, c.pass_rate, c.valid_mass, c.groups, c.flat_groups,
                     c.never_discriminates] for c in self.criteria.values()]  # fmt: skip
            data[f"train/{self.prefix}/rubric_criteria"] = wandb.Table(columns=columns, data=rows)
        if pending["injection"]:
            columns = ["step", "reward", "prompt", "completion", "suspicious_text", "reward_value"]
            data[f"train/{self.prefix}/injection_cases"] = wandb.Table(columns=columns, data=pending["injection"])
        if data:
            wandb.run.log(data | {"train/global_step": state.global_step})


def _pending() -> dict:
    return {
        "entropy": defaultdict(list),
        "rewards": defaultdict(list),
        "cases": [],
        "injection": [],
        "criteria": False,
    }


def _groups(prompts, indices) -> dict[str, list[int]]:
    """The completions `indices` grouped by their prompt (identical prompts, text or chat messages)."""
    groups = defaultdict(list)
    for i in indices:
        groups[text_key(prompts[i])].append(i)  # the one prompt identity (rewards, cleaning, shards)
    return groups
