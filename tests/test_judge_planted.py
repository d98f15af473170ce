"""`Judge` and the backends, checked where a one-line wrong version passed the suite (issue 27's survey, tallied in
docs/install.md). Fake backends and the tiny tokenizer: each test runs in well under a second once the tiny model
is built."""

import pytest
from conftest import FakeBackend, answer_in_slot

from reward import Judge
from reward.judge import CUT_MARK


def test_a_verdict_read_empty_in_one_order_is_a_failure_not_a_one_sided_verdict(tiny_judge):
    """The merge needs both orders: a pair whose swapped order put no probability on any verdict is a failed
    judgement (error set, no probabilities), even though the other order is a confident read."""

    def rule(prompt):
        if answer_in_slot(prompt, "A") == "second":  # the swapped order: nothing on A, B or C
            return {"A": 0.0, "B": 0.0, "C": 0.0}
        return {"A": 0.9, "B": 0.05, "C": 0.05}

    judge = Judge(FakeBackend(tiny_judge.tokenizer, rule), progress=False)
    (pref,) = judge.compare(["q"], ["first"], ["second"])
    assert pref.error is not None and "no probability" in pref.error
    assert pref.p_a is None and pref.p_b is None


def test_the_cut_mark_counts_the_tokens_cut(tiny_judge):
    """A response cut to fit says how many tokens were cut: the response's tokens minus those kept (head and
    tail), not the response's whole length."""
    backend = FakeBackend(tiny_judge.tokenizer, points={"3": 1.0})
    backend.max_length = 700
    judge = Judge(backend, progress=False, score_reading="direct")
    response = "HEAD" + " x" * 1000 + " TAIL"
    (score,) = judge.score(["q?"], [response])
    assert score.truncated and score.expected == pytest.approx(3.0)
    shown = backend.prompts[0].split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End", 1)[0]
    opening, closing = CUT_MARK.split("{n}")
    before, rest = shown.split(opening, 1)
    n, after = rest.split(closing, 1)
    count = lambda text: len(tiny_judge.tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    total, kept = count(response), count(before) + count(after)
    assert before.startswith("HEAD") and after.endswith("TAIL")
    assert abs(int(n) - (total - kept)) <= 2, (n, total, kept)  # (a piece may tokenise one token apart)
    assert int(n) < total - 100


def test_two_long_responses_share_the_context(tiny_judge):
    """A pairwise prompt holds two responses: each is cut to its half of what the context leaves, so the whole
    prompt (both orders) fits `max_length` with both heads and tails shown."""
    backend = FakeBackend(tiny_judge.tokenizer, lambda p: {"A": 0.5, "B": 0.3, "C": 0.2})
    backend.max_length = 700
    judge = Judge(backend, progress=False)
    a, b = "HEADA" + " x" * 1000 + " TAILA", "HEADB" + " y" * 1000 + " TAILB"
    (pref,) = judge.compare(["q?"], [a], [b])
    assert pref.error is None and pref.truncated
    assert len(backend.prompts) == 2
    for prompt in backend.prompts:
        assert all(mark in prompt for mark in ("HEADA", "TAILA", "HEADB", "TAILB"))
        assert len(tiny_judge.tokenizer(prompt, add_special_tokens=False).input_ids) <= backend.max_length


def test_a_served_read_sums_tokens_listed_under_one_key():
    """Two listed entries that are one token (its id and its text, or one text twice where ids are not given) hold
    the sum of their probabilities, not the larger one."""
    import math

    from reward.backends.served_reads import keyed

    got = keyed({"token_id:7": math.log(0.2), "]": math.log(0.3)}, {"]": 7})
    assert got.keys() == {7} and math.exp(got[7]) == pytest.approx(0.5)
    got = keyed([{"token": "4", "logprob": math.log(0.1)}, {"token": "4", "prob": 0.25}], {})
    assert math.exp(got["4"]) == pytest.approx(0.35)
