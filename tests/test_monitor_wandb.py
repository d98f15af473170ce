"""A real GRPO run logging to W&B offline, read back from disk: the monitor's numbers arrive as computed."""

import json

import pytest
from conftest import RecordingMonitor, tiny_grpo_config
from trl import GRPOTrainer
from wandb_records import read_run

from trainers import JudgeMonitor, JudgePairwiseReward, JudgeScoreReward
from trainers.mt_bench import prompt_dataset


class Recording(RecordingMonitor, JudgeMonitor):
    pass


def test_grpo_consistency_metrics_reach_wandb(tmp_path, wandb_offline, tiny_model_dir, tiny_judge):
    import wandb

    monitor = Recording(sample_rate=1.0, table_rows=5)
    rewards = [
        JudgePairwiseReward(tiny_judge, metric_prefix="judge/pairwise", monitor=monitor),
        JudgeScoreReward(tiny_judge, metric_prefix="judge/score", monitor=monitor),
    ]
    args = tiny_grpo_config(tmp_path / "out", report_to="wandb")
    trainer = GRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=rewards,
        args=args,
        train_dataset=prompt_dataset("mt_bench", max_prompts=8),
        callbacks=[monitor],
    )
    trainer.train()
    wandb.finish()

    history, summary = read_run(tmp_path)
    rows = [h for h in history if "train/judge/non_transitivity" in h]  # transformers adds "train/"
    assert len(rows) == len(monitor.checks) == 2
    for row, check in zip(rows, monitor.checks):
        for key in ("non_transitivity", "monitor_groups", "monitor_failures", "monitor_order_consistency"):
            assert row[f"train/judge/{key}"] == pytest.approx(check[key], abs=1e-6), key
        if check["conflict_ratio"] is not None:
            assert row["train/judge/conflict_ratio"] == pytest.approx(check["conflict_ratio"], abs=1e-6)
        for key in ("judge/pairwise/order_consistency", "judge/pairwise/latency_s", "judge/score/failure_rate",
                    "judge/score/entropy", "rewards/judge_pairwise/mean"):  # fmt: skip
            assert f"train/{key}" in row, key
    # Histograms and the table are logged by the monitor itself, once per logged step.
    hists = [h for h in history if h.get("train/judge/score/entropy_hist/_type") == "histogram"]
    assert len(hists) == 2 and all(h.get("train/rewards/judge_pairwise/hist/_type") == "histogram" for h in hists)
    assert [h["train/global_step"] for h in hists] == [1, 2]
    tables = [h for h in history if h.get("train/judge/inconsistent_cases/_type") == "table-file"]
    assert len(tables) == 2
    (run_dir,) = {p.parent for p in tmp_path.rglob("run-*.wandb")}
    table = json.loads((run_dir / "files" / tables[-1]["train/judge/inconsistent_cases/path"]).read_text())
    assert table["columns"][-1] == "problems" and 1 <= len(table["data"]) <= 5
    assert summary["train/judge/non_transitivity"] == pytest.approx(monitor.checks[-1]["non_transitivity"], abs=1e-6)
