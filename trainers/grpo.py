"""`trustreward grpo`: GRPO with a trustreward judge as the reward, configured by one flat YAML recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GRPO_REWARDS = ("pairwise", "score", "both", "rubric")


@dataclass
class JudgeRewardArguments:
    """Rewards and data: the part of a GRPO recipe that neither TRL's dataclasses nor `JudgeArguments` cover."""

    reward: str = field(default="pairwise", metadata={"help": f"Which reward: one of {GRPO_REWARDS}."})
    scale: int = field(default=5, metadata={"help": "Pointwise ratings 1..scale."})
    score_method: str = field(default="trustjudge", metadata={"help": "trustjudge | mean | geval | argmax."})
    preference_method: str = field(default="likelihood", metadata={"help": "likelihood | ppl | baseline."})
    judge_mode: str = field(default="direct", metadata={"help": "direct | rationale."})
    reference_column: str | None = field(
        default=None,
        metadata={"help": "Compare with this column's answer (pairwise; score and rubric_mode pairwise: the anchor)."},
    )
    rubric_column: str = field(default="rubric", metadata={"help": "rubric: the dataset column holding each rubric."})
    rubric_mode: str = field(
        default="explicit",
        metadata={"help": "rubric: explicit (each criterion read, weighted) | implicit (one 1-10 score given all "
                  "criteria) | pairwise (each criterion against reference_column's answer)."},
    )  # fmt: skip
    pairing: str = field(
        default="all", metadata={"help": "Pairwise: which pairs: all | adaptive | anchor | circular | swiss."}
    )
    aggregate: str | None = field(
        default=None,
        metadata={"help": "Pairwise rewards from pairs: mean_win | bradley_terry | cycle_free (default: bradley_terry "
                  "for swiss and circular, mean_win for the rest)."},
    )  # fmt: skip
    swiss_rounds: int | None = field(
        default=None,
        metadata={"help": "swiss: rounds before its closing calls (default max(ceil(log2 G) + 1, (G - 1) // 3), one "
                  "less from G = 8 on)."},
    )  # fmt: skip
    dataset: str = field(
        default="mt_bench",
        metadata={"help": "'mt_bench', 'mt_bench_rubrics' (12 questions with a rubric column) or a JSONL file with a "
                  "'prompt' column."},
    )  # fmt: skip
    max_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts."})
    monitor_sample_rate: float = field(
        default=0.1, metadata={"help": "Fraction of groups checked for consistency (CR, NTR_3) per batch; 0: off."}
    )
    monitor_max_groups: int = field(default=4, metadata={"help": "Most groups checked per batch and process."})
    monitor_table_rows: int = field(default=8, metadata={"help": "Inconsistent cases per step in the W&B table."})
    min_order_consistency: float | None = field(
        default=None, metadata={"help": "Guard: warn / stop when checked verdicts agree across orders less often."}
    )
    max_non_transitivity: float | None = field(
        default=None, metadata={"help": "Guard: warn / stop when NTR_3 of the checked groups goes above this."}
    )
    max_injection_gap: float | None = field(
        default=None, metadata={"help": "Guard: warn / stop when injection suspects out-earn the rest by more."}
    )
    on_inconsistency: str = field(default="warn", metadata={"help": "What a guard does: warn | stop."})

    def __post_init__(self):
        # Checked here, before any model loads: a typo must not turn into None rewards and a warning every step.
        from reward.judge import MODES
        from reward.rubric_judging import RUBRIC_MODES
        from reward.scoring import PREFERENCE_METHODS, SCORE_METHODS, check_choice

        from .monitor import ACTIONS

        for name, choices in (("reward", GRPO_REWARDS), ("score_method", SCORE_METHODS),
                              ("preference_method", PREFERENCE_METHODS), ("judge_mode", MODES),
                              ("on_inconsistency", ACTIONS), ("rubric_mode", RUBRIC_MODES)):  # fmt: skip
            check_choice(name, getattr(self, name), choices)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or not 2 <= self.scale <= 100:
            raise ValueError(f"scale must be an integer in [2, 100], got {self.scale!r}")
        if not 0 <= self.monitor_sample_rate <= 1:
            raise ValueError(f"monitor_sample_rate must be in [0, 1], got {self.monitor_sample_rate}")

    def build_monitor(self):
        """The `JudgeMonitor` these arguments ask for, or `None` when `monitor_sample_rate` is 0."""
        from .monitor import JudgeMonitor

        if self.monitor_sample_rate == 0:
            return None
        return JudgeMonitor(
            sample_rate=self.monitor_sample_rate,
            max_groups=self.monitor_max_groups,
            table_rows=self.monitor_table_rows,
            min_order_consistency=self.min_order_consistency,
            max_non_transitivity=self.max_non_transitivity,
            on_inconsistency=self.on_inconsistency,
            max_injection_gap=self.max_injection_gap,
        )


