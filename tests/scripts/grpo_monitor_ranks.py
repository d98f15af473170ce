"""One rank of a 2-process GRPO run with a JudgeMonitor and W&B offline (run by tests/test_monitor_ranks.py).

argv: OUT_DIR MODEL_DIR. Each rank writes OUT_DIR/rank{N}.json: its monitor checks and the trainer's log history.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from trl import GRPOConfig, GRPOTrainer

from reward import load_judge
from trainers import JudgeMonitor, JudgePairwiseReward, JudgeScoreReward
from trainers.data import prompt_dataset


class Recording(JudgeMonitor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.checks = []

    def _check(self, *args, **kwargs):
        super()._check(*args, **kwargs)
        self.checks.append(dict(self.last))


def main():
    out, model = Path(sys.argv[1]), sys.argv[2]
    judge = load_judge(model, device="cpu", progress=False)
    monitor = Recording(sample_rate=1.0)
    rewards = [
        JudgePairwiseReward(judge, metric_prefix="judge/pairwise", monitor=monitor),
        JudgeScoreReward(judge, metric_prefix="judge/score", monitor=monitor),
    ]
    args = GRPOConfig(
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=6, bf16=False, use_cpu=True, logging_steps=1, report_to="wandb", save_strategy="no",
        seed=0,
    )  # fmt: skip
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
