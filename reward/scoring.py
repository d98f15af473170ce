"""TrustJudge's math: from the judge's probabilities over labels to scores and preferences.

Pure Python on purpose (no torch): every backend (local model, DeepSpeed shards, a remote server) ends in
"probability of each label at the slot", and everything after that point lives here, testable by hand.

References: TrustJudge (arXiv 2509.21117) and its reference code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

SCORE_METHODS = ("trustjudge", "mean", "geval", "argmax")
PREFERENCE_METHODS = ("likelihood", "ppl", "baseline")
VERDICT_LABELS = ("A", "B", "C")  # A: first response shown, B: second, C: tie


@dataclass
class Score:
    """A pointwise judgement.

    Attributes:
        expected: the distribution-sensitive score (`None` when the judgement failed).
        probs: rating -> probability, renormalised over the valid ratings.
        valid_mass: raw probability the judge put on valid ratings (low: it wanted to answer off-format).
        valid_mass_exact: `valid_mass` and `probs` are the judge's exact probabilities; False: a lower bound (a served
            judge read from its top-k only, without an exact read: labels outside it counted as 0).
        entropy: entropy of `probs` in nats.
        argmax: the most likely rating (the discrete baseline).
        error: why the judgement failed, else `None`.
        truncated: the response was cut to fit the judge's context.
        anchor: for the anchored reading (`reward.anchored`), the comparison with the anchor answer it was read
            from (the response as "a"); there `probs` holds the scale's two ends. `None`: read at the score slot.
    """

    expected: float | None
    probs: dict[int, float] = field(default_factory=dict)
    valid_mass: float = 0.0
    valid_mass_exact: bool = True
    entropy: float | None = None
    argmax: int | None = None
    error: str | None = None
    truncated: bool = False
    anchor: Preference | None = None


@dataclass
class Preference:
    """A bidirectional pairwise judgement of (a, b).

    Attributes:
        p_a, p_b, p_tie: merged probabilities of both orders (a wins, b wins, tie); `None` when it failed.
        order_ab: raw {"A", "B", "C"} probabilities with a shown first.
        order_ba: raw {"A", "B", "C"} probabilities with b shown first (there "A" is response b).
        order_consistent: both orders' most likely verdicts agree.
        verdict: "a", "b" or "tie", decided by the method.
        valid_mass: mean raw probability the two orders put on the valid verdicts.
        valid_mass_exact: False where it is a lower bound (as for `Score`).
        error: why the judgement failed, else `None`.
        truncated: a response was cut to fit the judge's context.
    """

    p_a: float | None
    p_b: float | None
    p_tie: float | None
    order_ab: dict[str, float] = field(default_factory=dict)
    order_ba: dict[str, float] = field(default_factory=dict)
    order_consistent: bool | None = None
    verdict: str | None = None
    valid_mass: float = 0.0
    valid_mass_exact: bool = True
    error: str | None = None
    truncated: bool = False

    @property
    def win(self) -> float | None:
        """P(a beats b), a tie counted half; `None` when the judgement failed."""
        return None if self.error is not None or self.p_a is None else self.p_a + 0.5 * self.p_tie


def check_choice(name: str, value, choices: tuple) -> None:
    """Raises a `ValueError` listing the valid choices unless `value` is one of them (options checked when built)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_probs(probs: Mapping) -> None:
    if not probs:
        raise ValueError("probs is empty: need at least one label with its probability")
    for label, p in probs.items():
        if not isinstance(p, int | float) or math.isnan(p) or p < 0 or p > 1 + 1e-6:
            raise ValueError(f"probability of {label!r} must be a number in [0, 1], got {p!r}")


def renormalize(probs: Mapping) -> dict:
    """Rescales probabilities to sum to 1; raises when there is no mass at all."""
    _check_probs(probs)
    total = sum(probs.values())
    if total <= 0:
        raise ValueError("all probabilities are zero: the judge put no mass on any valid label")
    return {label: p / total for label, p in probs.items()}


def entropy(probs: Mapping) -> float:
    """Entropy in nats of a distribution (renormalised first)."""
    return -sum(p * math.log(p) for p in renormalize(probs).values() if p > 0)


def expected_score(probs: Mapping[int, float], method: str = "trustjudge", temperature: float = 0.2) -> float:
    """Distribution-sensitive score from the judge's probability of each valid rating.

    Args:
        probs: rating -> raw probability at the score slot (need not sum to 1).
        method: `"trustjudge"` (reference code: softmax of the ratings' log-odds at `temperature`),
            `"mean"` (the paper's formula: expectation under the renormalised distribution),
            `"geval"` (sum of rating x probability, not renormalised) or `"argmax"` (most likely rating).
        temperature: temperature of the `"trustjudge"` softmax.

    Ratings with a probability of exactly 0 or 1 (infinite log-odds): `"trustjudge"` adds the reference code's
    eps of 1e-8 to both sides of the odds, so a rating of probability 0 weighs at most e^-46 times any rating
    the judge gave at least 1e-4: it is dropped, as the reference code drops it; a rating of probability 1 (all
    others 0) is the score. With no mass at all there is no score (`score_from_probs` reports the failure).

    Example:
    ```python
    >>> from reward.scoring import expected_score
    >>> round(expected_score({80: 0.6, 85: 0.3, 75: 0.1}), 3)
    80.009
    >>> round(expected_score({80: 0.6, 85: 0.3, 75: 0.1}, method="mean"), 6)
    81.0
    >>> expected_score({1: 0.0, 4: 0.5, 5: 0.5}) == expected_score({4: 0.5, 5: 0.5})  # a 0 rating is dropped
    True

    ```
    """
    _check_probs(probs)
    if method == "geval":
        return sum(s * p for s, p in probs.items())
    if method == "mean":
        return sum(s * p for s, p in renormalize(probs).items())
    if method == "argmax":
        return float(max(sorted(probs), key=lambda s: probs[s]))
    if method == "trustjudge":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        # Log-odds keep the ranking of the probabilities but stretch the gaps; eps as in the reference code.
        logits = {s: math.log((p + 1e-8) / (1 - p + 1e-8)) / temperature for s, p in probs.items()}
        top = max(logits.values())
        weights = {s: math.exp(v - top) for s, v in logits.items()}
        total = sum(weights.values())
        return sum(s * w / total for s, w in weights.items())
    raise ValueError(f"unknown score method {method!r}; choose from {SCORE_METHODS}")


