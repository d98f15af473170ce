"""Rubrics: criteria, their weights and choices, the common formats they come in, and the reward formula.

Pure Python (no model): `reward.rubric_judging` reads each criterion's probabilities from a judge; everything
after "probability of each choice" lives here.

A rubric is a list of criteria. Each has a text, a weight and choices ordered worst to best (default `("no",
"yes")`). A negative weight marks a *pitfall*: a mistake the answer should not make, phrased as the mistake, so
that "yes" means the pitfall is present.

The explicit reward of an answer, with `v_j` the criterion's value in [0, 1] (its expected choice rank, see
`choice_value`):

    R = clip( (sum_{w_j > 0} w_j v_j  -  sum_{w_j < 0} |w_j| v_j) / sum_{w_j > 0} w_j ,  0, 1 )

the weighted mean over the positive criteria, minus what the pitfalls present take off (in units of the positive
weights), clipped to [0, 1]. The pairwise mode (a criterion read as "which of two answers meets it better") uses
`pairwise_value` instead: every criterion positive, a pitfall read as "which answer avoids it better".

Formats (`parse_rubric`):
- a plain list of strings: each a criterion of weight 1;
- RaR (arXiv 2507.17746): `{"title", "description", "weight"}` items, or a category instead of a weight
  (`"category": "Essential"`, or a title/description starting "Essential Criteria:", "Pitfall Criteria:" ...),
  mapped by `CATEGORY_WEIGHTS`;
- RLCF (arXiv 2507.18624): `{"requirement", "weight"}` with weights 0-100;
- verifiers-style: `{"criterion" or "text", "weight", "choices"}`;
- any of these as a JSON string, or wrapped in `{"criteria": [...]}` (also `"rubric"`, `"rubrics"`, `"checklist"`).

Example:
```python
>>> from reward.rubrics import parse_rubric, rubric_value
>>> rubric = parse_rubric([
...     {"title": "Names Paris", "description": "Essential Criteria: Says the capital is Paris", "weight": 5},
...     {"requirement": "Mentions the Seine", "weight": 2},
...     {"title": "Pitfall Criteria: Claims Lyon is the capital", "weight": -2},
... ])
>>> [(c.weight, c.pitfall) for c in rubric.criteria], rubric.criteria[2].text
([(5.0, False), (2.0, False), (-2.0, True)], 'Claims Lyon is the capital')
>>> rubric_value(rubric, [1.0, 0.5, 0.0])  # (5 + 1) / 7
0.8571428571428571
>>> rubric_value(rubric, [1.0, 0.5, 0.5])  # a pitfall half present takes off 1 / 7
0.7142857142857143
>>> parse_rubric('["Is polite", "Answers in French"]').criteria[1]
Criterion(text='Answers in French', weight=1.0, choices=('no', 'yes'))

```
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_CHOICES = ("no", "yes")
# RaR's categories as weights, from the paper (arXiv 2507.17746, its rubric-to-weight mapping): Essential 1.0,
# Important 0.7, Optional 0.3, Pitfall 0.9 taken off when present. A numeric weight, when given, wins.
CATEGORY_WEIGHTS = {"essential": 1.0, "important": 0.7, "optional": 0.3, "pitfall": -0.9}
_CATEGORY_PREFIX = re.compile(r"^\s*(essential|important|optional|pitfall)(?:\s+criteri(?:on|a))?\s*:\s*", re.I)
_TEXT_KEYS = ("description", "requirement", "criterion", "text", "title", "content")
_WRAPPERS = ("criteria", "rubric", "rubrics", "checklist", "items")
MAX_CRITERIA = 64


@dataclass(frozen=True)
class Criterion:
    """One rubric criterion.

    Attributes:
        text: what the judge checks, phrased so that the best choice means "true of the answer".
        weight: its weight; negative: a pitfall (the best choice means the mistake is present).
        choices: the judge's allowed answers, worst to best.
    """

    text: str
    weight: float = 1.0
    choices: tuple[str, ...] = DEFAULT_CHOICES

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("a criterion needs a non-empty text")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise ValueError(f"criterion {self.text[:40]!r}: weight must be a finite number, got {self.weight!r}")
        if self.weight == 0:
            raise ValueError(f"criterion {self.text[:40]!r}: weight is 0 (drop the criterion instead)")
        choices = tuple(self.choices)
        if (
            len(choices) < 2
            or len(set(choices)) != len(choices)
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ValueError(f"criterion {self.text[:40]!r}: choices must be >= 2 distinct non-empty strings")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "choices", choices)

    @property
    def pitfall(self) -> bool:
        return self.weight < 0


@dataclass(frozen=True)
class Rubric:
    """An ordered list of criteria, at least one of positive weight (the formula divides by their sum)."""

    criteria: tuple[Criterion, ...]

    def __post_init__(self):
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if not self.criteria:
            raise ValueError("a rubric needs at least one criterion")
        if len(self.criteria) > MAX_CRITERIA:
            raise ValueError(f"a rubric holds at most {MAX_CRITERIA} criteria, got {len(self.criteria)}")
        if not any(c.weight > 0 for c in self.criteria):
            raise ValueError("a rubric needs at least one criterion of positive weight (only pitfalls given)")


def _category(item: Mapping) -> str | None:
    for key in ("category", "type", "label", "importance"):
        value = item.get(key)
        if isinstance(value, str) and value.strip().lower().removesuffix(" criteria") in CATEGORY_WEIGHTS:
            return value.strip().lower().removesuffix(" criteria")
    for key in _TEXT_KEYS:
        value = item.get(key)
        if isinstance(value, str) and (m := _CATEGORY_PREFIX.match(value)):
            return m.group(1).lower()
    return None


def _criterion(item, index: int) -> Criterion:
    if isinstance(item, Criterion):
        return item
    if isinstance(item, str):
        return Criterion(_CATEGORY_PREFIX.sub("", item, count=1).strip() or item)
    if not isinstance(item, Mapping):
        raise ValueError(f"rubric item {index}: expected a string or an object, got {type(item).__name__}")
    text = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str) and item[k].strip()), None)
    if text is None:
        raise ValueError(f"rubric item {index}: no criterion text (one of {', '.join(_TEXT_KEYS)})")
    text = _CATEGORY_PREFIX.sub("", text, count=1).strip()
    category = _category(item)
    weight = item.get("weight", item.get("points"))
    if weight is None:
        weight = CATEGORY_WEIGHTS[category] if category else 1.0
    elif category == "pitfall" and isinstance(weight, int | float) and weight > 0:
        weight = -weight  # a pitfall given a positive weight (some RaR files): the weight is what it takes off
    choices = item.get("choices", DEFAULT_CHOICES)
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise ValueError(f"rubric item {index}: choices must be a list of strings")
    try:
        return Criterion(text, weight, tuple(choices))
    except ValueError as exc:
        raise ValueError(f"rubric item {index}: {exc}") from None


def parse_rubric(value) -> Rubric:
    """A `Rubric` from any of the module's formats (a `Rubric` is returned as it is); `ValueError` says what is
    wrong and where."""
    if isinstance(value, Rubric):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a rubric given as text must be JSON (a list of criteria): {exc}") from None
    if isinstance(value, Mapping):
        key = next((k for k in _WRAPPERS if k in value), None)
        if key is None:
            raise ValueError(f"a rubric object must hold its criteria under one of {', '.join(_WRAPPERS)}")
        value = value[key]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"a rubric must be a list of criteria, got {type(value).__name__}")
    return Rubric(tuple(_criterion(item, i) for i, item in enumerate(value)))


def choice_value(probs: Mapping[str, float], choices: Sequence[str]) -> float:
    """A criterion's value: the expected rank of the judge's choice, worst 0 to best 1, over the renormalised
    probabilities of the choices (`probs`: choice -> raw probability; no mass at all raises `ValueError`).

    ```python
    >>> choice_value({"no": 0.25, "yes": 0.25}, ("no", "yes"))  # P(yes) renormalised
    0.5
    >>> choice_value({"poor": 0.2, "fair": 0.2, "good": 0.6}, ("poor", "fair", "good"))
    0.7

    ```
    """
    total = sum(probs[c] for c in choices)
    if not total > 0:
        raise ValueError("the judge put no probability on any choice")
    return sum(probs[c] * rank for rank, c in enumerate(choices)) / (total * (len(choices) - 1))


def _check(rubric: Rubric, values: Sequence[float]) -> None:
    if len(values) != len(rubric.criteria):
        raise ValueError(f"{len(values)} values for {len(rubric.criteria)} criteria")
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"criterion values must lie in [0, 1], got {list(values)}")


def rubric_value(rubric: Rubric, values: Sequence[float]) -> float:
    """The explicit rubric reward on [0, 1] from each criterion's value (see the module docstring's formula)."""
    _check(rubric, values)
    positive = sum(c.weight for c in rubric.criteria if c.weight > 0)
    met = sum(c.weight * v for c, v in zip(rubric.criteria, values) if c.weight > 0)
    present = sum(-c.weight * v for c, v in zip(rubric.criteria, values) if c.weight < 0)
    return min(1.0, max(0.0, (met - present) / positive))


def pairwise_value(rubric: Rubric, values: Sequence[float]) -> float:
    """The pairwise rubric reward on [0, 1]: `sum |w_j| v_j / sum |w_j|`, where `v_j` is P(the answer meets criterion
    j better than the anchor answer; avoids it better for a pitfall), a tie counted half. 0.5: as good as the anchor.

    ```python
    >>> pairwise_value(parse_rubric([{"text": "a", "weight": 3}, {"text": "b", "weight": -1}]), [0.5, 1.0])
    0.625

    ```
    """
    _check(rubric, values)
    total = sum(abs(c.weight) for c in rubric.criteria)
    return sum(abs(c.weight) * v for c, v in zip(rubric.criteria, values)) / total
