import math

import pytest

from reward.scoring import (
    decide_preference,
    entropy,
    expected_score,
    merge_bidirectional,
    renormalize,
    score_from_probs,
)

EXAMPLE = {80: 0.6, 85: 0.3, 75: 0.1}


def test_trustjudge_worked_example():
    assert expected_score(EXAMPLE) == pytest.approx(80.009, abs=5e-4)
    # Hand computation: weights softmax(log-odds / 0.2).
    logits = {s: math.log((p + 1e-8) / (1 - p + 1e-8)) / 0.2 for s, p in EXAMPLE.items()}
    z = sum(math.exp(v) for v in logits.values())
    assert expected_score(EXAMPLE) == pytest.approx(sum(s * math.exp(v) / z for s, v in logits.items()), rel=1e-12)


def test_mean_geval_argmax():
    assert expected_score(EXAMPLE, method="mean") == pytest.approx(81.0)
    # Unnormalised mass: mean renormalises, geval does not.
    half = {s: p / 2 for s, p in EXAMPLE.items()}
    assert expected_score(half, method="mean") == pytest.approx(81.0)
    assert expected_score(half, method="geval") == pytest.approx(40.5)
    assert expected_score(EXAMPLE, method="argmax") == 80
    # A higher temperature moves the trustjudge score towards the mean.
    assert 80.009 < expected_score(EXAMPLE, temperature=1.0) < 81.0


def test_expected_score_bad_input():
    for bad in ({}, {1: -0.1}, {1: float("nan")}, {1: 1.5}):
        with pytest.raises(ValueError):
            expected_score(bad)
    with pytest.raises(ValueError, match="unknown score method"):
        expected_score(EXAMPLE, method="median")
    with pytest.raises(ValueError):
        expected_score(EXAMPLE, temperature=0)
    with pytest.raises(ValueError, match="zero"):
        renormalize({1: 0.0, 2: 0.0})


def test_merge_bidirectional_hand_example():
    # Order ab: A=a 0.6, B=b 0.3, tie 0.1. Order ba: A=b 0.2, B=a 0.7, tie 0.1.
    p_a, p_b, p_tie = merge_bidirectional({"A": 0.6, "B": 0.3, "C": 0.1}, {"A": 0.2, "B": 0.7, "C": 0.1})
    assert (p_a, p_b, p_tie) == pytest.approx((1.3 / 2, 0.5 / 2, 0.2 / 2))
    # Unnormalised orders (mass off the verdict labels) are renormalised over what is there.
    p = merge_bidirectional({"A": 0.3, "B": 0.1, "C": 0.0}, {"A": 0.1, "B": 0.3, "C": 0.0})
    assert p == pytest.approx((0.75, 0.25, 0.0))
    with pytest.raises(ValueError):
        merge_bidirectional({"A": 0.5, "B": 0.5}, {"A": 0.5, "B": 0.4, "C": 0.1})
    with pytest.raises(ValueError):
        merge_bidirectional({"A": 0, "B": 0, "C": 0}, {"A": 0, "B": 0, "C": 0})


def test_decide_methods():
    ab = {"A": 0.5, "B": 0.4, "C": 0.1}  # says a
    ba = {"A": 0.6, "B": 0.3, "C": 0.1}  # says b (A is b here)
    lik = decide_preference(ab, ba, "likelihood")
    assert lik.order_consistent is False
    assert (lik.p_a, lik.p_b) == pytest.approx((0.4, 0.5))
    assert lik.verdict == "b"
    assert decide_preference(ab, ba, "baseline").verdict == "tie"
    # ppl: the more confident order (lower perplexity) decides.
    assert decide_preference(ab, ba, "ppl", perplexity=(1 / 0.5, 1 / 0.6)).verdict == "b"
    assert decide_preference(ab, ba, "ppl", perplexity=(1.5, 3.0)).verdict == "a"
    agree = decide_preference(ab, {"A": 0.2, "B": 0.7, "C": 0.1}, "baseline")
    assert agree.order_consistent and agree.verdict == "a"
    with pytest.raises(ValueError):
        decide_preference(ab, ba, "ppl")
    with pytest.raises(ValueError):
        decide_preference(ab, ba, "vote")


def test_score_from_probs_reports_distribution():
    s = score_from_probs({1: 0.1, 2: 0.1, 3: 0.2})
    assert s.valid_mass == pytest.approx(0.4)
    assert s.probs == pytest.approx({1: 0.25, 2: 0.25, 3: 0.5})
    assert s.entropy == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))
    assert s.argmax == 3 and s.error is None
    failed = score_from_probs({1: 0.0, 2: 0.0})
    assert failed.expected is None and failed.error
    assert entropy({"x": 1.0}) == 0.0


def test_ppl_with_equal_perplexities_is_a_tie():
    # The orders disagree and neither is more confident: a tie, as the reference decides (not the first order).
    ab = {"A": 0.5, "B": 0.4, "C": 0.1}  # says a
    ba = {"A": 0.5, "B": 0.4, "C": 0.1}  # says b
    assert decide_preference(ab, ba, "ppl", perplexity=(2.0, 2.0)).verdict == "tie"
    assert decide_preference(ab, ba, "ppl", perplexity=(2.0, 2.0 + 1e-9)).verdict == "a"
    assert decide_preference(ab, ba, "ppl", perplexity=(2.0 + 1e-9, 2.0)).verdict == "b"


def test_trustjudge_with_probabilities_of_exactly_0_and_1():
    # A rating of probability 0 is dropped (the reference code drops it): the score is that of the other ratings.
    assert expected_score({1: 0.0, 4: 0.5, 5: 0.5}) == pytest.approx(4.5, abs=1e-12)
    assert expected_score({1: 0.0, 2: 0.3, 5: 0.6}) == pytest.approx(expected_score({2: 0.3, 5: 0.6}), abs=1e-12)
    # A rating of probability 1 is the score, wherever it sits on the scale.
    assert expected_score({1: 0.0, 3: 1.0, 5: 0.0}) == pytest.approx(3.0, abs=1e-12)
    assert expected_score({1: 1.0, 5: 0.0}) == pytest.approx(1.0, abs=1e-12)
    # No mass at all: no score, a failure rather than a number.
    assert score_from_probs({1: 0.0, 5: 0.0}).expected is None


def test_exact_ties_break_to_the_tie_label_and_to_the_lowest_rating():
    """Deterministic on exact ties: an order whose A and tie are equal reads as a tie (so it disagrees with the other
    order's clear "a", not agrees), and equal ratings give the lowest as the argmax (scores, and method="argmax")."""
    pref = decide_preference({"A": 0.4, "B": 0.2, "C": 0.4}, {"A": 0.2, "B": 0.6, "C": 0.2}, method="baseline")
    assert pref.order_consistent is False and pref.verdict == "tie"  # A first would make both orders say "a"
    probs = {1: 0.1, 2: 0.35, 4: 0.35, 5: 0.2}
    assert score_from_probs(probs).argmax == 2 and expected_score(probs, method="argmax") == 2.0
