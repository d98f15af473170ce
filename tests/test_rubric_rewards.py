"""Rubric rewards for training: TRL's callable gives the engine's numbers, the monitor's rubric checks, the recipe.

The fake judge's per-criterion probabilities are planted per (answer, criterion), so every number below is known
by hand; each test names the wrong implementation it fails."""

import json
from types import SimpleNamespace

import pytest
from conftest import answer_in_slot

from trainers import JudgeMonitor, JudgeRubricReward
from trainers.reward_funcs import criterion_key

GOOD, FLAT, PITFALL = "Names the right city", "Is written in English", "Names the wrong city"
# P(yes) per answer and criterion (P(no) = 1 - P(yes), so every valid_mass is 1 unless planted otherwise).
YES = {
    "x": {GOOD: 0.9, FLAT: 0.7, PITFALL: 0.1},
    "y": {GOOD: 0.5, FLAT: 0.7, PITFALL: 0.3},
    "z": {GOOD: 0.1, FLAT: 0.7, PITFALL: 0.8},
}
RUBRIC = [{"text": GOOD, "weight": 2}, {"text": FLAT, "weight": 1}, {"text": PITFALL, "weight": -1}]
SHORT = [FLAT, GOOD]  # another rubric (weights 1, 1), for rows of another prompt


def answer_of(prompt: str) -> str:
    return prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]


def criterion_of(prompt: str) -> str:
    return prompt.split("[Criterion]\n", 1)[1].split("\n", 1)[0]


def planted(prompt):
    if "[Rubric]\n" in prompt:  # implicit: a 1-10 score per answer
        return {"x": {"9": 0.6, "7": 0.2}, "y": {"5": 0.5}, "z": {"2": 0.4, "3": 0.4}}[answer_of(prompt)]
    p = YES[answer_of(prompt)][criterion_of(prompt)]
    return {"no": 1 - p, "yes": p}


def rank_rule(prompt):
    """Pairwise: x beats y, y beats z, and z beats x (the planted pair the rubric orders the other way)."""
    a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
    wins = {("x", "y"), ("y", "z"), ("z", "x")}
    return {"A": 0.8, "B": 0.1, "C": 0.1} if (a, b) in wins else {"A": 0.1, "B": 0.8, "C": 0.1}


class Log(dict):
    def __call__(self, name, value):
        self[name] = value


def batch(rubrics=None):
    prompts = ["Capital of France?"] * 3 + ["Capital of Italy?"] * 2
    completions = ["x", "y", "z", [{"role": "assistant", "content": "y"}], "x"]
    rubrics = rubrics or [json.dumps(RUBRIC)] * 3 + [SHORT, json.dumps({"criteria": SHORT})]
    return prompts, completions, rubrics


def by_hand(answer, rubric):
    """reward.rubrics' formula on the planted P(yes), written out."""
    if rubric is SHORT:
        return (YES[answer][FLAT] + YES[answer][GOOD]) / 2
    y = YES[answer]
    return max(0.0, (2 * y[GOOD] + y[FLAT] - y[PITFALL]) / 3)


def test_trl_reward_gives_the_engines_numbers(fake_judge):
    """Fails a reward that reads another row's rubric, drops a weight, or turns a failure into 0."""
    judge = fake_judge(points=planted)
    prompts, completions, rubrics = batch()
    log = Log()
    reward = JudgeRubricReward(judge)
    got = reward(prompts=prompts, completions=completions, completion_ids=None, rubric=rubrics, log_metric=log)
    engine = judge.rubric(prompts, ["x", "y", "z", "y", "x"], rubrics)
    assert got == [r.value for r in engine]
    rows = [("x", RUBRIC), ("y", RUBRIC), ("z", RUBRIC), ("y", SHORT), ("x", SHORT)]
    assert got == pytest.approx([by_hand(a, r) for a, r in rows])
    # Per-criterion metrics: the batch's mean P(yes) of each criterion, over every row that has it.
    assert log[f"judge/criterion/{criterion_key(GOOD)}/value"] == pytest.approx((0.9 + 0.5 + 0.1 + 0.5 + 0.9) / 5)
    assert log[f"judge/criterion/{criterion_key(PITFALL)}/value"] == pytest.approx((0.1 + 0.3 + 0.8) / 3)
    assert log[f"judge/criterion/{criterion_key(FLAT)}/valid_mass"] == pytest.approx(1.0)
    assert log["judge/failures"] == 0 and log["judge/criteria_failed"] == 0 and log["judge/rubric_invalid"] == 0
    assert reward.__name__ == "judge_rubric"


