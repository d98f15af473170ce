import json
import math

import numpy as np
import pytest
import torch

from trainers.train_rm import pair_metrics, preference_pairs, soft_bt_loss


def test_soft_loss_by_hand():
    d = torch.tensor([2.0, -1.0, 0.0])
    p = torch.tensor([0.9, 0.25, 0.5])

    def ls(x):  # log sigmoid
        return -math.log1p(math.exp(-x))

    expected = -(0.9 * ls(2) + 0.1 * ls(-2) + 0.25 * ls(-1) + 0.75 * ls(1) + 0.5 * ls(0) + 0.5 * ls(0)) / 3
    assert soft_bt_loss(d, p).item() == pytest.approx(expected, rel=1e-6)
    m = torch.tensor([1.0, 0.0, -0.5])  # with a margin the difference is measured from it
    assert soft_bt_loss(d, p, m).item() == pytest.approx(soft_bt_loss(d - m, p).item(), rel=1e-6)


def test_soft_loss_is_trls_loss_at_hard_targets():
    d = torch.randn(16)
    ones, zeros = torch.ones(16), torch.zeros(16)
    assert soft_bt_loss(d, ones).item() == pytest.approx(-torch.nn.functional.logsigmoid(d).mean().item(), rel=1e-6)
    assert soft_bt_loss(d, zeros).item() == pytest.approx(-torch.nn.functional.logsigmoid(-d).mean().item(), rel=1e-6)


def test_trainer_soft_loss_equals_trl_loss_on_hard_targets(tiny_model_dir):
    """The subclass's loss on p = 1 equals RewardTrainer's own on the same batch; on p = 0.7 it is the soft value."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trainers.train_rm import SoftRewardTrainer, TargetCollator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    from datasets import Dataset

    data = Dataset.from_list(
        [{"prompt": "What is two plus two?", "chosen": " four", "rejected": " five", "target": 1.0}]
    )
    config = RewardConfig(output_dir="/tmp/unused", report_to="none", bf16=False, use_cpu=True)
    soft = SoftRewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                             data_collator=TargetCollator(pad_token_id=tok.pad_token_id))  # fmt: skip
    hard = RewardTrainer(model=model, args=config, train_dataset=data.remove_columns("target"), processing_class=tok)
    batch = TargetCollator(pad_token_id=tok.pad_token_id)([soft.train_dataset[0] | {"target": 1.0}])
    loss_soft, out = soft.compute_loss(model, dict(batch), return_outputs=True)
    loss_hard = hard.compute_loss(model, {k: v for k, v in batch.items() if k != "target"})
    assert loss_soft.item() == pytest.approx(loss_hard.item(), rel=1e-6)
    chosen, rejected = out.logits.squeeze(-1).tolist()
    batch["target"] = torch.tensor([0.7])
    expected = soft_bt_loss(torch.tensor([chosen - rejected]), torch.tensor([0.7])).item()
    assert soft.compute_loss(model, dict(batch)).item() == pytest.approx(expected, rel=1e-5)


ROWS = [
    {"prompt": "q", "chosen": "good", "rejected": "bad"},
    {"prompt": "q", "response_a": "x", "response_b": "y", "p_a": 0.2, "p_b": 0.7, "p_tie": 0.1},
    {"prompt": "q", "response_a": "x", "response_b": "z", "label": "tie"},
    {"prompt": "q", "responses": ["r1", "r2", "r3"], "scores": [3, 1, 2]},
    {"prompt": "q", "chosen": "same", "rejected": "same"},
    {"prompt": "q", "response_a": "x", "response_b": "y", "p_a": math.nan, "p_b": 0.5, "p_tie": 0.5},
    {"prompt": "q", "response_a": "x", "response_b": "y", "p_a": 1.2, "p_b": 0.0, "p_tie": 0.0},
    {"prompt": "q", "response_a": "x", "response_b": "y"},
    {"prompt": "q", "response": "x", "score": 3},
]


def test_preference_pairs_soft_and_hard_with_reasons():
    pairs, rejects = preference_pairs(ROWS, "soft")
    assert [(p["chosen"], p["rejected"], p["target"]) for p in pairs] == [
        ("good", "bad", 1.0), ("x", "y", pytest.approx(0.25)), ("x", "z", 0.5),
        ("r1", "r2", 1.0), ("r1", "r3", 1.0), ("r2", "r3", 0.0),
    ]  # fmt: skip
    assert pairs[1]["judge_p"] == pytest.approx(0.25) and pairs[1]["label"] is None and pairs[0]["label"] == 1
    reasons = {r["row_index"]: r["reason"] for r in rejects}
    assert set(reasons) == {4, 5, 6, 7, 8}
    assert "same text" in reasons[4] and "finite number" in reasons[5] and "not 1" in reasons[6]
    assert "no label" in reasons[7] and "pointwise" in reasons[8]

    hard, rejects = preference_pairs(ROWS, "hard")
    # The hard loss orients every pair to its winner and cannot use ties.
    assert [(p["chosen"], p["rejected"], p["target"]) for p in hard] == [
        ("good", "bad", 1.0), ("y", "x", 1.0), ("r1", "r2", 1.0), ("r1", "r3", 1.0), ("r3", "r2", 1.0),
    ]  # fmt: skip
    assert hard[1]["judge_p"] == pytest.approx(0.75) and hard[4]["label"] == 1
    assert "tie" in {r["row_index"]: r["reason"] for r in rejects}[2]


def test_pair_metrics_by_hand():
    pairs = [
        {"label": 1, "judge_p": 0.9}, {"label": 1, "judge_p": 0.6}, {"label": None, "judge_p": 0.2},
        {"label": 0, "judge_p": None},
    ]  # fmt: skip
    diffs = [2.0, -1.0, 0.0, 5.0]
    m = pair_metrics(diffs, pairs)
    assert m["accuracy_labels"] == 0.5 and m["n_labelled"] == 2  # the tie label is left out
    assert m["accuracy_judge"] == pytest.approx(2 / 3)  # (d > 0) == (p > 0.5): yes, no, yes (both false)
    s = [1 / (1 + math.exp(-d)) for d in diffs[:3]]  # bins: 0.88 -> 8, 0.27 -> 2, 0.5 -> 5
    expected = (abs(s[0] - 0.9) + abs(s[1] - 0.6) + abs(s[2] - 0.2)) / 3
    assert m["ece"] == pytest.approx(expected) and m["n_judged"] == 3


def test_accuracy_judge_leaves_the_judges_ties_out():
    """A judge tie (p = 0.5) has no side to agree with: left out of accuracy_judge whatever d is (counting it as
    "chosen loses" would give 3/5 here), while the model's own tie (d = 0) counts as "chosen does not win"."""
    pairs = [{"label": None, "judge_p": p} for p in (0.9, 0.2, 0.7, 0.5, 0.5)]
    m = pair_metrics([1.0, 0.0, -2.0, 3.0, -3.0], pairs)
    assert m["accuracy_judge"] == pytest.approx(2 / 3) and m["n_judged"] == 5  # right, right (d = 0), wrong
    assert m["accuracy_labels"] is None and m["n_labelled"] == 0


