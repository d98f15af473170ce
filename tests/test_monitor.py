import builtins
import importlib.util
import logging
from types import SimpleNamespace

import pytest
from conftest import answer_in_slot

from reward.consistency import PreferenceGraph, conflict_ratio, non_transitivity
from trainers import JudgeMonitor, JudgePairwiseReward, JudgeScoreReward
from trainers.monitor import require_wandb

# x > y > z > x (a planted cycle); w loses to everyone.
BEATS = {("x", "y"), ("y", "z"), ("z", "x"), ("x", "w"), ("y", "w"), ("z", "w")}
ANSWERS = ["w", "x", "y", "z"]


def cyclic(prompt):
    a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
    return {"A": 0.8, "B": 0.1, "C": 0.1} if (a, b) in BEATS else {"A": 0.1, "B": 0.8, "C": 0.1}


POINTS = {"1": 0.1, "2": 0.2, "3": 0.4, "4": 0.2, "5": 0.1}  # the same for every answer: all scores equal


class Log:
    def __init__(self):
        self.metrics = {}

    def __call__(self, name, value):
        self.metrics[name] = value


def call(rewards, log, step=0, prompts=None):
    prompts = prompts or ["q"] * 4
    state = SimpleNamespace(global_step=step)
    return [
        r(prompts=prompts, completions=ANSWERS, completion_ids=None, log_metric=log, trainer_state=state)
        for r in rewards
    ]


def judge_clock(judge, monkeypatch):
    """An injected clock: it advances one second per prompt the judge reads, and never otherwise, so the monitor's
    overhead (seconds of extra judging per second of reward judging) is exact whatever the machine's load."""
    import time

    clock = SimpleNamespace(now=0.0)
    read = judge.backend.label_logprobs

    def timed(prompts, labels):
        clock.now += len(prompts)
        return read(prompts, labels)

    monkeypatch.setattr(judge.backend, "label_logprobs", timed)
    monkeypatch.setattr(time, "perf_counter", lambda: clock.now)


def test_consistency_of_a_group_from_the_rewards_own_judgements(fake_judge, monkeypatch):
    judge = fake_judge(rule=cyclic, points=POINTS)
    judge_clock(judge, monkeypatch)
    monitor = JudgeMonitor(sample_rate=1.0)
    rewards = [
        JudgeScoreReward(judge, monitor=monitor),
        JudgePairwiseReward(judge, monitor=monitor, metric_prefix="judge/p"),
    ]
    log = Log()
    calls_before = len(judge.backend.prompts)
    got = call(rewards, log)
    # Both rewards ran: everything the check needs was judged already, no extra call.
    assert len(judge.backend.prompts) - calls_before == 4 + 6 * 2
    # By hand: 6 strict verdicts against 4 equal scores -> CR = 6/6; of the 4 triples only {x, y, z} is bad.
    assert log.metrics["judge/conflict_ratio"] == 1.0 and log.metrics["judge/non_transitivity"] == 0.25
    assert log.metrics["judge/monitor_order_consistency"] == 1.0 and log.metrics["judge/monitor_failures"] == 0
    assert log.metrics["judge/monitor_overhead"] == 0.0 and log.metrics["judge/monitor_groups"] == 1
    # And with reward.consistency on the same verdicts, independently.
    edges = [(ANSWERS.index(a), ANSWERS.index(b), 1) for a, b in BEATS]
    g = PreferenceGraph.from_edges(4, edges, [monitor.rewards[0].judge.score(["q"], ["w"])[0].expected] * 4)
    assert conflict_ratio([g])["ratio"] == 1.0 and non_transitivity([g], 3)["ratio"] == 0.25
    cases = monitor._pending["cases"]
    assert len(cases) == 6 and all("score-conflict" in c[2][-1] for c in cases)
    # What the end-of-run summary ranks: the group, each reward's own rewards of it, the judged pairs with winners.
    group = monitor.last_group
    assert (group.step, group.question, group.answers) == (0, "q", ANSWERS)
    assert group.rewards == {r.__name__: g for r, g in zip(rewards, got)}
    assert len(group.pairs) == 6 and all(ok for *_, ok in group.pairs)
    assert {(ANSWERS[i], ANSWERS[j]) if w > 0.5 else (ANSWERS[j], ANSWERS[i]) for i, j, w, _ in group.pairs} == BEATS


