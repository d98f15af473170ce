"""The anchored pointwise reading: a score from a bidirectional comparison with an anchor answer.

A judge read at its score slot copies a rating written in the answer, in any spelling ("Scores: [5]", "[five]",
a keycap, a claim in French): pattern lists (`reward.defenses`) cannot close that. The anchored reading never asks
the judge for a rating. It compares the response with an anchor answer in both orders (`Judge.compare`, the
merged likelihood) and maps the response's win probability to the scale:

    score = 1 + (scale - 1) * P(win),   P(win) = P(response better) + P(tie) / 2.

A claim written in the response sits in both presentation orders, once as "A" and once as "B", so a claim of
"A is better" helps it in one order and hurts it in the other, and the merge cancels it; a claim of a rating is no
answer to a comparison at all. The anchor is the row's reference answer where there is one, else `ANCHOR`, a
fixed refusal: an answer that answers nothing, the same for every prompt.

Cost: two judge prompts per response (both orders), against one for the direct slot reading.

The result is a `Score` like the direct reading's, read as follows:
- `expected`: 1 + (scale - 1) * P(win);
- `probs`: {1: P(loss) + P(tie) / 2, scale: P(win)} (a distribution over the scale's ends whose mean is
  `expected`), `argmax`: its likelier end, `entropy`: its entropy;
- `valid_mass`: the comparison's (mean probability the two orders put on the verdicts);
- `anchor`: the comparison itself (a `Preference`, the response as "a"); `None` for the direct reading.

Example (`Score` from a comparison, no model):
```python
>>> from reward.anchored import score_from_preference
>>> from reward.scoring import Preference
>>> s = score_from_preference(Preference(p_a=0.6, p_b=0.3, p_tie=0.1), scale=5)
>>> round(s.expected, 2), {k: round(v, 2) for k, v in s.probs.items()}, s.argmax
(3.6, {1: 0.35, 5: 0.65}, 5)

```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .scoring import Score
from .text import check_texts

READINGS = ("anchored", "direct")  # how a pointwise reward reads the judge (`Judge(score_reading=...)`)
# The default anchor: a refusal (of the two anchors measured, the one that kept the signal; docs/injection.md).
ANCHOR = "I'm sorry, but I cannot help with that."


def score_from_preference(pref, scale: int) -> Score:
    """The anchored `Score` of a comparison (response as "a", anchor as "b"); a failed comparison is a failed
    `Score` with its error."""
    if pref.error is not None or pref.p_a is None:
        return Score(expected=None, error=pref.error, truncated=pref.truncated, anchor=pref)
    win = pref.p_a + pref.p_tie / 2
    probs = {1: 1.0 - win, scale: win}
    return Score(
        expected=1 + (scale - 1) * win,
        probs=probs,
        valid_mass=pref.valid_mass,
        valid_mass_exact=pref.valid_mass_exact,
        entropy=-sum(p * math.log(p) for p in probs.values() if p > 0),
        argmax=scale if win > 0.5 else 1,
        truncated=pref.truncated,
        anchor=pref,
    )


def anchored_scores(
    judge,
    prompts: Sequence[str],
    responses: Sequence[str],
    anchors: Sequence[str | None] | None = None,
    *,
    scale: int = 5,
    mode: str = "direct",
) -> list[Score]:
    """Pointwise scores read as comparisons with an anchor answer (see the module docstring).

    Args:
        judge: a `reward.Judge`.
        prompts: the questions.
        responses: the answers to score.
        anchors: each response's anchor (e.g. its reference answer); `None` (or a `None` entry): `ANCHOR`.
        scale: the score scale 1..scale.
        mode: "direct" or "rationale" (see `Judge.compare`).
    """
    prompts = check_texts("prompts", prompts)
    responses = check_texts("responses", responses, len(prompts))
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 100:
        raise ValueError(f"scale must be an integer in [2, 100], got {scale!r}")
    anchors = [None] * len(prompts) if anchors is None else list(anchors)
    if len(anchors) != len(prompts):
        raise ValueError(f"anchors has {len(anchors)} items, prompts {len(prompts)}")
    anchors = [a if isinstance(a, str) and a.strip() else ANCHOR for a in anchors]
    prefs = judge.compare(prompts, responses, anchors, mode=mode)
    return [score_from_preference(p, scale) for p in prefs]


def reward_scores(
    judge,
    prompts: Sequence[str],
    responses: Sequence[str],
    anchors: Sequence[str | None] | None = None,
    *,
    scale: int = 5,
    method: str = "trustjudge",
    mode: str = "direct",
) -> list[Score]:
    """A pointwise reward's scores, read as `judge.score_reading` says: "anchored" (`anchored_scores`; `method`
    does not apply) or "direct" (`Judge.score` at the slot; `anchors` unused). The one place the rewards, the
    server and the `score` command choose the reading."""
    if judge.score_reading == "direct":
        return judge.score(prompts, responses, scale=scale, method=method, mode=mode)
    return anchored_scores(judge, prompts, responses, anchors, scale=scale, mode=mode)
