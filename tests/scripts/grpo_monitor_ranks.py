"""One rank of a 2-process GRPO run with a JudgeMonitor and W&B offline (run by tests/test_monitor_ranks.py).

argv: OUT_DIR MODEL_DIR. Each rank writes OUT_DIR/rank{N}.json: its monitor checks and the trainer's log history.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from conftest import RecordingMonitor, tiny_grpo_config
from trl import GRPOTrainer

from reward import load_judge
from trainers import JudgeMonitor, JudgePairwiseReward, JudgeScoreReward
from trainers.mt_bench import prompt_dataset


class Recording(RecordingMonitor, JudgeMonitor):
    pass


def main():
    out, model = Path(sys.argv[1]), sys.argv[2]
    judge = load_judge(model, device="cpu", progress=False)
    monitor = Recording(sample_rate=1.0)
    rewards = [
        JudgePairwiseReward(judge, metric_prefix="judge/pairwise", monitor=monitor),
        JudgeScoreReward(judge, metric_prefix="judge/score", monitor=monitor),
    ]
    args = tiny_grpo_config(out / "run", report_to="wandb")
    trainer = GRPOTrainer(
        model=model, reward_funcs=rewards, args=args, train_dataset=prompt_dataset("mt_bench", 16), callbacks=[monitor]
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(
        json.dumps({"checks": monitor.checks, "log_history": trainer.state.log_history})
    )
    trainer.accelerator.wait_for_everyone()
    if rank == 0:
        import wandb

        wandb.finish()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