def test_missing_judgements_are_made_and_their_cost_reported(fake_judge, monkeypatch):
    judge = fake_judge(rule=cyclic, points=POINTS)
    judge_clock(judge, monkeypatch)
    monitor = JudgeMonitor(sample_rate=1.0)
    pairwise = JudgePairwiseReward(judge, monitor=monitor)
    log = Log()
    before = len(judge.backend.prompts)
    (rewards,) = call([pairwise], log)
    assert len(judge.backend.prompts) - before == 6 * 2 + 4  # the reward's pairs, then 4 extra pointwise scores
    # 4 extra prompts per 12 of the reward's: the injected clock makes the ratio exact.
    assert log.metrics["judge/monitor_overhead"] == 4 / 12 and log.metrics["judge/non_transitivity"] == 0.25
    assert rewards == JudgePairwiseReward(judge)(prompts=["q"] * 4, completions=ANSWERS)  # rewards unchanged


def test_one_conversation_is_one_group_whatever_its_keys_order(fake_judge):
    # The same chat prompt with its message keys in another order (rows from two sources): one group of 4, its
    # 6 pairs and 1 bad triple, as the rewards group it; grouping by the raw JSON would see two groups of 2.
    judge = fake_judge(rule=cyclic, points=POINTS)
    monitor = JudgeMonitor(sample_rate=1.0)
    log = Log()
    conversations = [[{"role": "user", "content": "q"}], [{"content": "q", "role": "user"}]] * 2
    call([JudgePairwiseReward(judge, monitor=monitor)], log, prompts=conversations)
    assert log.metrics["judge/monitor_groups"] == 1 and log.metrics["judge/non_transitivity"] == 0.25


STRENGTH = {"w": 0, "x": 1, "y": 2, "z": 3}


def first_slot_surer(prompt):
    """The stronger answer wins in both orders; the weaker one, shown first, gets 0.15 more per step of strength
    between the two: P(weaker wins) read in its two orders differs by 0.15 x the gap (0.45 for w against z)."""
    a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
    gap = STRENGTH[b] - STRENGTH[a]
    return {"A": 0.1 + 0.15 * gap, "B": 0.8, "C": 0.1} if gap > 0 else {"A": 0.8, "B": 0.1, "C": 0.1}


def test_the_table_keeps_the_pairs_whose_orders_differ_most(fake_judge):
    # Every pair has one problem (a strict verdict against equal scores) and consistent orders: the table's order
    # is then P(i wins) read in each order (order_ab's A against order_ba's B), largest difference first.
    monitor = JudgeMonitor(sample_rate=1.0, table_rows=2)
    call([JudgePairwiseReward(fake_judge(rule=first_slot_surer, points=POINTS), monitor=monitor)], Log())
    rows = [c[2] for c in monitor._pending["cases"]]
    assert [(r[2], r[3]) for r in rows] == [("w", "z"), ("w", "y")] and [r[-1] for r in rows] == ["score-conflict"] * 2
    assert [c[1] for c in monitor._pending["cases"]] == pytest.approx([0.45, 0.3])


def test_max_groups_caps_the_groups_checked(fake_judge):
    monitor = JudgeMonitor(sample_rate=1.0, max_groups=2)
    log = Log()
    reward = JudgePairwiseReward(fake_judge(rule=cyclic, points=POINTS), monitor=monitor)
    reward(prompts=[q for q in "pqrs" for _ in range(2)], completions=ANSWERS * 2, completion_ids=None, log_metric=log)
    assert log.metrics["judge/monitor_groups"] == 2  # of 4 groups of 2


def test_a_failing_monitor_call_is_counted_and_never_touches_rewards(fake_judge):
    judge = fake_judge(rule=cyclic, points={"7": 1.0})  # no mass on 1..5: every pointwise judgement fails
    monitor = JudgeMonitor(sample_rate=1.0)
    log = Log()
    (rewards,) = call([JudgePairwiseReward(judge, monitor=monitor)], log)
    assert log.metrics["judge/monitor_failures"] == 4 and "judge/conflict_ratio" not in log.metrics
    assert log.metrics["judge/non_transitivity"] == 0.25 and None not in rewards


def test_failed_monitor_pairs_are_counted(fake_judge):
    # A pointwise reward: the check's 6 pairs are the monitor's own calls, and every one fails (no verdict mass).
    monitor = JudgeMonitor(sample_rate=1.0)
    log = Log()
    (rewards,) = call([JudgeScoreReward(fake_judge(rule=lambda prompt: {}, points=POINTS), monitor=monitor)], log)
    assert log.metrics["judge/monitor_failures"] == 6 and "judge/non_transitivity" not in log.metrics
    assert None not in rewards


