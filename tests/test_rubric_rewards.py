"""Rubric rewards for training: TRL's callable gives the engine's numbers, the monitor's rubric checks, the recipe.

The fake judge's per-criterion probabilities are planted per (answer, criterion), so every number below is known
by hand; each test names the wrong implementation it fails."""

import json
from types import SimpleNamespace

import pytest
from conftest import answer_in_slot

from reward.anchored import ANCHOR
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
    # A row without a reference (or no reference_column at all): the engine's default anchor, not a failure.
    anchors[1] = None
    got = reward(prompts=prompts, completions=completions, rubric=rubrics, reference=anchors)
    assert got == [r.value for r in judge.rubric(prompts, answers, rubrics, mode="pairwise", references=anchors)]
    alone = JudgeRubricReward(judge, mode="pairwise")(prompts=prompts, completions=completions, rubric=rubrics)
    assert alone == [r.value for r in judge.rubric(prompts, answers, rubrics, mode="pairwise")] and None not in alone
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


def flat_if_even(prompt):
    """Criteria of even text length: P(yes) 0.7 for every answer (never discriminate); the others vary with it."""
    if "[Criterion]\n" not in prompt:
        return rank_rule(prompt)
    criterion, answer = criterion_of(prompt), answer_of(prompt)
    p = 0.7 if len(criterion) % 2 == 0 else (sum(map(ord, answer)) % 97 + 1) / 99
    return {"no": 1 - p, "yes": p}


def test_the_rubric_recipe_trains_with_the_engines_numbers(tmp_path, wandb_offline, tiny_model_dir, tiny_judge):
    """The recipe parses into a rubric reward over mt_bench_rubrics' `rubric` column; a real GRPOTrainer hands the
    column over and logs the engine's rewards for each completion; W&B (offline, read back from disk) gets the
    rubric CR as the monitor computed it, the per-criterion metrics, and the table of criteria flagging exactly the
    planted non-discriminating ones. Fails a wiring that drops the column (every reward None), reads another
    prompt's rubric, builds another reward, or a table that flags by anything but the spread."""
    from pathlib import Path

    import wandb
    from conftest import FakeBackend, tiny_grpo_config
    from trl import GRPOTrainer, TrlParser
    from wandb_records import read_run

    from reward import Judge
    from trainers.grpo import JudgeRewardArguments, build_rewards
    from trainers.judge_args import JudgeArguments
    from trainers.mt_bench import prompt_dataset, rubric_rows
    from trainers.reward_funcs import as_text

    recipe = Path(__file__).resolve().parents[1] / "recipes/grpo/embedded/config_rubric.yaml"
    args, judge_args = TrlParser((JudgeRewardArguments, JudgeArguments)).parse_args_and_config(
        args=["--config", str(recipe)], return_remaining_strings=True
    )[:2]
    assert (args.reward, args.rubric_mode, args.reference_column, args.dataset, judge_args.judge) == (
        "rubric", "pairwise", "reference", "mt_bench_rubrics", "embedded")  # fmt: skip
    # The run below plants per-criterion P(yes) (explicit reads): the recipe's other keys, in explicit mode.
    args.rubric_mode, args.reference_column = "explicit", None
    judge = Judge(FakeBackend(tiny_judge.tokenizer, rank_rule, flat_if_even), progress=False)
    monitor = args.build_monitor()
    (reward,) = build_rewards(args, judge, monitor)
    assert isinstance(reward, JudgeRubricReward) and reward.rubric_column == "rubric" and reward.monitor is monitor
    dataset = prompt_dataset(args.dataset, args.max_prompts)
    config = tiny_grpo_config(tmp_path / "out", report_to="wandb")
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[reward], args=config, train_dataset=dataset,
                          callbacks=[monitor])  # fmt: skip
    trainer.train()
    rows = {row["question"]: row for row in rubric_rows()}
    prompts = [as_text(p) for p in list(trainer._logs["prompt"])[-4:]]
    completions = [as_text(c) for c in list(trainer._logs["completion"])[-4:]]
    logged = list(trainer._logs["rewards"][reward.__name__])[-4:]
    want = [r.value for r in judge.rubric(prompts, completions, [rows[p]["rubric"] for p in prompts], mode=reward.mode,
                                          references=[rows[p]["reference"] for p in prompts])]  # fmt: skip
    assert None not in want and logged == pytest.approx(want, abs=1e-6)
    logs = [h for h in trainer.state.log_history if "judge/rubric_conflict_ratio" in h]
    assert len(logs) == 2 and all(h["judge/failures"] == 0 for h in logs)
    # Each step's group (one prompt, 4 completions) tallied once per criterion of its rubric.
    assert monitor.criteria and all((c.groups, c.reads) == (1, 4) for c in monitor.criteria.values())
    wandb.finish()
    history, _ = read_run(tmp_path)
    rows = [h for h in history if "train/judge/rubric_conflict_ratio" in h]
    assert len(rows) == len(logs) == 2
    assert rows[-1]["train/judge/rubric_conflict_ratio"] == pytest.approx(monitor.last["rubric_conflict_ratio"])
    for row, log in zip(rows, logs):
        assert row["train/judge/rubric_conflict_ratio"] == pytest.approx(log["judge/rubric_conflict_ratio"])
        assert "train/judge/never_discriminates" in row and "train/judge/conflict_ratio" not in row
        assert any(k.startswith("train/judge/criterion/") and k.endswith("/value") for k in row)
    tables = [h for h in history if h.get("train/judge/rubric_criteria/_type") == "table-file"]
    assert len(tables) == 2
    (run_dir,) = {p.parent for p in tmp_path.rglob("run-*.wandb")}
    table = json.loads((run_dir / "files" / tables[-1]["train/judge/rubric_criteria/path"]).read_text())
    flagged = {row[0] for row in table["data"] if row[table["columns"].index("never_discriminates")]}
    assert flagged == {c for c in monitor.criteria if len(c) % 2 == 0} and 0 < len(flagged) < len(table["data"])