def _argmax_label(order: Mapping[str, float]) -> str:
    # Deterministic on exact ties: the tie label wins, then A before B.
    return max(("C", "A", "B"), key=lambda k: order[k])


def _as_verdict(label: str, swapped: bool) -> str:
    if label == "C":
        return "tie"
    return ("b" if label == "A" else "a") if swapped else ("a" if label == "A" else "b")


def merge_bidirectional(order_ab: Mapping[str, float], order_ba: Mapping[str, float]) -> tuple[float, float, float]:
    """Likelihood-aware aggregation of the two presentation orders of a pair.

    Args:
        order_ab: {"A", "B", "C"} -> probability with response a shown first (A = a, B = b, C = tie).
        order_ba: the same with response b shown first (there "A" is response b).

    Returns:
        `(p_a, p_b, p_tie)`: the orders' probabilities summed after swapping the labels of `order_ba`, renormalised.

    Example:
    ```python
    >>> from reward.scoring import merge_bidirectional
    >>> merge_bidirectional({"A": 0.6, "B": 0.3, "C": 0.1}, {"A": 0.5, "B": 0.4, "C": 0.1})
    (0.5, 0.4, 0.1)

    ```
    """
    for order in (order_ab, order_ba):
        if set(order) != set(VERDICT_LABELS):
            raise ValueError(f"an order must map exactly the labels {VERDICT_LABELS}, got {sorted(order)}")
        _check_probs(order)
    a = order_ab["A"] + order_ba["B"]
    b = order_ab["B"] + order_ba["A"]
    tie = order_ab["C"] + order_ba["C"]
    total = a + b + tie
    if total <= 0:
        raise ValueError("both orders put zero probability on every verdict")
    return a / total, b / total, tie / total


def decide_preference(
    order_ab: Mapping[str, float],
    order_ba: Mapping[str, float],
    method: str = "likelihood",
    perplexity: tuple[float, float] | None = None,
) -> Preference:
    """Builds a `Preference` from both orders' verdict probabilities.

    Args:
        order_ab, order_ba: raw verdict probabilities of each order, as in `merge_bidirectional`.
        method: `"likelihood"` (argmax of the merged probabilities), `"ppl"` (the order whose judge output has the
            lower perplexity decides, as in the paper) or `"baseline"` (both orders' argmax must agree, else tie).
        perplexity: `(ppl_ab, ppl_ba)` of the judge's output in each order; required by `"ppl"`.

    Example:
    ```python
    >>> from reward.scoring import decide_preference
    >>> pref = decide_preference({"A": 0.8, "B": 0.1, "C": 0.1}, {"A": 0.8, "B": 0.1, "C": 0.1})
    >>> pref.order_consistent, pref.verdict, round(pref.p_a, 2), round(pref.p_b, 2)
    (False, 'tie', 0.45, 0.45)

    ```
    """
    if method not in PREFERENCE_METHODS:
        raise ValueError(f"unknown preference method {method!r}; choose from {PREFERENCE_METHODS}")
    p_a, p_b, p_tie = merge_bidirectional(order_ab, order_ba)
    first = _as_verdict(_argmax_label(order_ab), swapped=False)
    second = _as_verdict(_argmax_label(order_ba), swapped=True)
    if method == "likelihood":
        best = max(p_a, p_b, p_tie)
        verdict = "tie" if p_tie == best or p_a == p_b else ("a" if p_a == best else "b")
    elif method == "baseline":
        verdict = first if first == second else "tie"
    else:
        if perplexity is None:
            raise ValueError('method="ppl" needs the perplexity of the judge output in both orders')
        # Equal perplexities: neither order is more confident, a tie (as the reference code decides).
        ppl_ab, ppl_ba = perplexity
        verdict = first if ppl_ab < ppl_ba else second if ppl_ba < ppl_ab else "tie"
    return Preference(
        p_a=p_a,
        p_b=p_b,
        p_tie=p_tie,
        order_ab=dict(order_ab),
        order_ba=dict(order_ba),
        order_consistent=first == second,
        verdict=verdict,
        valid_mass=(sum(order_ab.values()) + sum(order_ba.values())) / 2,
    )


def score_from_probs(
    probs: Mapping[int, float], method: str = "trustjudge", temperature: float = 0.2, truncated: bool = False
) -> Score:
    """Builds a `Score` from the raw probability of each valid rating; no mass at all is a failed `Score`."""
    valid_mass = sum(probs.values())
    if valid_mass <= 0:
        return Score(expected=None, error="the judge put no probability on any valid rating", truncated=truncated)
    normalized = renormalize(probs)  # (checks the probabilities; the entropy and argmax below read them as they are)
    return Score(
        expected=expected_score(probs, method, temperature),
        probs=normalized,
        valid_mass=valid_mass,
        entropy=-sum(p * math.log(p) for p in normalized.values() if p > 0),
        argmax=int(max(sorted(probs), key=probs.__getitem__)),
        truncated=truncated,
    )
