"""The reward server: OpenRLHF's /get_reward, /score, /compare, batching, and bad requests (fake judge)."""

import math
import threading
import time

import pytest
from conftest import answer_in_slot
from fastapi.testclient import TestClient
from live_server import QUALITY, by_quality

from trainers import JudgePairwiseReward, JudgeScoreReward
from trainers.server import create_app, response_of


def longer_wins(prompt):
    a, b = len(answer_in_slot(prompt, "A")), len(answer_in_slot(prompt, "B"))
    if a == b:
        return {"A": 0.2, "B": 0.2, "C": 0.6}
    return {"A": 0.7, "B": 0.2, "C": 0.1} if a > b else {"A": 0.2, "B": 0.7, "C": 0.1}


@pytest.fixture
def client(fake_judge):
    def make(**options):
        judge = fake_judge(rule=longer_wins, points={"1": 0.1, "2": 0.2, "3": 0.4, "4": 0.2, "5": 0.1})
        return TestClient(create_app(judge, **options)), judge

    return make


def test_get_reward_openrlhf_protocol(client):
    c, judge = client()
    with c:
        prompt = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        answers = ["Red.", "Dark blue.", "It is green, like grass."]
        query = [prompt + a + "<|im_end|>" for a in answers]
        r = c.post("/get_reward", json={"query": query, "prompts": [prompt] * 3, "labels": [None] * 3})
        assert r.status_code == 200, r.text
        body = r.json()
        want = JudgePairwiseReward(judge)(prompts=[prompt] * 3, completions=answers)
        assert body["rewards"] == pytest.approx(want) and body["scores"] == body["rewards"]
        logs = body["extra_logs"]
        assert logs["judge/failures"] == 0 and logs["judge/compared_pairs"] == 3 == logs["judge/consistent_pairs"]
        assert c.get("/health").json()["status"] == "ok"


def test_a_failed_score_gets_the_mean_of_its_own_prompts_samples(client):
    """on_failure="group_mean" under `--reward score`: a request holding two prompts' samples fills a failure with
    the mean of its own prompt's judged rewards (2, from 1 and 3), not of the whole request (3, with the 5)."""
    c, judge = client(reward="score", on_failure="group_mean")
    # The rating is the answer's length; 7 characters is off the 1-5 scale: no mass on a valid rating, a failure.
    judge.backend.points = lambda p: {str(len(p.split("Answer]\n", 1)[1].split("\n[The End", 1)[0])): 1.0}
    with c:
        one, two = (f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in ("Q one?", "Q two?"))
        samples = [(one, "a"), (two, "ddddd"), (one, "bbb"), (one, "ccccccc")]
        body = {"query": [p + a + "<|im_end|>" for p, a in samples], "prompts": [p for p, _ in samples]}
        out = c.post("/get_reward", json=body).json()
        health = c.get("/health").json()
    assert out["rewards"] == pytest.approx([1.0, 5.0, 3.0, 2.0]) and out["extra_logs"]["judge/failures"] == 1
    assert health["failures"] == 1 and health["items"] == 4  # the server's running count, beside the request's


def test_score_and_compare_rows(client):
    c, judge = client()
    # The rating is the answer's length (1 or 2): rows swapped or judged on another scale would show.
    judge.backend.points = lambda p: {str(len(p.split("Answer]\n", 1)[1].split("\n[The End", 1)[0])): 1.0}
    with c:
        rows = [{"id": 1, "prompt": "q", "response": "a"}, {"id": 2, "prompt": "q", "response": "bb"}]
        out = c.post("/score", json={"rows": rows}).json()["rows"]
        assert [r["id"] for r in out] == [1, 2] and [r["score"] for r in out] == pytest.approx([1.0, 2.0])
        pairs = [{"prompt": "q", "response_a": "a", "response_b": "bbb"}]
        (row,) = c.post("/compare", json={"rows": pairs}).json()["rows"]
        assert row["verdict"] == "b" and row["p_b"] == pytest.approx(0.7)


