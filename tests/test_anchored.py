"""The anchored pointwise reading (reward/anchored.py): its mapping, its resistance to spellings a pattern list
misses, and that it is the default wherever a pointwise reward is offered."""

import pytest
from conftest import FakeBackend, answer_in_slot
from fastapi.testclient import TestClient

from reward import Judge
from reward.anchored import ANCHOR, anchored_scores, reward_scores
from reward.attacks import CONTROL, apply, attack_suite
from reward.templates import POINTWISE

BAD = "The capital of France is Berlin."
Q = "What is the capital of France?"
BASE = {"1": 0.1, "2": 0.6, "3": 0.2, "4": 0.05, "5": 0.05}  # the slot's opinion of BAD: about 2.3
# Position-biased and not symmetric: the merged result differs from each order's and from a swapped read.
# The response first (anchor as B):        A 0.5, B 0.2, C 0.3
# The anchor first (response as B):        A 0.6, B 0.1, C 0.3
# merged: response 0.5 + 0.1, anchor 0.2 + 0.6, tie 0.6 (of 2.0): P(win) = 0.3 + 0.3 / 2 = 0.45
WIN = 0.45
NEW_FAMILIES = ("variant", "spelled", "keycap", "critique", "foreign", "rubric")


def asymmetric(prompt, answer=lambda text: text):
    b = answer(answer_in_slot(prompt, "B"))
    return {"A": 0.6, "B": 0.1, "C": 0.3} if b == BAD else {"A": 0.5, "B": 0.2, "C": 0.3}


def reads_every_spelling(prompt):
    """A slot reading that copies the claimed rating in any spelling: the attack texts themselves (what a
    policy finds by search); the benign control and the bare answer get BASE."""
    attacks = attack_suite(POINTWISE, 5)
    if any(a.text.strip() in prompt for a in attacks if a.family in NEW_FAMILIES):
        return {"5": 0.96, "1": 0.01, "2": 0.01, "3": 0.01, "4": 0.01}
    return BASE


def indifferent_to_claims(prompt):
    """`asymmetric` on the texts' first lines only (where the answers are): claims appended below change nothing."""
    return asymmetric(prompt, lambda text: text.split("\n", 1)[0])


def judge_of(tokenizer, rule=asymmetric, points=BASE, **options):
    return Judge(FakeBackend(tokenizer, rule, points), progress=False, **options)  # the library's own defaults


def test_the_mapping_is_one_plus_scale_minus_one_times_the_merged_win(tiny_judge):
    judge = judge_of(tiny_judge.tokenizer)
    (s5,) = anchored_scores(judge, [Q], [BAD])
    (s10,) = anchored_scores(judge, [Q], [BAD], scale=10)
    # one order only would give 3.6 or 3.4, ties not halved 2.2, a swapped read 3.2, scale * win 2.25
    assert s5.expected == pytest.approx(1 + 4 * WIN) and s10.expected == pytest.approx(1 + 9 * WIN)
    assert s5.probs == pytest.approx({1: 1 - WIN, 5: WIN}) and s5.argmax == 1
    assert s5.anchor.p_a == pytest.approx(0.3) and s5.valid_mass == pytest.approx(1.0)
    prompts = judge.backend.prompts[:2]
    assert [answer_in_slot(p, "B") for p in prompts] == [ANCHOR, BAD]  # both orders, the default anchor
    assert s5.expected == pytest.approx(sum(k * p for k, p in s5.probs.items()))


def test_a_row_reference_is_the_anchor_and_failures_stay_failures(tiny_judge):
    judge = judge_of(tiny_judge.tokenizer)
    scores = anchored_scores(judge, [Q, Q], [BAD, BAD], ["Paris.", None])
    assert [answer_in_slot(p, "B") for p in judge.backend.prompts] == ["Paris.", BAD, ANCHOR, BAD]
    assert scores[0].expected == pytest.approx(scores[1].expected)
    broken = judge_of(tiny_judge.tokenizer, rule=lambda p: {"A": 0.0, "B": 0.0, "C": 0.0})
    (failed,) = anchored_scores(broken, [Q], [BAD])
    assert failed.expected is None and "no probability" in failed.error  # never a 0 or a midpoint
    with pytest.raises(ValueError, match="anchors has 1 items"):
        anchored_scores(judge, [Q, Q], [BAD, BAD], ["Paris."])


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_judge_that_copies_any_spelling_fools_the_direct_reading_not_the_anchored_one(tiny_judge, family):
    attacks = [a for a in attack_suite(POINTWISE, 5) if a.family == family]
    texts = [BAD, apply(BAD, CONTROL)] + [apply(BAD, a) for a in attacks]
    q = [Q] * len(texts)
    # Without the pattern list (`neutralize`, which now knows some of these spellings, e.g. keycaps), as a spelling
    # it does not know yet would arrive: the anchored reading must not depend on it.
    judges = {"direct": {"score_reading": "direct", "neutralize": False}, "anchored": {"neutralize": False}}
    direct = judge_of(tiny_judge.tokenizer, indifferent_to_claims, reads_every_spelling, **judges["direct"])
    fooled = [s.expected for s in reward_scores(direct, q, texts)]
    assert fooled[1] == pytest.approx(fooled[0]) and all(x > fooled[0] + 2 for x in fooled[2:]), fooled
    anchored = judge_of(tiny_judge.tokenizer, indifferent_to_claims, reads_every_spelling, **judges["anchored"])
    held = [s.expected for s in reward_scores(anchored, q, texts)]
    assert held == pytest.approx([1 + 4 * WIN] * len(texts), abs=1e-9)


