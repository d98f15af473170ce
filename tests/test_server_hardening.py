"""The reward server under hostile input and shutdown (issue 16): one test per finding."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
from conftest import FakeBackend  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from live_server import live  # noqa: E402

from reward import Judge  # noqa: E402
from trainers import JudgeScoreReward  # noqa: E402
from trainers.server import create_app, hosts_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POINTS = {"1": 0.1, "2": 0.1, "3": 0.2, "4": 0.4, "5": 0.2}  # expected score 3.5


class Backend(FakeBackend):
    """Raises for any batch holding "POISON" (as a tokenizer does on a bad row); `delay` seconds per prompt."""

    def __init__(self, tokenizer, delay=0.0):
        super().__init__(tokenizer, rule=lambda p: {"A": 0.5, "B": 0.3, "C": 0.2}, points=POINTS)
        self.delay = delay

    def label_logprobs(self, prompts, labels):
        if any("POISON" in p for p in prompts):
            raise ValueError("cannot tokenise this row")
        time.sleep(self.delay * len(prompts))
        return super().label_logprobs(prompts, labels)


def expected(judge_of):
    """The judge's score of any (innocent) row: not the failure stand-in, the scale's midpoint 3.0."""
    (score,) = JudgeScoreReward(judge_of())(prompts=["q"], completions=["innocent"])
    assert abs(score - 3.0) > 0.5
    return score


@pytest.fixture
def judge_of(tiny_judge):
    return lambda delay=0.0: Judge(Backend(tiny_judge.tokenizer, delay), progress=False, batch_size=64)


def test_a_poisoned_row_fails_alone_not_its_batch_neighbours(judge_of):
    app = create_app(judge_of(), reward="score", max_wait_s=0.5)
    rows = [{"prompt": "q", "response": "innocent"}, {"prompt": "q", "response": "POISON"}]

    async def together(url):
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(
                http.post(f"{url}/score", json={"rows": rows[:1]}),
                http.post(f"{url}/score", json={"rows": rows}),
                http.post(f"{url}/get_reward", json={"query": ["q innocent"], "prompts": ["q"]}),
                http.post(f"{url}/get_reward", json={"query": ["q POISON"], "prompts": ["q"]}),
            )

    with live(app) as url:
        innocent, mixed, reward, poisoned = asyncio.run(together(url))
        health = httpx.get(f"{url}/health").json()
    assert health["judge_calls"] >= 2  # rows and rewards, each batched; the Judge isolates the poisoned prompt
    assert innocent.status_code == 200 and innocent.json()["rows"][0]["score"] == pytest.approx(expected(judge_of))
    good, bad = mixed.json()["rows"]
    assert good["score"] == pytest.approx(expected(judge_of)) and good["judge_error"] is None
    assert bad["score"] is None and "cannot tokenise" in bad["judge_error"]
    assert (
        reward.json()["rewards"] == pytest.approx([expected(judge_of)])
        and reward.json()["extra_logs"]["judge/failures"] == 0
    )
    assert poisoned.json()["rewards"] == [3.0] and poisoned.json()["extra_logs"]["judge/failures"] == 1


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"rows": [{"prompt": "q", "response": "a", "weight": NaN}]}', "not a JSON number"),
        (b'{"rows": [{"prompt": "q", "response": "a", "weight": -Infinity}]}', "not a JSON number"),
        (b'{"rows": [{"prompt": "q", "response": "a\\ud800"}]}', "surrogate"),
        (b'{"query": ["\\udfff"], "prompts": ["q"]}', "surrogate"),
    ],
)
def test_nan_infinity_and_lone_surrogates_are_422(judge_of, body, reason):
    with TestClient(create_app(judge_of(), reward="score")) as c:
        path = "/get_reward" if b"query" in body else "/score"
        r = c.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and reason in r.text
        assert c.get("/health").json()["requests"] == 0  # never reached the judge


def test_the_body_limit_holds_for_chunked_bodies(judge_of):
    def chunks():  # no Content-Length: the server must count as it reads
        yield b'{"rows": [{"prompt": "q", "response": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}]}'

    with live(create_app(judge_of(), max_body_bytes=8192)) as url:
        r = httpx.post(f"{url}/score", content=chunks(), headers={"Content-Type": "application/json"})
        ok = httpx.post(f"{url}/score", json={"rows": [{"prompt": "q", "response": "a"}]})
    assert r.status_code == 413 and "8192" in r.text
    assert ok.status_code == 200


def test_a_huge_request_does_not_starve_a_small_one_and_is_dropped_when_abandoned(judge_of):
    """Fair batching: a 1-row request sent after a 600-row one is answered long before it; the big request's
    client then goes away and the rest of its rows are never judged."""
    app = create_app(judge_of(delay=0.004), reward="score", max_batch=32, max_request_items=1000)
    big = {"rows": [{"prompt": "q", "response": f"answer {i}"} for i in range(600)]}

    async def scenario(url):
        async with httpx.AsyncClient(timeout=60) as http:
            start = time.perf_counter()
            hog = asyncio.ensure_future(http.post(f"{url}/score", json=big, timeout=1.5))
            await asyncio.sleep(0.2)
            small = await http.post(f"{url}/score", json={"rows": [{"prompt": "q", "response": "short"}]})
            small_s = time.perf_counter() - start
            with pytest.raises(httpx.TimeoutException):
                await hog  # the client gives up after 1.5 s
            await asyncio.sleep(1.0)
            return small, small_s, (await http.get(f"{url}/health")).json()

    with live(app) as url:
        small, small_s, health = asyncio.run(scenario(url))
    assert small.status_code == 200 and small.json()["rows"][0]["score"] == pytest.approx(expected(judge_of))
    assert small_s < 1.2  # 600 rows take 2.4 s of judge time; the small one waited for one share of a batch
    assert health["abandoned_items"] > 100 and health["queued_items"] == 0


def test_a_request_over_the_item_cap_is_413(judge_of):
    with TestClient(create_app(judge_of(), max_request_items=3)) as c:
        rows = [{"prompt": "q", "response": f"a{i}"} for i in range(4)]
        r = c.post("/score", json={"rows": rows})
        assert r.status_code == 413 and "at most 3" in r.text and "split" in r.text


def test_auth_details(judge_of):
    with TestClient(create_app(judge_of(), token="s3cret")) as c:
        row = {"rows": [{"prompt": "q", "response": "a"}]}
        for header in ("bearer s3cret", "BEARER s3cret", "Bearer s3cret"):  # RFC 7235: case-insensitive scheme
            assert c.post("/score", json=row, headers={"Authorization": header}).status_code == 200, header
        for header in ("Bearer s3cre", "Bearer s3cret-and-more", "Basic s3cret", "s3cret", ""):
            r = c.post("/score", json=row, headers={"Authorization": header})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), header


def test_host_check_against_dns_rebinding(judge_of):
    with TestClient(
        create_app(judge_of(), allowed_hosts=hosts_for("127.0.0.1", None)), base_url="http://127.0.0.1:8000"
    ) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        r = c.get("/health", headers={"Host": "evil.example:8000"})
        assert r.status_code == 400 and "not allowed" in r.text
    assert hosts_for("0.0.0.0", None) is None and hosts_for("0.0.0.0", "judge.internal, 10.0.0.5") == [
        "judge.internal",
        "10.0.0.5",
    ]


def test_openapi_types_rows_and_documents_errors_and_the_bearer_scheme(judge_of):
    with TestClient(create_app(judge_of(), token="t")) as c:
        schema = c.get("/openapi.json", headers={"Authorization": "Bearer t"}).json()
    rows = schema["components"]["schemas"]
    assert set(rows["ScoreRow"]["required"]) == {"prompt", "response"}
    assert set(rows["CompareRow"]["required"]) == {"prompt", "response_a", "response_b"}
    for path in ("/score", "/compare", "/get_reward"):
        post = schema["paths"][path]["post"]
        assert {"400", "401", "413", "422", "503"} <= set(post["responses"]), path
        assert post["security"] == [{"HTTPBearer": []}]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_sigterm_mid_request_stops_judging_within_seconds(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "trainers.cli", "serve", "--judge", tiny_model_dir,
                               "--judge_device", "cpu", "--port", str(port), "--max_request_items", "4000",
                               "--judge_batch_size", "8"],
                              env=os.environ | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        rows = [{"prompt": "What is two plus two?", "response": f"It is four, answer {i}."} for i in range(4000)]

        def send():
            try:
                httpx.post(f"{url}/score", json={"rows": rows}, timeout=120)
            except httpx.HTTPError:
                pass

        import threading

        threading.Thread(target=send, daemon=True).start()
        while httpx.get(f"{url}/health", timeout=5).json()["judge_calls"] < 1:  # judging has begun
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        server.wait(timeout=30)
        assert time.monotonic() - start < 15  # the 5 s grace, then the call in flight (64 rows) ends
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_an_abandoned_request_frees_its_queue_places_at_once(judge_of):
    """While a call is in flight (2 s), the places of a gone client's rows not yet judged are free again."""
    app = create_app(judge_of(delay=0.05), reward="score", max_batch=40, max_queue=500, max_request_items=500)
    rows = {"rows": [{"prompt": "q", "response": f"answer {i}"} for i in range(400)]}

    async def scenario(url):
        async with httpx.AsyncClient(timeout=30) as http:
            with pytest.raises(httpx.TimeoutException):
                await http.post(f"{url}/score", json=rows, timeout=0.5)
            await asyncio.sleep(0.6)  # the first 40-row call is still being judged
            return (await http.get(f"{url}/health")).json()

    with live(app) as url:
        during = asyncio.run(scenario(url))
    assert during["queued_items"] == 40 and during["abandoned_items"] == 360 and during["judge_calls"] == 1