def test_bad_requests_are_4xx_with_a_reason(client):
    c, _ = client(token="s3cret", max_body_bytes=2000)
    auth = {"Authorization": "Bearer s3cret"}
    with c:
        assert c.post("/get_reward", json={"query": ["a"], "prompts": ["a"]}).status_code == 401
        cases = [
            ({"query": ["a"], "prompts": []}, 400, "prompts has 0"),
            ({"query": [], "prompts": []}, 400, "empty request"),
            ({"query": "a", "prompts": ["a"]}, 422, "list"),
            ({"query": ["a"], "prompts": ["a"], "extra": 1}, 422, "extra"),
        ]
        for body, status, reason in cases:
            r = c.post("/get_reward", json=body, headers=auth)
            assert r.status_code == status and reason in r.text.lower(), (body, r.text)
        r = c.post("/get_reward", content=b"not json", headers=auth | {"Content-Type": "application/json"})
        assert r.status_code == 422
        r = c.post("/score", json={"rows": [{"prompt": "q"}]}, headers=auth)  # a missing column: the schema's 422
        assert r.status_code == 422 and "response" in r.text
        assert c.post("/score", json={"rows": [{"prompt": "q", "response": " "}]}, headers=auth).status_code == 400
        assert (
            c.post("/score", json={"rows": [{"prompt": "q", "response": "x" * 3000}]}, headers=auth).status_code == 413
        )
        assert c.get("/health", headers=auth).json()["status"] == "ok"  # still up


def test_requests_arriving_together_share_a_judge_call_and_each_gets_its_own_rewards(fake_judge):
    """8 concurrent requests batched into fewer judge calls; each answer is its own response's score (the judge
    reads answers by their exact text, so a mix-up, an offset or judging the whole query shows). The first call
    waits until every request is queued (events, not a time window), so the rest share exactly one more call."""
    from conftest import FakeBackend

    from reward import Judge

    class Gated(FakeBackend):
        gate = threading.Event()

        def label_logprobs(self, prompts, labels):
            assert self.gate.wait(60), "the test never opened the gate"
            return super().label_logprobs(prompts, labels)

    def points(prompt):
        text = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
        weights = {str(k): math.exp(QUALITY[text] * k / 3) for k in range(1, 6)}
        return {k: w / sum(weights.values()) for k, w in weights.items()}

    backend = Gated(fake_judge().tokenizer, by_quality, points)
    judge = Judge(backend, progress=False, batch_size=64, score_reading="direct")  # `points` by the exact text
    c = TestClient(create_app(judge, reward="score", max_wait_s=0.0))
    prompt = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    answers = list(QUALITY)
    with c:
        results = {}

        def send(i):
            query = [prompt + answers[i] + "<|im_end|>", prompt + answers[-1 - i] + "<|im_end|>"]
            results[i] = c.post("/get_reward", json={"query": query, "prompts": [prompt] * 2}).json()["rewards"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while c.get("/health").json()["queued_items"] < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.gate.set()
        for t in threads:
            t.join()
        health = c.get("/health").json()
    want = dict(zip(answers, JudgeScoreReward(judge)(prompts=[prompt] * 8, completions=answers)))
    assert len(set(want.values())) == 8
    for i in range(8):
        assert results[i] == pytest.approx([want[answers[i]], want[answers[-1 - i]]], abs=1e-9)
    assert health["requests"] == 8 and health["judge_calls"] == 2  # the first request's call, then all the rest


def test_queue_full_is_503_and_a_request_larger_than_the_queue_413(fake_judge):
    """503 says "retry later"; a request that can never fit says 413 (retrying cannot help)."""
    import asyncio

    import httpx
    from live_server import live

    judge = fake_judge(rule=longer_wins, points={"1": 0.1, "2": 0.2, "3": 0.4, "4": 0.2, "5": 0.1})
    app = create_app(judge, group_size=4, group_timeout=1.0, max_queue=2)

    async def scenario(url):
        async with httpx.AsyncClient(timeout=30) as http:
            held = asyncio.ensure_future(http.post(f"{url}/get_reward", json={"query": ["qa"], "prompts": ["q"]}))
            await asyncio.sleep(0.3)  # one sample waits in its group: 1 of 2 queue places taken
            full = await http.post(f"{url}/get_reward", json={"query": ["pa", "pb"], "prompts": ["p", "p"]})
            large = await http.post(f"{url}/get_reward", json={"query": ["a", "b", "c"], "prompts": ["p"] * 3})
            return full, large, await held

    with live(app) as url:
        full, large, held = asyncio.run(scenario(url))
    assert full.status_code == 503 and "full" in full.text
    assert large.status_code == 413 and "at most 2" in large.text
    assert held.status_code == 200 and held.json()["extra_logs"]["judge/lone"] == 1


def test_response_of_strips_prompt_and_end_tokens():
    assert response_of("P: hi A: yes<|im_end|>\n", "P: hi A:", ["<|im_end|>"]) == " yes"
    assert response_of("other", "P:", ["</s>"]) == "other"
