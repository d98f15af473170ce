"""What a client without a "missing reward" gets for a failed judgement (OpenRLHF, verl): `--on_failure`.

TRL skips a `None` reward; OpenRLHF builds `torch.tensor([reward])` and verl writes the reward into a float
tensor, so there a failure must become a number. Every failure is still counted (`judge/failures`); the policy
only decides the number the client sees:

- `group_mean`: the mean of the rewards judged in the same group (so a group-normalised advantage of zero); a
  group where nothing was judged gets the reward's neutral value (pairwise 0.5, the mean of any full group;
  pointwise the scale's midpoint).
- `value:X`: X.
- `retry`: no number; the server answers 503 so that the client retries (OpenRLHF retries 5 times, 1 s apart).

Example:
```python
>>> from trainers.fallback import FailurePolicy
>>> FailurePolicy.parse("group_mean").fill([0.25, None, 0.75], neutral=0.5)
[0.25, 0.5, 0.75]
>>> FailurePolicy.parse("value:-1").fill([None, 0.3], neutral=0.5)
[-1.0, 0.3]
>>> FailurePolicy.parse("group_mean").fill([None, None], neutral=3.0)
[3.0, 3.0]

```
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean

POLICIES = ("group_mean", "value:X", "retry")


@dataclass(frozen=True)
class FailurePolicy:
    kind: str  # "group_mean" | "value" | "retry"
    value: float | None = None

    @classmethod
    def parse(cls, spec: str) -> FailurePolicy:
        """`group_mean`, `value:X` (a finite number) or `retry`; anything else is a `ValueError`."""
        if spec in ("group_mean", "retry"):
            return cls(spec)
        if isinstance(spec, str) and spec.startswith("value:"):
            try:
                value = float(spec.removeprefix("value:"))
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return cls("value", value)
        raise ValueError(f"on_failure must be one of {', '.join(POLICIES)} (X a finite number), got {spec!r}")

    def fill(self, rewards: list[float | None], neutral: float) -> list[float | None]:
        """One group's rewards with its failures (`None`) replaced; `retry` leaves them `None`."""
        if self.kind == "retry":
            return list(rewards)
        if self.kind == "value":
            stand_in = self.value
        else:
            judged = [r for r in rewards if r is not None]
            stand_in = fmean(judged) if judged else neutral
        return [stand_in if r is None else r for r in rewards]