def test_a_bad_rubric_or_a_failed_criterion_is_none_and_counted(fake_judge):
    """Fails a reward that reads a broken rubric as an empty one (0) or a failed criterion as "no"."""

    def half_blind(prompt):
        return {"no": 0.0, "yes": 0.0} if answer_of(prompt) == "z" else planted(prompt)

    judge = fake_judge(points=half_blind)
    prompts, completions, rubrics = batch()
    rubrics[1] = '[{"text": "Names the capital", "weight": "heavy"}]'
    log = Log()
    reward = JudgeRubricReward(judge)
    got = reward(prompts=prompts, completions=completions, rubric=rubrics, log_metric=log)
    assert got[1] is None and got[2] is None and None not in (got[0], got[3], got[4])
    assert got[0] == pytest.approx(by_hand("x", RUBRIC))
    assert log["judge/failures"] == 2 and log["judge/rubric_invalid"] == 1 and log["judge/criteria_failed"] == 3
    assert reward.failures == 2 and reward.rubric_invalid == 1
    assert not any("heavy" in p for p in judge.backend.prompts)  # the bad row never reached the judge
    with pytest.raises(ValueError, match="no column 'rubric'"):
        reward(prompts=prompts, completions=completions)


def test_implicit_and_pairwise_modes_give_the_engines_numbers(fake_judge):
    """Fails a reward that ignores its mode or takes the anchor from anywhere but reference_column."""
    judge = fake_judge(rule=rank_rule, points=planted)
    prompts, completions, rubrics = batch()
    answers = ["x", "y", "z", "y", "x"]
    got = JudgeRubricReward(judge, mode="implicit")(prompts=prompts, completions=completions, rubric=rubrics)
    assert got == [r.value for r in judge.rubric(prompts, answers, rubrics, mode="implicit")]
    assert got[0] == pytest.approx((0.6 * 9 + 0.2 * 7) / 0.8 / 9 - 1 / 9)
    anchors = ["z", "z", "x", "x", "y"]
    reward = JudgeRubricReward(judge, mode="pairwise", reference_column="reference")
    got = reward(prompts=prompts, completions=completions, rubric=rubrics, reference=anchors)
    engine = judge.rubric(prompts, answers, rubrics, mode="pairwise", references=anchors)
    assert got == [r.value for r in engine]
    assert got[0] == pytest.approx(0.1 + 0.1 / 2)  # x against z: z wins every criterion (rank_rule), both orders
    with pytest.raises(ValueError, match="reference_column"):
        JudgeRubricReward(judge, mode="pairwise")
    with pytest.raises(ValueError, match="mode must be one of explicit, implicit, pairwise"):
        JudgeRubricReward(judge, mode="likert")


def test_monitor_rubric_conflict_ratio_and_never_discriminating_criteria(fake_judge):
    """A group x, y, z: the rubric orders x > y > z, the merged pairwise verdicts x > y, y > z and z > x. One pair of
    three against the rubric: CR 1/3 (reading the rubric order backwards gives 2/3). FLAT's P(yes) is 0.7 for every
    answer: it never discriminates; GOOD and PITFALL do."""
    judge = fake_judge(rule=rank_rule, points=planted)
    monitor = JudgeMonitor(sample_rate=1.0)
    reward = JudgeRubricReward(judge, monitor=monitor)
    log = Log()
    state = SimpleNamespace(global_step=0)
    rewards = reward(prompts=["q"] * 3, completions=["x", "y", "z"], rubric=[RUBRIC] * 3, log_metric=log,
                     trainer_state=state)  # fmt: skip
    assert rewards[0] > rewards[1] > rewards[2]
    assert log["judge/rubric_conflict_ratio"] == pytest.approx(1 / 3)
    assert "judge/conflict_ratio" not in log  # no pointwise score was fetched for a rubric-only trainer
    assert len(judge.backend.prompts) == 3 * 3 + 3 * 2  # the rubric reads, then 3 pairs in both orders
    assert log["judge/never_discriminates"] == pytest.approx(1 / 3)
    flagged = {text for text, c in monitor.criteria.items() if c.never_discriminates}
    assert flagged == {FLAT}
    assert monitor.criteria[GOOD].pass_rate == pytest.approx(0.5) and monitor.criteria[GOOD].groups == 1
    assert monitor.criteria[FLAT].valid_mass == pytest.approx(1.0)
    # A second batch where FLAT splits the group: it discriminated once, so it is no longer flagged.
    YES_SPLIT = {**YES, "z": {**YES["z"], FLAT: 0.1}}

    def split(prompt):
        if "[Criterion]\n" not in prompt:
            return planted(prompt)
        p = YES_SPLIT[answer_of(prompt)][criterion_of(prompt)]
        return {"no": 1 - p, "yes": p}

    judge.backend.points = split
    reward(prompts=["q"] * 3, completions=["x", "y", "z"], rubric=[RUBRIC] * 3, log_metric=log, trainer_state=state)
    assert monitor.criteria[FLAT].groups == 2 and monitor.criteria[FLAT].flat_groups == 1
    assert not monitor.criteria[FLAT].never_discriminates and log["judge/never_discriminates"] == 0.0


