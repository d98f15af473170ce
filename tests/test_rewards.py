import pickle

import pytest
from conftest import answer_in_slot

from trainers import AsyncJudgeReward, JudgePairwiseReward, JudgeScoreReward, as_text


def longer_wins(prompt):
    """A judge that prefers the longer answer; P(win) grows with the length gap."""
    a, b = len(answer_in_slot(prompt, "A")), len(answer_in_slot(prompt, "B"))
    if a == b:
        return {"A": 0.2, "B": 0.2, "C": 0.6}
    return {"A": 0.7, "B": 0.2, "C": 0.1} if a > b else {"A": 0.2, "B": 0.7, "C": 0.1}


class Log:
    def __init__(self):
        self.metrics = {}

    def __call__(self, name, value):
        self.metrics[name] = value


def test_pairwise_group_rewards(fake_judge):
    reward = JudgePairwiseReward(fake_judge(rule=longer_wins))
    log = Log()
    prompts = ["p1"] * 3 + [[{"role": "user", "content": "p2"}]] * 2
    completions = ["x", "xxx", "xx", [{"role": "assistant", "content": "yy"}], [{"role": "assistant", "content": "y"}]]
    rewards = reward(
        prompts=prompts, completions=completions, completion_ids=None, log_metric=log, extra_column=[0] * 5
    )
    # Merged: longer vs shorter -> p_long = (0.7 + 0.7) / 2 = 0.7, p_short = 0.2, tie = 0.1 -> win 0.75 vs 0.25.
    assert rewards == pytest.approx([0.25, 0.75, 0.5, 0.75, 0.25])
    assert log.metrics["judge/order_consistency"] == 1.0
    assert log.metrics["judge/failures"] == 0
    assert reward.__name__ == "judge_pairwise"


def test_pairwise_none_is_counted_never_zero(fake_judge):
    reward = JudgePairwiseReward(fake_judge(rule=longer_wins))
    log = Log()
    rewards = reward(prompts=["p", "p", "p", "alone"], completions=["x", "  ", None, "z"], log_metric=log)
    assert rewards == [None, None, None, None]  # "x" lost its only peers; "alone" has none
    assert log.metrics["judge/failures"] == 4 and log.metrics["judge/no_peer"] == 2
    # Equal answers tie: 0.5 each.
    assert reward(prompts=["p", "p"], completions=["ab", "cd"]) == pytest.approx([0.5, 0.5])


def test_pairwise_against_reference(fake_judge):
    reward = JudgePairwiseReward(fake_judge(rule=longer_wins), reference_column="reference")
    rewards = reward(prompts=["p", "p"], completions=["xxxx", "x"], reference=["xx", "xx"])
    assert rewards == pytest.approx([0.75, 0.25])


def test_score_reward(fake_judge):
    reward = JudgeScoreReward(fake_judge(points={"4": 0.3, "5": 0.1}), method="mean")
    log = Log()
    rewards = reward(prompts=["p", "p"], completions=["fine", ""], log_metric=log)
    assert rewards[0] == pytest.approx(4.25) and rewards[1] is None
    assert log.metrics["judge/valid_mass"] == pytest.approx(0.4)
    assert log.metrics["judge/failures"] == 1


def test_broken_judge_gives_none(fake_judge):
    def broken(prompt):
        raise RuntimeError("boom")

    reward = JudgePairwiseReward(fake_judge(rule=broken))
    assert reward(prompts=["p", "p"], completions=["a", "b"]) == [None, None]
    assert reward.failures == 2


def test_rewards_pickle(tiny_judge):
    for reward in (JudgeScoreReward(tiny_judge), JudgePairwiseReward(tiny_judge), JudgeScoreReward("embedded")):
        clone = pickle.loads(pickle.dumps(reward))
        assert clone.__name__ == reward.__name__
    clone = pickle.loads(pickle.dumps(JudgeScoreReward(tiny_judge)))
    assert clone(prompts=["q"], completions=["a"])[0] == pytest.approx(
        JudgeScoreReward(tiny_judge)(prompts=["q"], completions=["a"])[0], abs=1e-6
    )


def test_as_text():
    assert as_text("hi") == "hi"
    assert as_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]) == "q"
    assert (
        as_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "User: q\n\nAssistant: a"
    )
    assert as_text(None) is None and as_text("  ") is None and as_text([{"role": "user"}]) is None


def score_by_length(prompt):
    """Pointwise: answers of 1-2 characters rate 1, of 8+ characters rate 5 (sure of it)."""
    answer = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
    return {"1": 1.0} if len(answer) <= 2 else {"5": 1.0}


