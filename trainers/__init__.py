"""Thin glue between `reward` and TRL: reward callables, the GRPO entry point, the console script.

The names below are imported on first use, so that `trainers.cli` (and label-only `audit` / `clean`) start
without transformers or TRL.
"""

import importlib

_LAZY = {
    "AsyncJudgeReward": ".reward_funcs",
    "JudgeMonitor": ".monitor",
    "JudgePairwiseReward": ".reward_funcs",
    "JudgeRewardModel": ".judge_module",
    "JudgeRubricReward": ".reward_funcs",
    "JudgeScoreReward": ".reward_funcs",
    "as_text": ".reward_funcs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
