"""`--reward reference`: each sample judged against its own reference answer (OpenRLHF's `labels`, verl's
`ground_truth`), for PPO without groups. The fake judge's verdicts are known in closed form, so every reward is
checked against a hand-computed value: P(sample wins) + P(tie) / 2 = 0.9 q_s / (q_s + q_r) + 0.05."""

import asyncio
from functools import partial

import httpx
import numpy as np
import pytest
from live_server import QUALITY, by_quality, finite, live, points_by_quality
from test_openrlhf import agent, experience_info, rollouts  # noqa: F401 (the fixture)
from test_server_groups import ANSWERS, LOG_KEYS, samples, templated
from test_verl import batch, rewards_of, verl  # noqa: F401 (the fixture)

from trainers.server import create_app
from trainers.verl import compute_score

REFERENCE = {"Name a colour.": "Dark blue.", "What is two plus two?": "Four."}


def by_hand(response: str, reference: str) -> float:
    q_s, q_r = QUALITY[response], QUALITY[reference]
    return 0.9 * q_s / (q_s + q_r) + 0.05  # both orders give the same split, so merged it is the same


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=points_by_quality)


def post_each(url, items, labels):
    async def run():
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(*[
                http.post(f"{url}/get_reward", json={"query": [q], "prompts": [p], "labels": [label]})
                for (p, q, _), label in zip(items, labels)
            ])  # fmt: skip

    return asyncio.run(run())


def position_biased(prompt):
    """`by_quality` plus 0.1 for whichever answer is shown first: only both orders merged undo it."""
    probs = by_quality(prompt)
    return {"A": probs["A"] + 0.1, "B": probs["B"] - 0.1, "C": probs["C"]}


def test_each_sample_is_judged_against_its_own_label(fake_judge):
    judge = fake_judge(rule=position_biased, points=points_by_quality)
    items = samples(judge.tokenizer)
    questions = [q for _ in range(4) for q in ANSWERS]
    labels = [REFERENCE[q] for q in questions]
    labels[3] = None  # a sample without a reference: a failure, the on_failure stand-in
    with live(create_app(judge, reward="reference", on_failure="value:-1", max_wait_s=0.2)) as url:
        answers = post_each(url, items, labels)
        no_labels = httpx.post(f"{url}/get_reward", json={"query": [items[0][1]], "prompts": [items[0][0]]})
        health = httpx.get(f"{url}/health").json()
    assert all(a.status_code == 200 for a in answers)
    consistent = set()
    for k, ((_, _, response), label, answer) in enumerate(zip(items, labels, answers)):
        out = answer.json()
        assert set(out["extra_logs"]) == LOG_KEYS and finite(out["rewards"])
        if label is None:
            assert out["rewards"] == [-1.0] and out["extra_logs"]["judge/failures"] == 1.0
        else:
            assert out["rewards"] == [pytest.approx(by_hand(response, label), abs=1e-6)], k
            assert out["extra_logs"]["judge/compared_pairs"] == 1.0 and out["extra_logs"]["judge/failures"] == 0
            # Whether the sample's two orders agreed: the position bias flips close pairs (green vs dark blue)
            (pref,) = judge.compare([questions[k]], [response], [label])
            assert out["extra_logs"]["judge/consistent_pairs"] == float(pref.order_consistent), k
            consistent.add(pref.order_consistent)
    assert consistent == {True, False}
    assert no_labels.status_code == 400 and "labels" in no_labels.json()["detail"]
    assert health["judge_calls"] < len(items)  # samples of different prompts share judge calls (no groups)


def test_openrlhf_executor_sends_labels_and_gets_rewards_against_them(agent, judge):  # noqa: F811
    """OpenRLHF's own `SingleTurnAgentExecutor.execute(prompt, label, ...)` posts the label with each sample."""
    tok = judge.tokenizer
    by_prompt = {templated(tok, q): REFERENCE[q] for q in ANSWERS}
    executor = agent.SingleTurnAgentExecutor

    class Labelled(executor):  # execute() takes the label from the dataset; here from the prompt
        async def execute(self, prompt, label, *args, **kwargs):
            return await super().execute(prompt, by_prompt[prompt], *args, **kwargs)

    agent.SingleTurnAgentExecutor = Labelled
    try:
        with live(create_app(judge, reward="reference")) as url:
            order, outputs = rollouts(agent, tok, f"{url}/get_reward")
    finally:
        agent.SingleTurnAgentExecutor = executor
    answers = {q: list(a) for q, a in ANSWERS.items()}
    for prompt, out in zip(order, outputs):
        question = next(q for q in ANSWERS if templated(tok, q) == prompt)
        response = answers[question].pop(0)  # the fake engine answers each prompt's samples in order
        assert experience_info(out)["reward"].shape == (1, 1)
        assert out["reward"] == [pytest.approx(by_hand(response, REFERENCE[question]), abs=1e-6)]


def test_verl_ground_truth_is_the_reference_locally_and_through_the_server(verl, judge):  # noqa: F811
    _, NaiveRewardManager, DataProto, _ = verl
    data, rows, lengths = batch(DataProto, judge.tokenizer, n=2)
    data.non_tensor_batch["reward_model"] = np.array([{"ground_truth": REFERENCE[q]} for q, _ in rows], dtype=object)
    want = [by_hand(a, REFERENCE[q]) for q, a in rows]
    local = partial(compute_score, judge=judge, reward="reference")
    assert rewards_of(NaiveRewardManager(judge.tokenizer, 0, compute_score=local)(data), lengths) == pytest.approx(
        want, abs=1e-6
    )
    with live(create_app(judge, reward="reference")) as url:
        served = partial(compute_score, url=url)
        got = rewards_of(NaiveRewardManager(judge.tokenizer, 0, compute_score=served)(data), lengths)
    assert got == pytest.approx(want, abs=1e-6)
    # No reference: a failure, the neutral 0.5 alone (never a 0), or the value asked for.
    assert compute_score("s", "Red.", None, {"question": "Name a colour."}, judge=judge, reward="reference") == 0.5
    with pytest.raises(ValueError, match="reward must be"):
        compute_score("s", "Red.", "x", {"question": "q"}, judge=judge, reward="pairwise")
