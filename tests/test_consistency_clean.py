import json
import math

import pytest
from conftest import answer_in_slot

from reward.consistency import clean_dataset, parse_row


def pref(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def pair(prompt, a, b, label=None, probs=None, **extra):
    row = {"prompt": prompt, "response_a": a, "response_b": b, **extra}
    if label is not None:
        row["label"] = label
    if probs is not None:
        row["p_a"], row["p_b"], row["p_tie"] = probs
    return row


def reasons(rejected):
    return {r["row_index"]: r["reason"] for r in rejected}


def test_drop_cycles_rejects_every_pair_on_the_cycle_with_evidence():
    rows = [pref("q", "a", "b"), pref("q", "b", "c"), pref("q", "c", "a"), pref("q", "a", "d"), pref("p", "x", "y")]
    kept, rejected, report = clean_dataset(rows, ["drop-cycles"], progress=False)
    assert kept == [rows[3], rows[4]]
    assert reasons(rejected) == {0: "cycle", 1: "cycle", 2: "cycle"}
    assert all(r["evidence_rows"] == [0, 1, 2] for r in rejected)
    assert rejected[0]["row"] == rows[0]  # the row as it came
    assert (report["rows_in"], report["rows_kept"], report["rows_rejected"]) == (5, 2, 3)
    assert report["rejected_by_reason"] == {"cycle": 3}
    before, after = report["before"], report["after"]
    assert before["non_transitivity"]["3"] == 1.0 and before["non_transitivity_counts"]["3"]["circle"] == 1
    assert before["non_transitivity_counts"]["3"]["left_out"] == 3  # triples with d miss a pair
    assert after["non_transitivity"]["3"] is None and after["pairs"] == 2


def test_min_feedback_drops_only_the_weakest_pair_of_the_cycle():
    rows = [
        pair("q", "a", "b", probs=(0.9, 0.05, 0.05)),  # weight |p_a - p_b| = 0.85
        pair("q", "b", "c", probs=(0.8, 0.1, 0.1)),  # 0.7
        pair("q", "c", "a", probs=(0.5, 0.3, 0.2)),  # 0.2: the cheapest way to break the cycle
        pair("q", "a", "d", probs=(0.1, 0.8, 0.1)),  # d beats a, on no cycle
    ]
    kept, rejected, report = clean_dataset(rows, ["min-feedback"], progress=False)
    assert reasons(rejected) == {2: "min-feedback"} and rejected[0]["evidence_rows"] == [0, 1, 2]
    assert report["min_feedback_components"] == {"exact": 1, "eades-lin-smyth": 0}
    assert report["before"]["non_transitivity"]["3"] == 1.0 and len(kept) == 3
    # drop-cycles on the same rows would have dropped all three.
    assert clean_dataset(rows, ["drop-cycles"], progress=False)[2]["rows_kept"] == 1


def test_equivalence_drops_a_tie_contradicted_through_strict_pairs():
    rows = [pair("q", "a", "b", "tie"), pair("q", "b", "c", "a"), pair("q", "c", "a", "a")]  # a = b > c > a
    _, rejected, report = clean_dataset(rows, ["equivalence", "drop-cycles"], progress=False)
    assert reasons(rejected) == {0: "equivalence"} and rejected[0]["evidence_rows"] == [0, 1, 2]
    assert report["before"]["non_transitivity_counts"]["3"]["circle"] == 1  # a = b > c > a: case (0, +, -)
    # Without the equivalence policy, the cycle through the tie costs the two strict pairs instead.
    _, rejected, _ = clean_dataset(rows, ["drop-cycles"], progress=False)
    assert reasons(rejected) == {1: "cycle", 2: "cycle"}


def test_order_inconsistent_and_score_conflict():
    rows = [
        pair("q", "a", "b", "a", order_consistent=False),
        pair("q", "a", "c", "a", order_consistent=True, score_a=2.0, score_b=4.0),  # scores say c, by 2
        pair("q", "b", "c", "b", score_a=3.0, score_b=3.5),  # scores agree: c wins
        pair("q", "b", "d", "tie", score_a=3.0, score_b=3.2),  # a tie 0.2 apart
    ]
    _, rejected, report = clean_dataset(rows, ["order-inconsistent", "score-conflict"], margin=0.5, progress=False)
    assert reasons(rejected) == {0: "order-inconsistent", 1: "score-conflict"}
    assert report["order_unknown"] == 2
    # Scores belong to candidates, whichever row gave them: a = 2 (row 1) and b = 3 (row 2) put row 0 against them.
    _, rejected, _ = clean_dataset(rows, ["score-conflict"], margin=0.1, progress=False)
    assert reasons(rejected) == {0: "score-conflict", 1: "score-conflict", 3: "score-conflict"}
    # The report's conflict ratio: (a, b), (a, c) and the tie (b, d) 0.2 apart conflict; (b, c) agrees.
    cr = report["before"]["conflict_counts"]
    assert (cr["conflicts"], cr["pairs"]) == (3, 4) and report["before"]["conflict_ratio"] == 3 / 4


BAD_ROWS = [
    ({"prompt": "q", "chosen": "a"}, "bad-input", "rejected is missing"),
    (pref("q", "same", "same"), "bad-input", "self-loop"),
    (pref("q", 5, "b"), "bad-input", "not a string"),
    (pref("q", "  ", "b"), "bad-input", "chosen is empty"),
    (pref("", "a", "b"), "bad-input", "prompt is empty"),
    (pair("q", "a", "b", probs=(math.nan, 0.5, 0.5)), "bad-input", "finite number"),
    (pair("q", "a", "b", probs=(-0.1, 0.6, 0.5)), "bad-input", "negative"),
    (pair("q", "a", "b", probs=(0.5, 0.4, 0.4)), "bad-input", "not 1"),
    (pair("q", "a", "b", label="x"), "bad-input", "label must be"),
    (pair("q", "a", "b", p_a=None, judge_error="boom"), "bad-input", "judge_error: boom"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1]}, "bad-input", "differ in length"),
    ({"prompt": "q", "responses": ["a", "a"], "scores": [1, 2]}, "bad-input", "appears twice"),
    ({"prompt": "q", "response": "a", "score": math.nan}, "bad-input", "finite number"),
    ({"foo": 1}, "bad-input", "unknown format"),
    ("not a row", "bad-input", "expected a mapping"),
]


