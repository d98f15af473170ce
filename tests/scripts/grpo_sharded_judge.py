"""One rank of a 2-process GRPO run whose judge is sharded with ZeRO-3 over the same ranks (tests/test_deepspeed.py).

argv: OUT_DIR MODEL_DIR. The policy trains data-parallel (gloo); the judge rewards of the recipe path
(`trainers.grpo.build_rewards`) run on the sharded judge. Each rank writes what its rewards saw and returned.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from conftest import tiny_grpo_config
from trl import GRPOTrainer

from reward import load_judge
from trainers.grpo import JudgeRewardArguments, build_rewards
from trainers.mt_bench import prompt_dataset


def spy(reward, calls):
    def wrapped(prompts, completions, **kwargs):
        out = reward(prompts=prompts, completions=completions, **kwargs)
        calls.append({"name": reward.__name__, "prompts": prompts, "completions": completions, "rewards": out})
        return out

    wrapped.__name__ = reward.__name__
    return wrapped


def main():
    out, model = Path(sys.argv[1]), sys.argv[2]
    args = JudgeRewardArguments(reward="both", monitor_sample_rate=0)
    judge = load_judge(model, backend="deepspeed", device="cpu", progress=False)
    calls = []
    config = tiny_grpo_config(out / "run")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[spy(r, calls) for r in build_rewards(args, judge)],
        args=config,
        train_dataset=prompt_dataset("mt_bench", 16),
    )
    trainer.train()
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps({"world": dist.get_world_size(), "calls": calls}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