def test_score_file_with_a_rubric_column(tmp_path, tiny_model_dir, tiny_judge):
    """`trustreward score --rubric_column`: the engine's numbers per row and per criterion, a broken rubric row
    not judged (its reason written) and the rest judged; Parquet holds the same rows (one schema for all rows).
    Fails a command that drops or zeroes the bad row, shifts rubrics between rows, or writes another reward."""
    import pandas as pd

    from trainers.cli import main

    rows = [
        {"id": 1, "prompt": "What is two plus two?", "response": "It is four.", "rubric": json.dumps(RUBRIC)},
        {"id": 2, "prompt": "What is two plus two?", "response": "four", "rubric": '[{"text": "x", "weight": 0}]'},
        {"id": 3, "prompt": [{"role": "user", "content": "Paris?"}], "response": "In France.", "rubric": SHORT},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["score", "--input", str(tmp_path / "in.jsonl"), "--judge", tiny_model_dir, "--judge_device", "cpu"]
    assert main([*base, "--output", str(tmp_path / "out.jsonl"), "--rubric_column", "rubric"]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3] and "score" not in out[0]
    assert out[1]["rubric_reward"] is None and out[1]["judge_error"].startswith("'rubric' is not a rubric: rubric ")
    assert "weight is 0" in out[1]["judge_error"] and out[1]["rubric_criteria"] == []
    want = tiny_judge.rubric(["What is two plus two?", "Paris?"], ["It is four.", "In France."], [RUBRIC, SHORT])
    for r, w in zip((out[0], out[2]), want):
        assert r["judge_error"] is None and r["rubric_reward"] == pytest.approx(w.value, abs=1e-5)
        assert [c["text"] for c in r["rubric_criteria"]] == [c.text for c in w.criteria]
        assert [c["value"] for c in r["rubric_criteria"]] == pytest.approx([c.value for c in w.criteria], abs=1e-5)
        assert r["rubric_valid_mass"] == pytest.approx(w.valid_mass, abs=1e-5) and r["rubric_failed"] == 0
    # Parquet: one type per column (text prompts, rubrics as JSON text)
    same = [{**r, "prompt": "Paris?", "rubric": json.dumps(r["rubric"])} if r["id"] == 3 else r for r in rows]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in same))
    assert main([*base, "--output", str(tmp_path / "out.parquet"), "--rubric_column", "rubric"]) == 0
    table = pd.read_parquet(tmp_path / "out.parquet")
    assert table["rubric_reward"].tolist()[0] == pytest.approx(out[0]["rubric_reward"], abs=1e-6)
    assert pd.isna(table["rubric_reward"].tolist()[1]) and len(table["rubric_criteria"].tolist()[2]) == 2