def test_ece_averages_within_a_bin_before_taking_the_gap():
    """Two pairs in one bin (sigmoid 0.71 and 0.79, bin 7) with judge p 0.9 and 0.5: ECE is the gap of the bin's
    means, |0.75 - 0.70| = 0.05, not the mean per-pair gap (0.19 + 0.29) / 2 = 0.24."""
    logit = lambda s: math.log(s / (1 - s))  # noqa: E731
    pairs = [{"label": 1, "judge_p": 0.9}, {"label": 1, "judge_p": 0.5}]
    m = pair_metrics([logit(0.71), logit(0.79)], pairs)
    assert m["ece"] == pytest.approx(0.05) and m["n_judged"] == 2
    # Different bins: the weighted per-bin gaps (here the two pairs' own gaps).
    m = pair_metrics([logit(0.71), logit(0.19)], pairs)
    assert m["ece"] == pytest.approx((0.19 + 0.31) / 2)


def test_train_rm_two_steps_with_lora(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.cli import main
    from trainers.train_rm import reward_scores

    rows = [
        {"prompt": f"Question {i}?", "response_a": f"A good answer {i}.", "response_b": "bad",
         "p_a": 0.8, "p_b": 0.1, "p_tie": 0.1}
        for i in range(10)
    ] + [{"prompt": "q", "chosen": "x", "rejected": "x"}]  # fmt: skip
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Held-out pairs whose judge probabilities lie on both sides of the model's sigmoid(d): the ECE of one bin's
    # means differs from a per-pair mean error, so the file's ECE must be the binned one of these pairs' scores.
    held = [
        ("Q a?", "Yes, a.", "no", 0.9, 0.05),
        ("Q b?", "Yes, b.", "no", 0.1, 0.8),
        ("Q c?", "Yes, c.", "no", 0.5, 0.3),
    ]
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"prompt": q, "response_a": a, "response_b": b, "p_a": pa, "p_b": pb, "p_tie": 1 - pa - pb}) + "\n"
        for q, a, b, pa, pb in held
    ))  # fmt: skip
    out, held_file = tmp_path / "rm", str(tmp_path / "eval.jsonl")
    args = ["--train_file", str(tmp_path / "prefs.jsonl"), "--model_name_or_path", tiny_model_dir, "--output_dir",
            str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--use_cpu",
            "true", "--report_to", "none", "--lora", "on", "--lora_r", "4", "--eval_file", held_file,
            "--rejects", str(tmp_path / "rejects.jsonl"), "--save_strategy", "no", "--logging_steps", "1"]  # fmt: skip
    assert main(["train-rm", *args]) == 0
    metrics = json.loads((out / "rm_eval.json").read_text())
    assert metrics["lora"] is True and metrics["pairs_train"] == 10
    assert metrics["n_judged"] == metrics["pairs_eval"] == 3
    assert [json.loads(line)["row_index"] for line in (tmp_path / "rejects.jsonl").read_text().splitlines()] == [10]
    # ECE recomputed here from the saved model's scores: 10 bins of sigmoid(d), each bin's |mean s - mean p|
    # weighted by its share of the pairs; p = p_a + p_tie / 2.
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)
    qs = [q for q, *_ in held]
    d = np.array(reward_scores(merged, tok, qs, [a for _, a, *_ in held])) - reward_scores(merged, tok, qs, ["no"] * 3)
    s, p = 1 / (1 + np.exp(-d)), np.array([pa + (1 - pa - pb) / 2 for *_, pa, pb in held])
    bins = np.minimum((s * 10).astype(int), 9)
    ece = sum((bins == k).mean() * abs(s[bins == k].mean() - p[bins == k].mean()) for k in set(bins.tolist()))
    assert metrics["ece"] == pytest.approx(ece, abs=1e-5)
    assert abs(ece - np.abs(s - p).mean()) > 0.05  # the data tells the binned ECE from a per-pair mean error
    # The adapter loads on the base model and scores exactly as the merged model saved next to it.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tok.pad_token_id
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    prompts, answers = ["Question 1?", "Question 2?"], ["A good answer 1.", "bad"]
    assert reward_scores(adapted, tok, prompts, answers) == pytest.approx(
        reward_scores(merged, tok, prompts, answers), abs=1e-5
    )


