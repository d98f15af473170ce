"""`trustreward grpo`: GRPO with a trustreward judge as the reward, configured by one flat YAML recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

REWARDS = ("pairwise", "score", "both")


@dataclass
class JudgeRewardArguments:
    """The judge and the data: the part of a GRPO recipe that TRL's own dataclasses don't cover."""

    judge: str = field(default="embedded", metadata={"help": "'embedded', a model directory or a hub id."})
    judge_device: str | None = field(default=None, metadata={"help": "Judge device (default: CUDA if available)."})
    judge_max_length: int | None = field(default=None, metadata={"help": "Most tokens in one judge prompt."})
    judge_batch_size: int = field(default=32, metadata={"help": "Judge prompts per backend call."})
    reward: str = field(default="pairwise", metadata={"help": f"Which reward: one of {REWARDS}."})
    scale: int = field(default=5, metadata={"help": "Pointwise ratings 1..scale."})
    score_method: str = field(default="trustjudge", metadata={"help": "trustjudge | mean | geval | argmax."})
    preference_method: str = field(default="likelihood", metadata={"help": "likelihood | ppl | baseline."})
    judge_mode: str = field(default="direct", metadata={"help": "direct | rationale."})
    reference_column: str | None = field(default=None, metadata={"help": "Compare with this column's answer."})
    dataset: str = field(default="mt_bench", metadata={"help": "'mt_bench' or a JSONL file with a 'prompt' column."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts."})

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")


class PrintRewards(TrainerCallback):
    """Prints each logged step's rewards and judge metrics on one line: the demo's visible result."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = {
                k: round(v, 4) for k, v in logs.items() if k.startswith(("reward", "judge/")) and isinstance(v, float)
            }
            if shown:
                print(f"step {state.global_step}: {shown}", flush=True)


def build_rewards(args: JudgeRewardArguments, judge) -> list:
    from .rewards import JudgePairwiseReward, JudgeScoreReward

    # With both rewards, separate metric prefixes keep pointwise and pairwise entropies from being averaged.
    both = args.reward == "both"
    rewards = []
    if args.reward in ("pairwise", "both"):
        pairwise_options = {"reference_column": args.reference_column, "mode": args.judge_mode}
        prefix = "judge/pairwise" if both else "judge"
        rewards.append(
            JudgePairwiseReward(judge, method=args.preference_method, metric_prefix=prefix, **pairwise_options)
        )
    if args.reward in ("score", "both"):
        prefix = "judge/score" if both else "judge"
        rewards.append(
            JudgeScoreReward(
                judge, scale=args.scale, method=args.score_method, mode=args.judge_mode, metric_prefix=prefix
            )
        )
    return rewards


def main(argv: list[str] | None = None):
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

    from reward import load_judge
    from reward.embedded import embedded_judge_path

    from .data import prompt_dataset

    parser = TrlParser((JudgeRewardArguments, GRPOConfig, ModelConfig))
    args, training_args, model_args = parser.parse_args_and_config(args=argv)
    policy = model_args.model_name_or_path or "embedded"
    if policy == "embedded":  # the embedded SmolLM2-135M-Instruct doubles as a small policy
        policy = str(embedded_judge_path())
    judge = load_judge(
        args.judge,
        device=args.judge_device,
        max_length=args.judge_max_length,
        batch_size=args.judge_batch_size,
        progress=False,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=build_rewards(args, judge),
        args=training_args,
        train_dataset=prompt_dataset(args.dataset, args.max_prompts),
        processing_class=AutoTokenizer.from_pretrained(policy, padding_side="left"),
        callbacks=[PrintRewards()],
    )
    trainer.train()
    if training_args.output_dir and training_args.save_strategy != "no":
        trainer.save_model(training_args.output_dir)
    return trainer
