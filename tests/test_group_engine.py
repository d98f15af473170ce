"""`reward.group_judging` gives, fed the same recorded preferences, the rewards and metrics the group reward gave
before it moved out of the TRL glue (commit dd6f47c), for every pairing x aggregate, to 1e-12 (`swiss`: what
its design of issue #29 gives, below).

The expected values (tests/golden/group_rewards_dd6f47c.json) were computed once by running `golden_values` below
against `trainers/reward_funcs.py` at dd6f47c; except those issue #29 changed on purpose (docs/group-pairings.md):
`swiss`'s (its rounds pair by fitted Bradley-Terry strength, not points, and least-sure closing pairs follow) and
every pairing's `bradley_terry` (its prior precision went from 0.1 to 0.03; with 0.1 the dd6f47c values still
hold). Those come from tests/golden/group_rewards_29_prior003.json (it supersedes group_rewards_swiss_29.json, the
`swiss/*` values of #29's first design, prior 0.1), written by this engine with

    PYTHONPATH=$PWD:$PWD/tests python tests/test_group_engine.py

(it rewrites the `swiss/*` and `*/bradley_terry` values only; rerun it only for a deliberate change of the Swiss
design or the Bradley-Terry fit, into a new file, and say why).

The fake judge's preferences are a hash of the two answers in the order shown, so both orders disagree often, cycles
appear, one answer fails every pair, one group is lone, and a second call continues the seeded random stream
(circular, swiss)."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import FakeBackend, answer_in_slot

from reward import Judge
from reward.groups import AGGREGATES
from trainers import JudgePairwiseReward

SWISS = Path(__file__).parent / "golden/group_rewards_29_prior003.json"
GOLDEN = json.loads((Path(__file__).parent / "golden/group_rewards_dd6f47c.json").read_text())
if SWISS.exists():  # absent only before `write_swiss_golden` first wrote it: then the swiss test fails below
    GOLDEN |= json.loads(SWISS.read_text())


def unit(*parts):
    h = hashlib.sha256("\x00".join(parts).encode()).digest()
    return [int.from_bytes(h[k : k + 4], "big") / 2**32 for k in (0, 4, 8)]


def rule(prompt):
    a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
    if "FAIL" in a + b:
        return {}
    x, y, z = unit("pair", a, b)
    total = (x + y + 0.3 * z + 0.02) / (0.8 + 0.2 * z)  # some mass off the verdicts
    return {"A": (x + 0.01) / total, "B": (y + 0.01) / total, "C": 0.3 * z / total}


def points(prompt):
    answer = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
    u = unit("score", answer)
    raw = {str(k): (u[k % 3] + 0.05) * (k if u[0] > 0.5 else 6 - k) for k in range(1, 6)}
    return {k: v / sum(raw.values()) for k, v in raw.items()}


PROMPTS, ANSWERS = [], []
for q, n in (("q0", 1), ("q1", 2), ("q2", 3), ("q3", 5), ("q4", 8), ("q5", 4)):
    for k in range(n):
        PROMPTS.append(q)
        ANSWERS.append(f"answer {q} {k} " + "z" * ((7 * k + len(q)) % 5))
ANSWERS[PROMPTS.index("q5") + 1] = "FAIL here"
SECOND = (["r0"] * 6 + ["r1"] * 3, [f"second {k}" for k in range(9)])


def golden_values(tokenizer, pairing, aggregate):
    judge = Judge(FakeBackend(tokenizer, rule, points), progress=False, batch_size=7)
    opts = {"reference_column": "ref"} if pairing == "anchor" else {}
    reward = JudgePairwiseReward(judge, pairing=pairing, aggregate=aggregate, seed=5, adaptive_margin=1.5, **opts)
    calls = []
    for prompts, answers in ((PROMPTS, ANSWERS), SECOND):
        log = {}
        extra = {"ref": [f"reference for {p}" for p in prompts]} if opts else {}
        rewards = reward(prompts=prompts, completions=answers, log_metric=log.__setitem__, **extra)
        log.pop("judge/latency_s")
        calls.append({"rewards": rewards, "logs": log})
    return calls


@pytest.mark.parametrize("aggregate", AGGREGATES)
@pytest.mark.parametrize("pairing", ["all", "adaptive", "circular", "swiss", "anchor"])
def test_every_pairing_and_aggregate_gives_the_old_rewards(tiny_judge, pairing, aggregate):
    assert (pairing != "swiss" and aggregate != "bradley_terry") or SWISS.exists()
    got = golden_values(tiny_judge.tokenizer, pairing, aggregate)
    for new, old in zip(got, GOLDEN[f"{pairing}/{aggregate}"], strict=True):
        assert [r is None for r in new["rewards"]] == [r is None for r in old["rewards"]]
        assert [r for r in new["rewards"] if r is not None] == pytest.approx(
            [r for r in old["rewards"] if r is not None], abs=1e-12, rel=0
        )
        assert new["logs"].keys() == old["logs"].keys()
        for key, value in old["logs"].items():
            assert new["logs"][key] == pytest.approx(value, abs=1e-12, rel=0), key


def test_a_group_with_a_reference_meets_its_peers_and_the_reference_each_weighing_the_same(tiny_judge):
    """pairing="all" with a reference: mean_win over every judged opponent (2 peers + the reference = 1/3 each)."""
    wins = {("a", "b"): 0.9, ("a", "c"): 0.8, ("b", "c"): 0.3, ("a", "ref"): 0.1, ("b", "ref"): 0.6, ("c", "ref"): 0.5}

    def table(prompt):  # both orders agree; P(first shown wins) from the table, no ties
        a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
        p = wins[a, b] if (a, b) in wins else 1 - wins[b, a]
        return {"A": p, "B": 1 - p, "C": 0.0}

    judge = Judge(FakeBackend(tiny_judge.tokenizer, table), progress=False)
    reward = JudgePairwiseReward(judge, pairing="all", reference_column="ref")
    rewards = reward(prompts=["q"] * 3, completions=["a", "b", "c"], ref=["ref"] * 3)
    expected = [(0.9 + 0.8 + 0.1) / 3, (0.1 + 0.3 + 0.6) / 3, (0.2 + 0.7 + 0.5) / 3]
    assert rewards == pytest.approx(expected, abs=1e-9)  # the reference alone would give [0.1, 0.6, 0.5]
    anchor = JudgePairwiseReward(judge, pairing="anchor", reference_column="ref")
    assert anchor(prompts=["q"] * 3, completions=["a", "b", "c"], ref=["ref"] * 3) == pytest.approx([0.1, 0.6, 0.5])


E2E = json.loads((Path(__file__).parent / "golden/e2e_dd6f47c.json").read_text())
QUESTIONS = {"Name a colour.": ["Red.", "Dark blue.", "It is green, like grass.", "Yellow, the colour of the sun."],
             "What is two plus two?": ["Two plus two is four.", "Four.", "It is 4, since 2 + 2 = 4."],
             "Capital of France?": ["Paris."]}  # fmt: skip


def test_end_to_end_on_the_tiny_judge_matches_dd6f47c(tiny_model_dir):
    """verl's functions and the server's three rewards on the tiny judge in fp32 give dd6f47c's rewards to 1e-5
    (batches are composed differently now), except the lone sample: 0.5, its peers' mean, where dd6f47c gave its
    pointwise score rescaled (the change #28 names)."""
    from fastapi.testclient import TestClient

    from reward import load_judge
    from trainers.server import create_app
    from trainers.verl import compute_score, compute_score_batch

    # dd6f47c's pointwise rewards read the score slot (the anchored reading is the default since #32)
    judge = load_judge(tiny_model_dir, device="cpu", dtype="float32", progress=False, score_reading="direct")
    prompts = [q for q, a in QUESTIONS.items() for _ in a]
    answers = [x for a in QUESTIONS.values() for x in a]
    got = {"verl_batch": compute_score_batch(None, answers, None, [{"question": q} for q in prompts], judge=judge)}
    got["verl_reference"] = [compute_score(None, a, "Blue.", {"question": q}, judge=judge, reward="reference")
                             for q, a in zip(prompts, answers)]  # fmt: skip
    got["verl_score"] = [compute_score(None, a, None, {"question": q}, judge=judge) for q, a in zip(prompts, answers)]
    for kind in ("pairwise", "reference", "score"):
        with TestClient(create_app(judge, reward=kind)) as client:
            got[f"server_{kind}"] = []
            for q, a in QUESTIONS.items():
                body = {"query": [q + x for x in a], "prompts": [q] * len(a), "labels": ["Blue."] * len(a)}
                r = client.post("/get_reward", json=body)
                assert r.status_code == 200, r.text
                got[f"server_{kind}"].append(r.json()["rewards"])
    want = json.loads(json.dumps(E2E))
    want["verl_batch"][-1] = want["server_pairwise"][-1][0] = 0.5  # the lone "Paris."
    assert got.keys() == want.keys()
    flat = lambda xs: [x for v in xs for x in (v if isinstance(v, list) else [v])]  # noqa: E731
    for key in want:
        assert flat(got[key]) == pytest.approx(flat(want[key]), abs=1e-5, rel=0), key
    spread = max(want["verl_batch"][:4]) - min(want["verl_batch"][:4])
    assert spread > 1e-3  # the tolerance is well below the differences between the rewards


def test_consistent_pairs_count_peer_pairs_only(fake_judge):
    """`GroupResult.consistent` (the servers' judge/consistent_pairs, out of `pairs`) counts the peer pairs whose
    two orders agreed: a completion's comparisons with the reference (`pairing="all"` with references: both)
    are not peer pairs, even where their orders agree."""
    from reward.group_judging import Group, GroupJudge

    def biased(prompt):  # the reference loses in both orders; two peers: the first slot wins (orders disagree)
        a, b = answer_in_slot(prompt, "A"), answer_in_slot(prompt, "B")
        if "REF" in (a, b):
            return {"A": 0.1, "B": 0.8, "C": 0.1} if a == "REF" else {"A": 0.8, "B": 0.1, "C": 0.1}
        return {"A": 0.8, "B": 0.1, "C": 0.1}

    (result,) = GroupJudge(pairing="all")(fake_judge(rule=biased), [Group("q", ["x", "y"], ["REF", "REF"])])
    assert len(result.against_reference) == 2 and all(p.order_consistent for p in result.against_reference.values())
    assert result.pairs == 1 and result.consistent == 0


def write_swiss_golden(path=SWISS):
    """The `swiss/*` and `*/bradley_terry` golden values from the engine as it is (see the module docstring)."""
    import tempfile

    from conftest import build_tiny_model_dir

    from reward import load_judge

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_judge(build_tiny_model_dir(tmp), device="cpu", progress=False).tokenizer
    values = {f"swiss/{name}": golden_values(tokenizer, "swiss", name) for name in AGGREGATES}
    for pairing in ("all", "adaptive", "circular", "anchor"):
        values[f"{pairing}/bradley_terry"] = golden_values(tokenizer, pairing, "bradley_terry")
    path.write_text(json.dumps(values, indent=1) + "\n")


if __name__ == "__main__":
    write_swiss_golden()