def test_bad_input_goes_to_rejects_with_its_reason():
    rows = [row for row, _, _ in BAD_ROWS]
    rows += [pref("d", "a", "b"), pref("d", "a", "b")]  # a duplicate: the second goes
    rows += [pref("c", "a", "b"), pref("c", "b", "a")]  # conflicting duplicates: both go
    rows += [pref("ok", "a", "b")]
    kept, rejected, report = clean_dataset(rows, ["drop-cycles"], progress=False)
    assert kept == [rows[-5], rows[-1]]
    got = {r["row_index"]: r for r in rejected}
    for i, (_, reason, detail) in enumerate(BAD_ROWS):
        assert got[i]["reason"] == reason and detail in got[i]["detail"], (i, got[i])
    n = len(BAD_ROWS)
    assert got[n + 1]["reason"] == "duplicate-pair" and got[n + 1]["evidence_rows"] == [n, n + 1]
    assert got[n + 2]["reason"] == got[n + 3]["reason"] == "conflicting-duplicate"
    assert report["rows_kept"] + report["rows_rejected"] == report["rows_in"] == len(rows)
    assert clean_dataset(rows, ["drop-cycles"], progress=False) == (kept, rejected, report)  # deterministic


def test_formats_implicit_prompt_multi_response_pointwise():
    user = {"role": "user", "content": "q?"}
    answer_a, answer_b = {"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}
    implicit = {"chosen": [user, answer_a], "rejected": [user, answer_b]}
    parsed = parse_row(implicit)
    assert parsed.prompt == [user] and parsed.responses == [[answer_a], [answer_b]]
    assert parse_row({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"}).prompt == "Q: hi A: "
    ranks = parse_row({"prompt": "q", "responses": ["x", "y", "z"], "ranks": [2, 1, 3]})
    assert [p[:3] for p in ranks.pairs] == [(0, 1, -1), (0, 2, 1), (1, 2, 1)]  # rank 1 is best

    rows = [
        {"prompt": "m", "responses": ["x", "y", "z"], "scores": [3.0, 1.0, 2.0], "category": "math"},
        {"prompt": "m", "response_a": "y", "response_b": "w", "label": "a"},
        {"prompt": "s", "response": "u", "score": 4.0},  # pointwise rows only give scores
        {"prompt": "s", "response": "v", "score": 1.0},
        {"prompt": "s", "chosen": "v", "rejected": "u"},  # against the scores: a conflict in the report
        implicit,
    ]
    kept, rejected, report = clean_dataset(rows, [], progress=False)
    assert rejected == [] and len(kept) == 6
    before = report["before"]
    assert before["prompts"] == 3 and before["pairs"] == 3 + 1 + 1 + 1
    assert before["conflict_counts"] == {"conflicts": 1, "pairs": 4, "delta": 0.0}  # 3 from the scores + (v, u)
    assert before["conflict_ratio_by_category"]["math"]["conflicts"] == 0
    assert before["non_transitivity"]["3"] == 0.0


def test_dataset_in_dataset_out():
    from datasets import Dataset

    rows = [pref("q", "a", "b"), pref("q", "b", "c"), pref("q", "c", "a"), pref("p", "a", "b")]
    kept, rejected, _ = clean_dataset(Dataset.from_list(rows), ["drop-cycles"], progress=False)
    assert isinstance(kept, Dataset) and kept.to_list() == [rows[3]] and len(rejected) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown policy 'cycles'"):
        clean_dataset([], ["cycles"])
    with pytest.raises(ValueError, match="relations"):
        clean_dataset([], [], relations="mine")


def better_wins(prompt):
    """A judge that prefers the answer containing 'good', whichever order it is shown in."""
    a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
    if ("good" in a) == ("good" in b):
        return {"A": 0.2, "B": 0.2, "C": 0.6}
    return {"A": 0.8, "B": 0.1, "C": 0.1} if "good" in a else {"A": 0.1, "B": 0.8, "C": 0.1}


def test_judge_labels_pairs_and_contradicts_labels(fake_judge):
    judge = fake_judge(rule=better_wins)
    rows = [
        pair("q", "good one", "bad one"),  # no label: the judge's verdict (a) is used
        pair("q", "bad one", "good two", "a"),  # the label says the bad one wins: the judge says b
        pair("q", "good one", "good two", "tie"),
    ]
    kept, rejected, report = clean_dataset(rows, [], judge=judge, relations="both", progress=False)
    assert reasons(rejected) == {1: "judge-contradicts-label"} and "p_b=0.8" in rejected[0]["detail"]
    assert report["judged_pairs"] == 3 and report["judge_contradicts_label"] == 1 and len(kept) == 2
    # relations="judge": the judge's verdicts replace the labels, nothing contradicts.
    _, rejected, report = clean_dataset(rows, [], judge=judge, relations="judge", progress=False)
    assert rejected == [] and report["before"]["non_transitivity"]["3"] == 0.0


def test_judge_position_bias_is_order_inconsistent(fake_judge):
    always_a = fake_judge(rule=lambda prompt: {"A": 0.7, "B": 0.2, "C": 0.1})
    rows = [pair("q", "x", "y", "a"), pair("q", "y", "z", "a")]
    _, rejected, report = clean_dataset(rows, ["order-inconsistent"], judge=always_a, progress=False)
    assert reasons(rejected) == {0: "order-inconsistent", 1: "order-inconsistent"}
    assert json.dumps(report)  # the report is plain JSON


@pytest.mark.parametrize("asked", [["drop-cycles", "min-feedback"], ["min-feedback", "drop-cycles"]])
def test_policies_run_in_their_fixed_order_whatever_order_they_are_asked_in(asked):
    """min-feedback runs before drop-cycles: it breaks the cycle by its weakest pair, so drop-cycles finds none.
    Run in the asked order, ["drop-cycles", "min-feedback"] would drop the whole cycle."""
    rows = [
        pair("q", "a", "b", probs=(0.9, 0.05, 0.05)),
        pair("q", "b", "c", probs=(0.8, 0.1, 0.1)),
        pair("q", "c", "a", probs=(0.5, 0.3, 0.2)),
        pair("q", "a", "d", probs=(0.1, 0.8, 0.1)),
    ]
    kept, rejected, report = clean_dataset(rows, asked, progress=False)
    assert reasons(rejected) == {2: "min-feedback"} and kept == [rows[0], rows[1], rows[3]]
    assert report["policies"] == ["min-feedback", "drop-cycles"]