def test_sampling_rate_bounds_the_checks(fake_judge):
    judge = fake_judge(rule=cyclic, points=POINTS)
    monitor = JudgeMonitor(sample_rate=0.0)
    log = Log()
    call([JudgePairwiseReward(judge, monitor=monitor)], log)
    assert "judge/monitor_groups" not in log.metrics and monitor.last == {}
    with pytest.raises(ValueError, match="sample_rate"):
        JudgeMonitor(sample_rate=2)


def test_guards_warn_once_and_stop(fake_judge, caplog):
    judge = fake_judge(rule=cyclic, points=POINTS)
    monitor = JudgeMonitor(sample_rate=1.0, max_non_transitivity=0.2)
    reward = JudgePairwiseReward(judge, monitor=monitor)
    with caplog.at_level(logging.WARNING, logger="trainers.monitor"):
        call([reward], Log(), step=0)
        call([reward], Log(), step=1)
    warnings = [r for r in caplog.records if "crossed its threshold" in r.getMessage()]
    assert len(warnings) == 1 and "non_transitivity = 0.250" in warnings[0].getMessage()
    assert [a["step"] for a in monitor.alerts] == [0, 1]

    stopper = JudgeMonitor(sample_rate=1.0, max_non_transitivity=0.2, on_inconsistency="stop")
    reward = JudgePairwiseReward(judge, monitor=stopper)
    with pytest.raises(RuntimeError, match="callbacks"):
        call([reward], Log())  # not registered with the trainer: it could not stop it
    args = SimpleNamespace(report_to=["none"])
    control = SimpleNamespace(should_training_stop=False)
    stopper.on_train_begin(args, None, control)
    call([reward], Log())
    stopper.on_step_end(args, None, control)
    assert control.should_training_stop is True


def test_no_wandb_import_when_not_reporting_to_it(fake_judge, monkeypatch):
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise AssertionError("wandb imported")
        return real_import(name, *args, **kwargs)

    judge = fake_judge(rule=cyclic, points=POINTS)
    monitor = JudgeMonitor(sample_rate=1.0)
    reward = JudgePairwiseReward(judge, monitor=monitor)
    monkeypatch.setattr(builtins, "__import__", guarded)
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    monitor.on_train_begin(SimpleNamespace(report_to=["none"]), state, None)
    call([reward], Log())
    monitor.on_log(SimpleNamespace(report_to=["none"]), state, None, logs={})


def test_require_wandb(monkeypatch):
    assert require_wandb(["none"]) is False and require_wandb("tensorboard") is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(ImportError, match="trustreward\\[wandb\\]"):
        require_wandb(["wandb"])


def test_a_sharded_judge_gets_every_call_on_every_rank(tiny_judge):
    """With a lockstep (sharded) judge, a rank with nothing to judge still makes each judge call, so that all
    ranks run the same collectives: here, counted by the backend's `agree`."""
    from conftest import FakeBackend

    from reward import Judge

    class Lockstep(FakeBackend):
        lockstep = True
        agreed = 0

        def agree(self, count, error=None):
            Lockstep.agreed += 1
            return count

    judge = Judge(Lockstep(tiny_judge.tokenizer, cyclic, POINTS), progress=False)
    monitor = JudgeMonitor(sample_rate=0.0)  # this rank samples no group
    reward = JudgePairwiseReward(judge, monitor=monitor)
    rewards = reward(prompts=["q1", "q2"], completions=["x", "y"], trainer_state=SimpleNamespace(global_step=0))
    assert rewards == [None, None]  # no peers: nothing to judge here
    assert Lockstep.agreed == 3  # the reward's compare, then the monitor's score and compare, all empty


