"""Which rubric criteria earn their place: per-criterion pass rate, valid mass, and "never discriminates".

A criterion that every completion of a group meets (or fails) alike adds the same to each completion's reward:
it moves no group-normalised advantage and only costs judge calls, so RRD (arXiv 2602.05125) filters such items
out. `criterion_stats` counts, per criterion (by its text), over groups of `RubricScore`s (the completions of one
prompt, read against one rubric):

- `pass_rate`: its mean value over the reads (explicit: the expected choice rank, P(yes) for yes/no; pairwise:
  P(better than the anchor));
- `valid_mass`: the mean raw probability the judge put on its allowed choices;
- `flat_groups` of `groups`: the groups (of >= 2 completions read) where its values spread less than `min_spread`
  (max - min): every completion met or failed it alike. `never_discriminates` when that held in every group.

Example:
```python
>>> from reward.rubric_judging import CriterionRead, RubricScore
>>> def answer(paris, seine):
...     return RubricScore(0.0, "explicit", [CriterionRead("Paris", 1.0, paris, valid_mass=0.9),
...                                          CriterionRead("Seine", 1.0, seine, valid_mass=0.5)])
>>> stats = criterion_stats([[answer(0.9, 0.95), answer(0.1, 0.97)]])
>>> stats["Seine"].never_discriminates, stats["Paris"].never_discriminates, stats["Seine"].pass_rate
(True, False, 0.96)

```
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SPREAD = 0.1


@dataclass
class CriterionStats:
    """One criterion's counts (see the module docstring); `pass_rate` and `valid_mass` are `None` before a read."""

    text: str
    weight: float
    reads: int = 0
    failures: int = 0
    value_sum: float = 0.0
    valid_mass_sum: float = 0.0
    groups: int = 0
    flat_groups: int = 0

    @property
    def pass_rate(self) -> float | None:
        return self.value_sum / self.reads if self.reads else None

    @property
    def valid_mass(self) -> float | None:
        return self.valid_mass_sum / self.reads if self.reads else None

    @property
    def never_discriminates(self) -> bool:
        return self.groups > 0 and self.flat_groups == self.groups


def criterion_stats(groups, min_spread: float = MIN_SPREAD, into: dict | None = None) -> dict[str, CriterionStats]:
    """Per-criterion counts over `groups` (lists of `RubricScore`, one list per prompt), added to `into` when given
    (a running tally). Implicit-mode scores have no criteria read and count nothing."""
    stats = {} if into is None else into
    for group in groups:
        values: dict[str, list[float]] = {}
        for score in group:
            for crit in score.criteria:
                entry = stats.setdefault(crit.text, CriterionStats(crit.text, crit.weight))
                if crit.error is not None or crit.value is None:
                    entry.failures += 1
                    continue
                entry.reads += 1
                entry.value_sum += crit.value
                entry.valid_mass_sum += crit.valid_mass
                values.setdefault(crit.text, []).append(crit.value)
        for text, vs in values.items():
            if len(vs) >= 2:
                stats[text].groups += 1
                stats[text].flat_groups += max(vs) - min(vs) < min_spread
    return stats