def test_score_file_rubric_flags_fail_before_the_judge_loads(tmp_path, capsys):
    from trainers.cli import main

    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "q", "response": "a", "rubric": SHORT}) + "\n")
    base = ["score", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--judge", "/none"]
    cases = {
        "--rubric_mode must be one of explicit, implicit, pairwise": [
            "--rubric_column",
            "rubric",
            "--rubric_mode",
            "x",
        ],
        "goes with --rubric_mode pairwise only": ["--rubric_column", "rubric", "--reference_column", "gold"],
        "do not apply to a rubric reward": ["--rubric_column", "rubric", "--scale", "10"],
        "options of --rubric_column": ["--rubric_mode", "implicit"],
    }
    for message, flags in cases.items():
        base[-1] = "embedded"
        assert main([*base, *flags]) == 2 and message in capsys.readouterr().err, message
    assert main([*base, "--rubric_column", "checklist"]) == 2
    assert "no row has the column 'checklist'" in capsys.readouterr().err


def test_rubric_rows_mark_failed_criteria_and_missing_anchors(fake_judge):
    """A criterion the judge failed: no reward, the row's judge_error says how many failed; pairwise rows without an
    anchor are not judged."""
    from trainers.judge_file import rubric_rows

    def blind_on_pitfall(prompt):
        return {"no": 0.0, "yes": 0.0} if criterion_of(prompt) == PITFALL else planted(prompt)

    judge = fake_judge(rule=rank_rule, points=blind_on_pitfall)
    rows = [{"prompt": "q", "response": a, "rubric": r} for a, r in (("x", RUBRIC), ("y", SHORT))]
    failed, judged = rubric_rows(judge, rows, "rubric", "explicit")
    assert failed["rubric_reward"] is None and failed["rubric_failed"] == 1
    assert failed["judge_error"].startswith("1 of 3 criteria failed (first: the judge put no probability")
    assert [c["value"] for c in failed["rubric_criteria"]][:2] == pytest.approx([0.9, 0.7])
    assert judged["rubric_reward"] == pytest.approx(by_hand("y", SHORT)) and judged["judge_error"] is None
    anchored = [{**rows[1], "anchor": "z"}, rows[1]]
    got = rubric_rows(judge, anchored, "rubric", "pairwise", "anchor")
    assert got[0]["rubric_reward"] == pytest.approx(0.8 + 0.1 / 2)  # y beats z on every criterion (rank_rule)
    # no anchor in the row: the engine's default anchor (reward.anchored.ANCHOR), not a failure
    (want,) = judge.rubric(["q"], ["y"], [SHORT], mode="pairwise", references=[ANCHOR])
    assert got[1]["judge_error"] is None and got[1]["rubric_reward"] == pytest.approx(want.value)


def test_recipe_rubric_options_fail_when_parsed_and_reach_the_reward(fake_judge):
    from trainers.grpo import JudgeRewardArguments, build_rewards

    with pytest.raises(ValueError, match="rubric_mode must be one of explicit, implicit, pairwise"):
        JudgeRewardArguments(reward="rubric", rubric_mode="likert")
    assert JudgeRewardArguments(reward="rubric", rubric_mode="pairwise").reference_column is None  # default anchor
    args = JudgeRewardArguments(reward="rubric", rubric_mode="pairwise", reference_column="gold", rubric_column="r")
    (reward,) = build_rewards(args, fake_judge(), served=True)  # a served judge: TRL awaits it with the others
    assert (reward.mode, reward.reference_column, reward.rubric_column) == ("pairwise", "gold", "r")
    assert type(reward).__name__ == "AsyncJudgeReward" and isinstance(reward.reward, JudgeRubricReward)