def build_rewards(args: JudgeRewardArguments, judge, monitor=None, served: bool = False) -> list:
    """The recipe's judge rewards; `served` (an `openai:` judge): async rewards, which TRL awaits together."""
    from .reward_funcs import AsyncJudgeReward, JudgePairwiseReward, JudgeRubricReward, JudgeScoreReward

    # With both rewards, separate metric prefixes keep pointwise and pairwise entropies from being averaged.
    both = args.reward == "both"
    rewards = []
    if args.reward in ("pairwise", "both"):
        pairwise_options = {"reference_column": args.reference_column, "mode": args.judge_mode}
        pairwise_options |= {"pairing": args.pairing, "aggregate": args.aggregate, "swiss_rounds": args.swiss_rounds}
        prefix = "judge/pairwise" if both else "judge"
        rewards.append(
            JudgePairwiseReward(
                judge, method=args.preference_method, metric_prefix=prefix, monitor=monitor, **pairwise_options
            )
        )
    if args.reward in ("score", "both"):
        prefix = "judge/score" if both else "judge"
        rewards.append(
            JudgeScoreReward(
                judge,
                scale=args.scale,
                method=args.score_method,
                mode=args.judge_mode,
                reference_column=args.reference_column,  # the anchored reading's anchor
                metric_prefix=prefix,
                monitor=monitor,
            )
        )
    if args.reward == "rubric":
        reference = args.reference_column if args.rubric_mode == "pairwise" else None
        rewards.append(JudgeRubricReward(judge, rubric_column=args.rubric_column, mode=args.rubric_mode,
                                         reference_column=reference, monitor=monitor))  # fmt: skip
    if served:
        rewards = [AsyncJudgeReward(r) for r in rewards]
    return rewards


def main(argv: list[str] | None = None):
    from transformers import AutoTokenizer
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

    from reward.embedded import embedded_judge_path

    from .judge_args import JudgeArguments
    from .monitor import require_wandb
    from .mt_bench import prompt_dataset
    from .summary import StepLines, plot_curves, summarize

    parser = TrlParser((JudgeRewardArguments, JudgeArguments, GRPOConfig, ModelConfig))
    args, judge_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    require_wandb(training_args.report_to)  # before anything is loaded, not mid-run
    monitor = args.build_monitor()
    policy = model_args.model_name_or_path or "embedded"
    if policy == "embedded":  # the embedded SmolLM2-135M-Instruct doubles as a small policy
        policy = str(embedded_judge_path())
    judge = judge_args.load()
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=build_rewards(args, judge, monitor, judge_args.served),
        args=training_args,
        train_dataset=prompt_dataset(args.dataset, args.max_prompts),
        processing_class=AutoTokenizer.from_pretrained(policy, padding_side="left"),
        callbacks=[monitor] if monitor else [],
    )
    out = Path(training_args.output_dir) if training_args.output_dir else None
    metrics = out / "metrics.jsonl" if out else None
    if trainer.pop_callback(ProgressCallback):  # TRL prints every log dict: one short line per step instead
        trainer.add_callback(StepLines(metrics))
    trainer.train()
    outputs = {"model": None, "metrics": str(metrics) if metrics and metrics.exists() else None, "curves": None}
    if training_args.output_dir and training_args.save_strategy != "no":
        trainer.save_model(training_args.output_dir)
        outputs["model"] = training_args.output_dir
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        if out:
            outputs["curves"] = plot_curves(history, out / "curves.png")
        group = monitor.last_group if monitor else None
        print(summarize(history, outputs, group=group, judge=judge_args.judge or "embedded"), flush=True)
    return trainer
