"""Thin glue between `reward` and TRL: reward callables, the GRPO entry point, the console script."""

from .monitor import JudgeMonitor
from .rewards import JudgePairwiseReward, JudgeScoreReward, as_text

__all__ = ["JudgeMonitor", "JudgePairwiseReward", "JudgeScoreReward", "as_text"]
