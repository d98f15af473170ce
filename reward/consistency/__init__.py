"""Consistency of preferences: TrustJudge's metrics (CR, NTR_k) and cleaning of preference data.

The 27 cases of a triple i < j < k (op1 = r(i, j), op2 = r(j, k), op3 = r(i, k); +1 the first wins, 0 tie) are
in `TRIPLE_TABLE` and printed in docs/consistency.md.
"""

from .clean import POLICIES, RELATIONS, clean_dataset
from .graphs import components, min_feedback
from .metrics import TRIPLE_TABLE, PreferenceGraph, audit_graphs, conflict_ratio, non_transitivity, triple_type
from .rows import BadRow, parse_row

__all__ = [
    "POLICIES",
    "RELATIONS",
    "TRIPLE_TABLE",
    "BadRow",
    "PreferenceGraph",
    "audit_graphs",
    "clean_dataset",
    "components",
    "conflict_ratio",
    "min_feedback",
    "non_transitivity",
    "parse_row",
    "triple_type",
]