def by_length(prompt):
    """P(yes) of a criterion from the answer's and the criterion's lengths: differs between answers and criteria."""
    if "[Criterion]\n" not in prompt:
        return rank_rule(prompt)
    p = ((len(answer_of(prompt)) + len(criterion_of(prompt))) % 10 + 0.5) / 11
    return {"no": 1 - p, "yes": p}


def test_the_rubric_recipe_trains_with_the_engines_numbers(tmp_path, tiny_model_dir, tiny_judge):
    """The recipe parses into a rubric reward over mt_bench_rubrics' `rubric` column; a real GRPOTrainer hands the
    column over and logs the engine's rewards for each completion. Fails a wiring that drops the column (every
    reward None), reads another prompt's rubric, or builds another reward."""
    from pathlib import Path

    from conftest import FakeBackend, tiny_grpo_config
    from trl import GRPOTrainer, TrlParser

    from reward import Judge
    from trainers.grpo import JudgeRewardArguments, build_rewards
    from trainers.judge_args import JudgeArguments
    from trainers.mt_bench import prompt_dataset, rubric_rows
    from trainers.reward_funcs import as_text

    recipe = Path(__file__).resolve().parents[1] / "recipes/grpo/embedded/config_rubric.yaml"
    args, judge_args = TrlParser((JudgeRewardArguments, JudgeArguments)).parse_args_and_config(
        args=["--config", str(recipe)], return_remaining_strings=True
    )[:2]
    assert (args.reward, args.rubric_mode, args.dataset, judge_args.judge) == (
        "rubric", "explicit", "mt_bench_rubrics", "embedded")  # fmt: skip
    judge = Judge(FakeBackend(tiny_judge.tokenizer, rank_rule, by_length), progress=False)
    monitor = args.build_monitor()
    (reward,) = build_rewards(args, judge, monitor)
    assert isinstance(reward, JudgeRubricReward) and reward.rubric_column == "rubric" and reward.monitor is monitor
    dataset = prompt_dataset(args.dataset, args.max_prompts)
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[reward], args=tiny_grpo_config(tmp_path),
                          train_dataset=dataset, callbacks=[monitor])  # fmt: skip
    trainer.train()
    rubrics = {row["question"]: row["rubric"] for row in rubric_rows()}
    prompts = [as_text(p) for p in list(trainer._logs["prompt"])[-4:]]
    completions = [as_text(c) for c in list(trainer._logs["completion"])[-4:]]
    logged = list(trainer._logs["rewards"][reward.__name__])[-4:]
    want = [r.value for r in judge.rubric(prompts, completions, [rubrics[p] for p in prompts])]
    assert None not in want and logged == pytest.approx(want, abs=1e-6)
    logs = [h for h in trainer.state.log_history if "judge/rubric_conflict_ratio" in h]
    assert len(logs) == 2 and all(h["judge/failures"] == 0 for h in logs)
    # Each step's group (one prompt, 4 completions) tallied once per criterion of its rubric.
    assert monitor.criteria and all((c.groups, c.reads) == (1, 4) for c in monitor.criteria.values())