def test_adaptive_pairing_compares_only_close_scores(fake_judge):
    judge = fake_judge(rule=longer_wins, points=score_by_length)
    answers = ["x", "xx", "xxxxxxxx", "xxxxxxxxx"]
    reward = JudgePairwiseReward(judge, pairing="adaptive", adaptive_margin=0.5)
    log = Log()
    before = len(judge.backend.prompts)
    rewards = reward(prompts=["q"] * 4, completions=answers, log_metric=log)
    # 4 pointwise prompts, then only (x, xx) and (8x, 9x) are within the margin: 2 pairs x 2 orders.
    assert len(judge.backend.prompts) - before == 4 + 4
    assert log.metrics["judge/compared_fraction"] == pytest.approx(2 / 6)
    # x: its compared pair 0.25, the two score-decided ones 0, 0; xx: 0.75, 0, 0; 8x: 0.25, 1, 1; 9x: 0.75, 1, 1.
    assert rewards == pytest.approx([0.25 / 3, 0.75 / 3, 2.25 / 3, 2.75 / 3])
    all_pairs = JudgePairwiseReward(judge)(prompts=["q"] * 4, completions=answers)
    assert sorted(range(4), key=lambda i: rewards[i]) == sorted(range(4), key=lambda i: all_pairs[i])
    # A budget of one comparison per group keeps the closest pair only.
    budget = JudgePairwiseReward(judge, pairing="adaptive", max_pairs_per_group=1)
    log = Log()
    budget(prompts=["q"] * 4, completions=answers, log_metric=log)
    assert log.metrics["judge/compared_fraction"] == pytest.approx(1 / 6)


def test_anchor_pairing_needs_a_reference(fake_judge):
    judge = fake_judge(rule=longer_wins)
    with pytest.raises(ValueError, match="reference_column"):
        JudgePairwiseReward(judge, pairing="anchor")
    with pytest.raises(ValueError, match="pairing"):
        JudgePairwiseReward(judge, pairing="some")
    reward = JudgePairwiseReward(judge, pairing="anchor", reference_column="ref")
    rewards = reward(prompts=["q"] * 2, completions=["x", "xxxx"], ref=["xx", "xx"])
    assert rewards == pytest.approx([0.25, 0.75])  # shorter / longer than the reference
    with pytest.raises(ValueError, match="no column 'ref'"):
        reward(prompts=["q"], completions=["x"])


def test_async_rewards_run_concurrently(fake_judge):
    # Each judge blocks until the other one is judging too: the gather only finishes if both calls overlap.
    import asyncio
    import threading

    from trl.trainer.utils import is_async_callable

    barrier = threading.Barrier(2, timeout=30)

    def points(prompt):
        barrier.wait()
        return {"4": 1.0}

    def rule(prompt):
        barrier.wait()
        return longer_wins(prompt)

    score = AsyncJudgeReward(JudgeScoreReward(fake_judge(points=points), name="s"))
    pairwise = AsyncJudgeReward(JudgePairwiseReward(fake_judge(rule=rule)))
    assert is_async_callable(score) and score.__name__ == "s" and pairwise.__name__ == "judge_pairwise"

    async def both():
        log = Log()
        kwargs = {"prompts": ["p"] * 2, "completions": ["x", "xxx"], "log_metric": log}
        return await asyncio.gather(score(**kwargs), pairwise(**kwargs)), log

    (scores, wins), log = asyncio.run(both())
    assert scores == [4.0, 4.0]
    assert wins == pytest.approx([0.25, 0.75])  # "xxx" is longer: merged 0.7 + 0.1 / 2
    assert log.metrics["judge/failures"] == 0 and score.failures == 0  # the wrapped reward's counters


def test_async_reward_pickles_and_checks_its_input():
    reward = pickle.loads(pickle.dumps(AsyncJudgeReward(JudgeScoreReward("embedded", name="r"))))
    assert reward.__name__ == "r" and reward._judge == "embedded"  # a spec: nothing loaded to pickle
    with pytest.raises(TypeError, match="wraps a judge reward"):
        AsyncJudgeReward(lambda prompts, completions, **kw: [1.0] * len(prompts))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda j: JudgeScoreReward(j, method="likelyhood"), "method must be one of trustjudge, mean, geval, argmax"),
        (lambda j: JudgeScoreReward(j, mode="cot"), "mode must be one of direct, rationale"),
        (lambda j: JudgeScoreReward(j, scale=1), "scale must be an integer"),
        (lambda j: JudgePairwiseReward(j, method="likelyhood"), "method must be one of likelihood, ppl, baseline"),
        (lambda j: JudgePairwiseReward(j, method="mean"), "method must be one of likelihood, ppl, baseline"),
        (lambda j: JudgePairwiseReward(j, mode="cot"), "mode must be one of direct, rationale"),
        (lambda j: JudgePairwiseReward(j, pairing="every"), "pairing must be one of all, adaptive, anchor"),
    ],
)
def test_bad_options_fail_when_the_reward_is_built(fake_judge, build, message):
    judge = fake_judge(rule=longer_wins)
    with pytest.raises(ValueError, match=message):
        build(judge)
    assert judge.backend.prompts == []  # before any judge call