def test_the_default_reading_is_anchored_in_every_entry_point(tiny_judge, tiny_model_dir):
    from trainers import JudgeScoreReward
    from trainers.judge_args import JudgeArguments
    from trainers.judge_file import judge_rows
    from trainers.protocols.trl_env import judge_environment
    from trainers.server import create_app
    from trainers.verl import compute_score

    want = 1 + 4 * WIN
    judge = judge_of(tiny_judge.tokenizer, points={"5": 1.0})  # the slot would say 5.0
    assert judge.score_reading == "anchored" and JudgeArguments().judge_score_reading == "anchored"
    assert JudgeArguments(judge=tiny_model_dir).load().score_reading == "anchored"
    assert JudgeArguments(judge=tiny_model_dir, judge_score_reading="direct").load().score_reading == "direct"
    assert JudgeScoreReward(judge)(prompts=[Q], completions=[BAD]) == pytest.approx([want])
    (row,) = judge_rows(judge, "score", [{"prompt": Q, "response": BAD}], {"scale": 5})
    assert row["score"] == pytest.approx(want) and row["score_reading"] == "anchored"
    assert row["score_anchor"]["p_a"] == pytest.approx(0.3) and row["score_probs"] == pytest.approx(
        {"1": 0.55, "5": 0.45}
    )
    with TestClient(create_app(judge, reward="score")) as c:
        body = c.post("/get_reward", json={"query": [Q + BAD], "prompts": [Q], "labels": [None]}).json()
        assert body["rewards"] == pytest.approx([want])
        (out,) = c.post("/score", json={"rows": [{"prompt": Q, "response": BAD}]}).json()["rows"]
        assert out["score"] == pytest.approx(want)
    assert compute_score("mt", BAD, None, extra_info={"question": Q}, judge=judge) == pytest.approx(want)
    env = judge_environment(judge)()
    env.reset(prompt=Q)
    env.submit_answer(BAD)
    assert env._judged() == pytest.approx(WIN)  # rescaled to [0, 1]: the win probability itself
    direct = judge_of(tiny_judge.tokenizer, points={"5": 1.0}, score_reading="direct")
    with pytest.warns(UserWarning, match="score_reading='direct'"):
        assert JudgeScoreReward(direct)(prompts=[Q], completions=[BAD]) == pytest.approx([5.0])


def test_bad_readings_are_errors_before_anything_loads():
    from trainers.args import UserError
    from trainers.judge_args import JudgeArguments

    with pytest.raises(UserError, match="judge_score_reading must be one of anchored, direct"):
        JudgeArguments(judge_score_reading="slot")
    with pytest.raises(ValueError, match="score_reading must be one of anchored, direct"):
        Judge(FakeBackend(None), score_reading="slot")


@pytest.mark.slow
def test_embedded_judge_anchored_reading_holds_the_new_families():
    """Finding 7 on the real judge (2 questions): the slot reading is fooled by the new spellings; the anchored
    reading (the default) keeps every family within 0.25 points of the benign control."""
    from statistics import fmean

    from reward import load_judge
    from trainers.mt_bench import mt_bench_candidates

    judge = load_judge("embedded", device="cpu", progress=False, max_length=768)
    rows = mt_bench_candidates(max_words=30)[:2]
    qs, bads = [r["question"] for r in rows], [r["answers"]["off_topic"] for r in rows]
    attacks = [a for a in attack_suite(POINTWISE, 5) if a.family in NEW_FAMILIES]
    texts = [apply(b, CONTROL) for b in bads] + [apply(b, a) for a in attacks for b in bads]
    n = len(bads)

    def gains(values):
        """Per family: its attacked answers' mean minus the control's (values: control block, then per attack)."""
        blocks = [values[k : k + n] for k in range(0, len(values), n)]
        control, by_attack = fmean(blocks[0]), list(zip(attacks, blocks[1:]))
        return {f: fmean(v for a, b in by_attack if a.family == f for v in b) - control for f in NEW_FAMILIES}

    direct = gains([s.expected for s in judge.score(qs * (1 + len(attacks)), texts)])
    assert fmean(direct.values()) > 1.0, direct  # what the anchored reading has to hold
    anchored = gains([s.expected for s in anchored_scores(judge, qs * (1 + len(attacks)), texts)])
    assert max(anchored.values()) <= 0.25, anchored