def test_train_rm_without_usable_rows_is_an_error(tmp_path, tiny_model_dir):
    from trainers.cli import main

    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "x"}) + "\n")
    with pytest.raises(SystemExit, match="no usable preference rows"):
        main(["train-rm", "--train_file", str(tmp_path / "bad.jsonl"), "--output_dir", str(tmp_path / "o"),
              "--model_name_or_path", tiny_model_dir, "--bf16", "false", "--use_cpu", "true"])  # fmt: skip


def test_train_rm_eval_metrics_reach_wandb(tmp_path, wandb_offline, tiny_model_dir):
    from wandb_records import read_run

    from trainers.cli import main

    rows = [{"prompt": f"Q{i}?", "response_a": f"good {i}", "response_b": "bad", "p_a": 0.7, "p_b": 0.2, "p_tie": 0.1}
            for i in range(6)]  # fmt: skip
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    args = ["--train_file", str(tmp_path / "prefs.jsonl"), "--model_name_or_path", tiny_model_dir, "--output_dir",
            str(out), "--max_steps", "1", "--bf16", "false", "--use_cpu", "true", "--report_to", "wandb",
            "--eval_fraction", "0.34", "--save_strategy", "no"]  # fmt: skip
    assert main(["train-rm", *args]) == 0
    import wandb

    wandb.finish()
    metrics = json.loads((out / "rm_eval.json").read_text())
    assert metrics["lora"] is False  # "auto": a tiny model trains in full
    assert metrics["pairs_eval"] == 2 and metrics["pairs_train"] == 4  # eval_fraction 0.34 of 6 rows, whole rows
    _, summary = read_run(wandb_offline)
    assert summary["eval/rm/accuracy_judge"] == pytest.approx(metrics["accuracy_judge"])
    assert summary["eval/rm/ece"] == pytest.approx(metrics["ece"])


