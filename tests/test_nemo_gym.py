"""The reward server as a NeMo Gym resources server (`/verify`, the `genrm_compare` cohort shape).

nemo-gym does not install here: every release requires Python >= 3.12 (0.5 to 0.7.0: >= 3.13.14) and this project
runs on 3.11. Forced in with `--ignore-requires-python`, importing its verify models
(`resources_servers.genrm_compare.app`) needs ray (78 MB, read for its version at import), scipy, hydra-core,
omegaconf, openai, aiohttp, yappi, pydot and more; even `nemo_gym.openai_utils` pulls aiohttp, hydra-core and
orjson (tried 2026-12-06). So `FakeAgent` follows
nemo-gym 0.7.0's own code: `responses_api_agents/simple_agent/app.py` (`run`: the model's Responses API JSON
merged into the run request, `verify_payload = body.model_dump() | {"response": model_response_json}`, POST
`/verify`, `raise_for_status`, the JSON answer validated as a verify response), the collector's repeats
(`gym eval run --num-repeats N`: each carries `_ng_task_index` and `_ng_rollout_index`, all in flight together),
and the answer is checked against `nemo_gym/base_resources_server.py`'s `BaseVerifyResponse` fields and
`resources_servers/genrm_compare/app.py`'s `GenRMCompareVerifyResponse` (echoed coordinates). `run` first seeds
a session on the resources server (`/seed_session`, the run request as body); the agent's `aggregate_metrics`
proxies the collector's verify responses to the resources server's `/aggregate_metrics`.

Expected rewards are computed by hand from the fake judge's preferences (see tests/test_slime.py).
"""

import asyncio

import httpx
import pytest
from live_server import QUALITY, by_quality, finite, live, points_by_quality
from test_slime import ANSWERS, hand_pairwise

from trainers import JudgeScoreReward
from trainers.server import create_app


def model_response(answer: str, k: int) -> dict:
    """A policy's Responses API object as NeMo Gym's model servers return it: a reasoning item, then the answer."""
    return {
        "id": f"resp_{k}", "object": "response", "created_at": 0.0, "model": "policy", "status": "completed",
        "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
        "output": [
            {"id": f"rs_{k}", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Let me think."}]},
            {"id": f"msg_{k}", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": answer, "annotations": []}]},
        ],
    }  # fmt: skip


class FakeAgent:
    """`simple_agent`'s `run` against a resources server, for the collector's repeats of each task."""

    def __init__(self, url):
        self.url = url

    async def run(self, http, body: dict, answer: str, k: int) -> dict:
        seed_session_response = await http.post(f"{self.url}/seed_session", json=body)
        seed_session_response.raise_for_status()
        verify_payload = body | {"response": model_response(answer, k)}
        verify_response = await http.post(f"{self.url}/verify", json=verify_payload)
        verify_response.raise_for_status()
        return verify_response.json()

    async def collect(self, tasks):
        """`tasks`: (run request, answers); one rollout per answer, every rollout in flight at once."""
        async with httpx.AsyncClient(timeout=30) as http:
            runs = [self.run(http, body | {"_ng_rollout_index": k}, answer, 10 * t + k)
                    for t, (body, answers) in enumerate(tasks) for k, answer in enumerate(answers)]  # fmt: skip
            return await asyncio.gather(*runs)


def run_request(t: int, question: str, **task) -> dict:
    """A task row as the collector posts it (`responses_create_params` + private coordinates + task fields)."""
    messages = [{"role": "user", "content": question}] if t % 2 == 0 else \
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}]  # fmt: skip
    return {"responses_create_params": {"input": messages, "temperature": 1.0}, "_ng_task_index": t, **task}


def check_verify_response(answer: dict, body: dict, text: str, masked: bool = False):
    """`BaseVerifyResponse` / `GenRMCompareVerifyResponse` fields: the request echoed, a finite float reward."""
    assert answer["responses_create_params"] == body["responses_create_params"]
    assert answer["_ng_task_index"] == body["_ng_task_index"] and answer["_ng_rollout_index"] in range(4)
    assert answer["response"]["output"][1]["content"][0]["text"] == text
    assert isinstance(answer["reward"], float) and finite([answer["reward"]])
    assert answer["mask_sample"] is masked
    assert answer["failure_kind"] == ("judge_failed" if masked else None)


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=points_by_quality)


def test_verify_cohorts_get_their_pairwise_rewards(judge):
    """Two tasks x 4 repeats, all in flight: each cohort compared in all pairs; reasoning is not judged (the
    fake judge fails on text it does not know, so judging "Let me think." would mask the rollout)."""
    app = create_app(judge, group_size=4, group_timeout=30)
    tasks = [(run_request(t, q), answers) for t, (q, answers) in enumerate(ANSWERS.items())]
    with live(app) as url:
        answers = asyncio.run(FakeAgent(url).collect(tasks))
        health = httpx.get(f"{url}/health").json()
    for (body, texts), got in zip(tasks, [answers[:4], answers[4:]]):
        want = hand_pairwise(texts)
        for k, (text, answer) in enumerate(zip(texts, got)):
            check_verify_response(answer, body, text)
            assert answer["_ng_rollout_index"] == k
            assert answer["reward"] == pytest.approx(want[text], abs=1e-6)
            assert answer["judge_group_size"] == 4 and answer["judge_lone"] == answer["judge_incomplete"] == 0
    assert health["groups"] == 2 and health["failures"] == 0
    with live(app) as url:  # the collector's metrics at the end of the run, as simple_agent proxies them
        metrics = httpx.post(f"{url}/aggregate_metrics", json={"verify_responses": answers}).json()
    assert metrics["agent_metrics"] == {"mean/reward": pytest.approx(0.5), "num_rollouts": 8, "num_masked": 0}


