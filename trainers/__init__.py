"""Thin glue between `reward` and TRL: reward callables, the GRPO entry point, the console script."""

from .monitor import JudgeMonitor
from .reward_model import JudgeRewardModel
from .rewards import AsyncJudgeReward, JudgePairwiseReward, JudgeScoreReward, as_text

__all__ = [
    "AsyncJudgeReward",
    "JudgeMonitor",
    "JudgePairwiseReward",
    "JudgeRewardModel",
    "JudgeScoreReward",
    "as_text",
]