def test_margin_from_score_differences():
    rows = [
        {"prompt": "q", "response_a": "x", "response_b": "y", "p_a": 0.2, "p_b": 0.7, "p_tie": 0.1,
         "score_a": 2.0, "score_b": 4.5},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},  # no scores: margin 0
    ]  # fmt: skip
    soft, _ = preference_pairs(rows, "soft", margin_scale=0.5)
    assert [p["margin"] for p in soft] == [pytest.approx(-1.25), 0.0]  # a vs b: 0.5 x (2.0 - 4.5)
    hard, _ = preference_pairs(rows, "hard", margin_scale=0.5)
    assert hard[0]["chosen"] == "y" and hard[0]["margin"] == pytest.approx(1.25)  # oriented to the winner


def test_soft_targets_reach_the_loss_in_a_real_train(tmp_path, tiny_model_dir):
    """In `.train()`, through TRL's column pruning, tokenising and collating: each pair's target arrives in
    `compute_loss` and the loss is the soft Bradley-Terry value on it (not TRL's hard loss)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from trainers.train_rm import SoftRewardTrainer, TargetCollator

    seen = []

    class Recording(SoftRewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target = inputs.get("target")
            loss, out = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            chosen, rejected = out.logits.squeeze(-1).detach().chunk(2)
            seen.append((None if target is None else target.tolist(), (chosen - rejected).tolist(), loss.item()))
            return (loss, out) if return_outputs else loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    with torch.no_grad():  # a head with large weights: reward differences far from 0, where soft and hard differ
        model.score.weight.normal_(0, 2.0)
    rows = [
        {"prompt": "What is two plus two?", "chosen": " four", "rejected": " five", "target": 0.8},
        {"prompt": "Where is Paris?", "chosen": " In France.", "rejected": " a b c", "target": 0.3},
    ]
    config = RewardConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none",
                          bf16=False, use_cpu=True, save_strategy="no", seed=0)  # fmt: skip
    trainer = Recording(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                        data_collator=TargetCollator(pad_token_id=tok.pad_token_id), loss="soft")  # fmt: skip
    trainer.train()
    (target, d, loss) = seen[0]
    assert sorted(target) == pytest.approx([0.3, 0.8])  # both targets made it through the data pipeline
    d, p = torch.tensor(d), torch.tensor(target)
    assert loss == pytest.approx(soft_bt_loss(d, p).item(), rel=1e-5)
    assert abs(d).min() > 0.1, d  # (else the soft and hard losses could not be told apart)
    assert loss != pytest.approx(-torch.nn.functional.logsigmoid(d).mean().item(), rel=1e-3)  # not the hard loss


def test_a_judge_gives_unjudged_rows_their_soft_targets(fake_judge):
    """`train-rm --judge`: rows without probabilities get the judge's, both orders merged; nothing else moves."""
    from conftest import answer_in_slot

    from trainers.train_rm import judge_unjudged

    def longer_wins(prompt):
        a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
        if "FAIL" in a + b:
            return {"A": 0.0, "B": 0.0, "C": 0.0}  # no probability on any verdict: a failed judgement
        return {"A": 0.8, "B": 0.1, "C": 0.1} if len(a) > len(b) else {"A": 0.1, "B": 0.8, "C": 0.1}

    rows = [
        {"prompt": "q", "chosen": "a long answer", "rejected": "short", "id": 0},  # TRL preference
        {"prompt": "q", "response_a": "short", "response_b": "a long answer"},  # pairwise, unlabelled
        {"prompt": "q", "response_a": "x", "response_b": "yy", "p_a": 0.7, "p_b": 0.2, "p_tie": 0.1},  # judged
        {"prompt": "q", "response_a": "FAIL", "response_b": "other"},  # the judge fails on it
        {"prompt": "q", "responses": ["a", "b"], "scores": [1, 2]},  # not a pair of two responses
    ]
    out, judged, failed = judge_unjudged(rows, fake_judge(rule=longer_wins))
    assert (judged, failed) == (2, 1)
    assert out[2:] == rows[2:]
    first = {k: v for k, v in out[0].items() if k not in ("p_a", "p_b", "p_tie")}
    assert first == {"prompt": "q", "response_a": "a long answer", "response_b": "short", "id": 0, "label": "a"}
    # Both orders agree that the longer answer wins: merged P(a) = (0.8 + 0.8) / 2 in the one and P(b) in the other.
    assert out[0]["p_a"] == pytest.approx(0.8) and out[1]["p_b"] == pytest.approx(0.8)
    pairs, rejects = preference_pairs(out)
    assert [p["target"] for p in pairs][:2] == [pytest.approx(0.85), pytest.approx(0.15)]  # p_a + p_tie / 2
    assert pairs[0]["label"] == 1 and pairs[1]["label"] is None  # the row's own label kept for evaluation
    assert [r["row_index"] for r in rejects] == [3]  # still unlabelled: rejected with its reason, as before