def test_verify_failed_rollout_is_masked_with_a_number(fake_judge):
    """An empty answer has no judgement: NeMo Gym's masked failure, reward the on_failure stand-in (here -1)."""
    judge = fake_judge(rule=by_quality, points=points_by_quality)
    app = create_app(judge, group_size=3, on_failure="value:-1")
    texts = ["Red.", "It is green, like grass.", ""]
    body = run_request(0, "Name a colour.", instance_config={"split": "train"})
    with live(app) as url:
        answers = asyncio.run(FakeAgent(url).collect([(body, texts)]))
    want = hand_pairwise(texts[:2])
    for text, answer in zip(texts[:2], answers[:2]):
        check_verify_response(answer, body, text)
        assert answer["reward"] == pytest.approx(want[text], abs=1e-6)
    check_verify_response(answers[2], body, "", masked=True)
    assert answers[2]["reward"] == -1.0 and answers[2]["failure_reason"]
    assert answers[2]["instance_config"] == {"split": "train", "mask_sample": True}
    assert answers[2]["_ng_failure_class"] == "judge_failed"
    with live(app) as url:  # the masked rollout is left out of the reward metrics
        metrics = httpx.post(f"{url}/aggregate_metrics", json={"verify_responses": answers}).json()
    assert metrics["agent_metrics"]["mean/reward"] == pytest.approx(sum(want.values()) / 2)
    assert metrics["agent_metrics"]["num_masked"] == 1


def test_verify_against_expected_answer(judge):
    app = create_app(judge, reward="reference")
    body = run_request(1, "Name a colour.", expected_answer="Dark blue.")
    texts = ["Red.", "Yellow, the colour of the sun."]
    with live(app) as url:
        answers = asyncio.run(FakeAgent(url).collect([(body, texts)]))
    for text, answer in zip(texts, answers):
        check_verify_response(answer, body, text)
        a, r = QUALITY[text], QUALITY["Dark blue."]
        assert answer["reward"] == pytest.approx(0.9 * a / (a + r) + 0.05, abs=1e-6)


def test_verify_lone_rollout_gets_its_pointwise_score(judge):
    """num_rollouts_per_prompt = 1 (no --group_size): the judge's expected score, rescaled to [0, 1]."""
    body = run_request(0, "Name a colour.")
    with live(create_app(judge)) as url:
        (answer,) = asyncio.run(FakeAgent(url).collect([(body, ["Dark blue."])]))
    (score,) = JudgeScoreReward(judge)(prompts=["Name a colour."], completions=["Dark blue."])
    check_verify_response(answer, body, "Dark blue.")
    assert answer["reward"] == pytest.approx((score - 1) / 4, abs=1e-6) and answer["judge_lone"] == 1


def test_verify_rejects_a_request_without_a_response(judge):
    with live(create_app(judge)) as url:
        missing = httpx.post(f"{url}/verify", json=run_request(0, "Name a colour."))
        empty = httpx.post(f"{url}/verify", json={"responses_create_params": {"input": []},
                                                  "response": model_response("Red.", 0)})  # fmt: skip
    assert missing.status_code == 422 and "response" in missing.text
    assert empty.status_code == 400 and "prompt" in empty.text


async def genrm_strategy_compare(url, conversation_history, response_objs, principle=None):
    """`GenRMStrategy.compare` (resources_servers/genrm_compare/comparison_strategies.py): one POST /compare."""
    payload = {"conversation_history": conversation_history, "response_objs": response_objs}
    if principle is not None:
        payload["principle"] = principle
    async with httpx.AsyncClient(timeout=30) as http:
        res = await http.post(f"{url}/compare", json=payload)
        res.raise_for_status()
        result = res.json()
    return result.get("rewards", [0.0] * len(response_objs)), result.get("metrics", {})


def test_genrm_compare_batch_shares_compare_with_rows(judge):
    """The batch body is judged as one group, rewards in request order; `trustreward compare` rows still work."""
    texts = ANSWERS["What is two plus two?"]
    history = [{"role": "user", "content": "What is two plus two?"}]
    with live(create_app(judge, group_size=8)) as url:  # never held: a batch is its own group
        rewards, metrics = asyncio.run(
            genrm_strategy_compare(url, history, [model_response(t, k) for k, t in enumerate(texts)], "Be brief.")
        )
        rows = httpx.post(f"{url}/compare", json={"rows": [{"prompt": "Name a colour.", "response_a": "Red.",
                                                            "response_b": "Dark blue."}]}).json()  # fmt: skip
        neither = httpx.post(f"{url}/compare", json={"conversation_history": history})
    want = hand_pairwise(texts)
    assert rewards == pytest.approx([want[t] for t in texts], abs=1e-6)
    assert metrics["judge/compared_pairs"] == 6 and metrics["judge/failures"] == 0
    assert "response_a" in rows["rows"][0] and neither.status_code == 422


def test_verify_cohort_short_of_its_size_is_judged_at_the_timeout(judge):
    """3 of 4 rollouts arrive: after --group_timeout they are compared among themselves, flagged incomplete."""
    texts = ANSWERS["Name a colour."][:3]
    body = run_request(0, "Name a colour.")
    with live(create_app(judge, group_size=4, group_timeout=0.5)) as url:
        answers = asyncio.run(FakeAgent(url).collect([(body, texts)]))
    want = hand_pairwise(texts)
    for text, answer in zip(texts, answers):
        check_verify_response(answer, body, text)
        assert answer["reward"] == pytest.approx(want[text], abs=1e-6)
        assert answer["judge_incomplete"] == 1 and answer["judge_group_size"] == 3
