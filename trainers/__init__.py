"""Thin glue between `reward` and TRL: reward callables, the GRPO entry point, the console script."""

from .rewards import JudgePairwiseReward, JudgeScoreReward, as_text

__all__ = ["JudgePairwiseReward", "JudgeScoreReward", "as_text"]
