"""trustreward's engine: TrustJudge scoring and bidirectional preferences from an LLM judge.

Importing `reward` pulls in neither torch nor deepspeed nor wandb; backends import what they need when built.
"""

from .judge import Judge
from .load import load_judge
from .scoring import Preference, Score, decide_preference, expected_score, merge_bidirectional
from .templates import PAIRWISE, POINTWISE, JudgeTemplate

__all__ = [
    "Judge",
    "JudgeTemplate",
    "PAIRWISE",
    "POINTWISE",
    "Preference",
    "Score",
    "decide_preference",
    "expected_score",
    "load_judge",
    "merge_bidirectional",
]
