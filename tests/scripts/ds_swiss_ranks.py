"""One rank of a sharded judge running Swiss group rewards (run by tests/test_group_rewards.py with torchrun, 2
processes): rank 0 holds a group of 8 (4 rounds), rank 1 a group of 2 (1 round) and a lone completion, so rank 1
must take part in 3 rounds with nothing to judge. Each rank writes OUT_DIR/rank{N}.json with its rewards.

argv: OUT_DIR MODEL_DIR
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from reward import load_judge
from trainers import JudgePairwiseReward

GROUP_OF_8 = ["four", "4", "It is four.", "5", "two plus two is four", "a b c", "Four, of course.", "2 + 2 = 4"]
BATCHES = [
    (["What is two plus two?"] * 8, GROUP_OF_8),
    (["Where is Paris?"] * 2 + ["Name a colour."], ["In France.", "a b c", "Red."]),
]


def main():
    out, model = Path(sys.argv[1]), sys.argv[2]
    judge = load_judge(model, backend="deepspeed", device="cpu", progress=False, batch_size=4)
    rank = dist.get_rank()
    prompts, completions = BATCHES[rank]
    reward = JudgePairwiseReward(judge, pairing="swiss", aggregate="bradley_terry")
    rewards = reward(prompts=prompts, completions=completions)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "rewards": rewards}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