def test_concurrent_async_rewards_make_one_check_per_batch(fake_judge):
    """TRL awaits async rewards together, so two rewards report from two threads at once. A batch store that is slow
    to answer `len` widens the window in which, without the monitor's lock, both threads see the full batch (one
    then checks an empty batch and fails) or neither does (no check)."""
    import asyncio
    import time

    from conftest import RecordingMonitor

    from trainers import AsyncJudgeReward

    class SlowBatch(dict):
        def __len__(self):
            time.sleep(0.2)
            return super().__len__()

    class Monitor(RecordingMonitor, JudgeMonitor):
        @property
        def _batch(self):
            return self.__dict__["_slow"]

        @_batch.setter
        def _batch(self, value):
            self.__dict__["_slow"] = SlowBatch(value)

    judge = fake_judge(rule=cyclic, points=POINTS)
    monitor = Monitor(sample_rate=1.0)
    rewards = [
        AsyncJudgeReward(JudgeScoreReward(judge, monitor=monitor)),
        AsyncJudgeReward(JudgePairwiseReward(judge, monitor=monitor, metric_prefix="judge/p")),
    ]

    async def step(n):
        state = SimpleNamespace(global_step=n)
        calls = [r(prompts=["q"] * 4, completions=ANSWERS, log_metric=Log(), trainer_state=state) for r in rewards]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=30)  # a lost batch can hang the gather

    for n in range(3):
        asyncio.run(step(n))
    # One check per step, each with both rewards' judgements (so no extra judge call and the numbers by hand).
    assert [c["step"] for c in monitor.checks] == [0, 1, 2]
    assert all(c["conflict_ratio"] == 1.0 and c["non_transitivity"] == 0.25 for c in monitor.checks)
    assert len(judge.backend.prompts) == 3 * (4 + 6 * 2)


# A linear order w < x < y < z in both readings: pointwise peaks at 1, 2, 3, 4, pairwise the better one wins.
RANK = {"w": 0, "x": 1, "y": 2, "z": 3}


def answer_in_score_prompt(prompt):
    return prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of", 1)[0]


def peaked(prompt):
    top = RANK[answer_in_score_prompt(prompt)] + 1
    return {str(s): 0.9 if s == top else 0.025 for s in range(1, 6)}


def agreeing(flipped=frozenset()):
    """The pairwise judge agrees with the scores, except on the (unordered) pairs in `flipped`."""

    def rule(prompt):
        a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
        a_better = (RANK[a] > RANK[b]) != (frozenset((a, b)) in flipped)
        return {"A": 0.8, "B": 0.1, "C": 0.1} if a_better else {"A": 0.1, "B": 0.8, "C": 0.1}

    return rule


def test_conflict_ratio_counts_verdicts_against_the_scores_not_with_them(fake_judge):
    """Scores and verdicts that agree are no conflict; one verdict against the scores is one of six (a monitor
    orienting verdicts backwards would log 1.0 and 5/6, and label the agreeing pairs "score-conflict")."""
    for flipped, ratio in ((frozenset(), 0.0), (frozenset({frozenset("xz")}), 1 / 6)):
        judge = fake_judge(rule=agreeing(flipped), points=peaked)
        monitor = JudgeMonitor(sample_rate=1.0)
        rewards = [
            JudgeScoreReward(judge, monitor=monitor),
            JudgePairwiseReward(judge, monitor=monitor, metric_prefix="judge/p"),
        ]
        log = Log()
        call(rewards, log)
        assert log.metrics["judge/conflict_ratio"] == pytest.approx(ratio)
        assert log.metrics["judge/non_transitivity"] == (0.25 if flipped else 0.0)  # x > z breaks {x, y, z}
        # The W&B table's labels: "score-conflict" on exactly the flipped pair.
        conflicts = {frozenset((c[2][2], c[2][3])) for c in monitor._pending["cases"] if "score-conflict" in c[2][-1]}
        assert conflicts == set(flipped)


def position_biased(prompt):
    """Whatever the answers, A wins: every verdict flips with the order (order consistency 0)."""
    return {"A": 0.8, "B": 0.1, "C": 0.1}


@pytest.mark.parametrize(
    ("rule", "threshold", "alerts"),
    [(position_biased, 0.5, 1), (agreeing(), 0.5, 0), (agreeing(), 1.0, 0), (position_biased, 0.0, 0)],
)
def test_min_order_consistency_guard(fake_judge, rule, threshold, alerts):
    """The guard the demo recipe relies on: it fires when order consistency falls below the threshold (and only
    then: 1.0 against 1.0 and 0.0 against 0.0 are not below)."""
    judge = fake_judge(rule=rule, points=POINTS)
    monitor = JudgeMonitor(sample_rate=1.0, min_order_consistency=threshold)
    log = Log()
    call([JudgePairwiseReward(judge, monitor=monitor)], log)
    assert log.metrics["judge/monitor_order_consistency"] == (0.0 if rule is position_biased else 1.0)
    assert [a["metric"] for a in monitor.alerts] == ["order_consistency"] * alerts