@pytest.mark.parametrize(
    "option, message",
    [
        ({"preference_method": "likelyhood"}, "preference_method must be one of likelihood, ppl, baseline"),
        ({"score_method": "likelihood"}, "score_method must be one of trustjudge, mean, geval, argmax"),
        ({"judge_mode": "cot"}, "judge_mode must be one of direct, rationale"),
        ({"judge_backend": "vllm"}, "judge_backend must be one of hf, deepspeed"),
        ({"reward": "both-ways"}, "reward must be one of pairwise, score, both"),
        ({"on_inconsistency": "halt"}, "on_inconsistency must be one of warn, stop"),
        ({"scale": 0}, "scale must be an integer"),
        ({"monitor_sample_rate": 1.5}, "monitor_sample_rate"),
        ({"judge": "openai:http://127.0.0.1:9/v1", "judge_device": "cuda:0"}, "judge_device does not apply"),
    ],
)
def test_recipe_options_fail_when_parsed(option, message):
    from dataclasses import fields

    from trainers.grpo import JudgeRewardArguments
    from trainers.judge_args import JudgeArguments

    judge_flags = {f.name for f in fields(JudgeArguments)}
    with pytest.raises(ValueError, match=message):
        (JudgeArguments if set(option) <= judge_flags else JudgeRewardArguments)(**option)


def test_grpo_command_stops_on_a_typo_before_loading_anything(monkeypatch):
    from pathlib import Path

    from trainers.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("a judge was loaded before the options were checked")

    monkeypatch.setattr("reward.load_judge", no_loading)
    recipe = Path(__file__).resolve().parents[1] / "recipes/grpo/embedded/config_demo.yaml"
    with pytest.raises(
        ValueError, match="preference_method must be one of likelihood, ppl, baseline; got 'likelyhood'"
    ):
        main(["grpo", "--config", str(recipe), "--preference_method", "likelyhood"])


def test_load_judge_rejects_options_of_another_backend(tiny_model_dir):
    from reward import load_judge

    for options in (
        {"device": "cpu"},
        {"dtype": "float32"},
        {"adapter": "x"},
        {"tp_size": 2},
        {"backend": "deepspeed"},
    ):
        with pytest.raises(ValueError, match="not options of a served judge"):
            load_judge("openai:http://127.0.0.1:9/v1", tokenizer="embedded", **options)
    for options in ({"server_options": {"endpoint": "chat"}}, {"model": "judge"}, {"tokenizer": "embedded"}):
        with pytest.raises(ValueError, match="options of a served judge"):
            load_judge(tiny_model_dir, **options)
    with pytest.raises(ValueError, match="backend must be one of hf, deepspeed; got 'vllm'"):
        load_judge(tiny_model_dir, backend="vllm")


def test_pairwise_metrics_tie_rate_entropy_and_failure_rate_are_exact(fake_judge):
    """One pair of three ties ("ab" vs "cd": equal lengths), two are won by "xxx"; one of five completions is
    unusable. A tie rate counting another verdict, the entropy of one order only, or a failure rate over the
    usable completions would all log other numbers."""
    from reward.scoring import entropy

    def biased_ties(prompt):  # equal lengths: a tie, with a lean to position A that the two orders cancel
        tie = {"A": 0.35, "B": 0.05, "C": 0.6}
        return tie if len(answer_in_slot(prompt, "A")) == len(answer_in_slot(prompt, "B")) else longer_wins(prompt)

    reward = JudgePairwiseReward(fake_judge(rule=biased_ties))
    log = Log()
    rewards = reward(prompts=["p"] * 4 + ["q"], completions=["ab", "cd", "xxx", "  ", "alone"], log_metric=log)
    assert rewards == pytest.approx([0.375, 0.375, 0.75, None, None])
    assert log.metrics["judge/tie_rate"] == pytest.approx(1 / 3)
    merged = [{"a": 0.2, "b": 0.2, "tie": 0.6}, {"a": 0.2, "b": 0.7, "tie": 0.1}, {"a": 0.2, "b": 0.7, "tie": 0.1}]
    assert log.metrics["judge/entropy"] == pytest.approx(sum(map(entropy, merged)) / 3)
    assert log.metrics["judge/failures"] == 2 and log.metrics["judge/failure_rate"] == pytest.approx(2 / 5)
    assert log.metrics["judge/no_peer"] == 1 and log.metrics["judge/compared_fraction"] == pytest.approx(3 / 3)


@pytest.mark.parametrize("scale", [3, 10, 100])
def test_score_reward_asks_for_its_scale(fake_judge, scale):
    """The judge's mass sits on ratings only a `scale`-point read holds (the top two): a reward asking for 5
    points would read no valid mass (None) or other ratings."""
    judge = fake_judge(points={str(scale - 1): 0.25, str(scale): 0.75})
    (reward,) = JudgeScoreReward(judge, scale=scale, method="mean")(prompts=["p"], completions=["fine"])
    assert reward == pytest.approx(scale - 0.25)
    assert f"from 1 (poor) to {scale} (excellent)" in judge.backend.prompts[-1]
