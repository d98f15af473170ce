"""The reward server under hostile input and shutdown (issue 16): one test per finding."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import FakeBackend
from fastapi.testclient import TestClient
from live_server import live

from reward import Judge
from trainers import JudgeScoreReward
from trainers.server import create_app, hosts_for

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
    """The judge's score of any (innocent) row: not the failure stand-in, the scale's midpoint 3.0. (The fake
    judges here are read at the slot, `score_reading="direct"`: an anchored read of their constant verdicts is 3.0.)"""
    (score,) = JudgeScoreReward(judge_of())(prompts=["q"], completions=["innocent"])
    assert abs(score - 3.0) > 0.5
    return score


@pytest.fixture
def judge_of(tiny_judge):
    return lambda delay=0.0: Judge(
        Backend(tiny_judge.tokenizer, delay), progress=False, batch_size=64, score_reading="direct"
    )


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


class Gated(Backend):
    """Records each judge call's responses; call number `hold` (from 0) and later ones wait until the test opens
    `gate`, so the test sees the server mid-call by events, never by how fast this machine runs."""

    def __init__(self, tokenizer, hold=0):
        super().__init__(tokenizer)
        self.hold, self.calls = hold, []
        self.entered, self.gate = threading.Event(), threading.Event()

    def label_logprobs(self, prompts, labels):
        self.calls.append([p.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End", 1)[0]
                           for p in prompts])  # fmt: skip
        if len(self.calls) - 1 >= self.hold:
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().label_logprobs(prompts, labels)


async def health_when(http, url, ready, timeout=30.0):
    """/health once `ready(health)` holds (polled; the deadline only bounds a broken server)."""
    deadline = time.monotonic() + timeout
    while True:
        health = (await http.get(f"{url}/health")).json()
        if ready(health) or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.02)


def test_a_huge_request_does_not_starve_a_small_one_and_is_dropped_when_abandoned(tiny_judge, judge_of):
    """Fair batching: a 1-row request sent while a 600-row one is being judged goes into the very next judge
    call; the big request's client then goes away and the rest of its rows are never judged."""
    backend = Gated(tiny_judge.tokenizer)  # the first call waits: the small request arrives while it is in flight
    judge = Judge(backend, progress=False, batch_size=64, score_reading="direct")
    app = create_app(judge, reward="score", max_batch=32, max_request_items=1000)
    big = {"rows": [{"prompt": "q", "response": f"answer {i}"} for i in range(600)]}

    async def scenario(url):
        async with httpx.AsyncClient(timeout=60) as http:
            hog = asyncio.ensure_future(http.post(f"{url}/score", json=big))
            await asyncio.to_thread(backend.entered.wait, 30)
            queued = (await http.get(f"{url}/health")).json()["queued_items"]
            one = {"rows": [{"prompt": "q", "response": "short"}]}
            small = asyncio.ensure_future(http.post(f"{url}/score", json=one))
            await health_when(http, url, lambda h: h["queued_items"] == queued + 1)
            backend.entered.clear()
            backend.hold = 2  # from the third call on, wait again: the hog cannot finish before it is dropped
            first, backend.gate = backend.gate, threading.Event()
            first.set()
            small = await asyncio.wait_for(small, 20)  # an unfair batcher leaves it behind the gated third call
            await asyncio.to_thread(backend.entered.wait, 30)
            hog.cancel()  # the client goes away
            await health_when(http, url, lambda h: h["abandoned_items"] > 0)
            backend.gate.set()
            return small, await health_when(http, url, lambda h: h["queued_items"] == 0)

    with live(app) as url:
        small, health = asyncio.run(scenario(url))
    assert small.status_code == 200 and small.json()["rows"][0]["score"] == pytest.approx(expected(judge_of))
    assert "short" in backend.calls[1]  # one share of the next batch, not after the 600 rows
    assert health["queued_items"] == 0 and health["abandoned_items"] >= 600 - 3 * 32
    assert sum(len(c) for c in backend.calls) <= 3 * 32  # nothing of the hog judged after it went away


def test_a_request_over_the_item_cap_is_413(judge_of):
    with TestClient(create_app(judge_of(), max_request_items=3)) as c:
        rows = [{"prompt": "q", "response": f"a{i}"} for i in range(4)]
        r = c.post("/score", json={"rows": rows})
        assert r.status_code == 413 and "at most 3" in r.text and "split" in r.text
        assert c.post("/score", json={"rows": rows[:3]}).status_code == 200  # the cap itself is allowed


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
        until = time.monotonic() + 60  # a bound, so a server that never judges fails the test instead of hanging it
        while httpx.get(f"{url}/health", timeout=5).json()["judge_calls"] < 1:  # judging has begun
            assert time.monotonic() < until, "judging never began"
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        server.wait(timeout=30)
        assert time.monotonic() - start < 15  # the 5 s grace, then the call in flight (64 rows) ends
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_an_abandoned_request_frees_its_queue_places_at_once(tiny_judge):
    """While a call is in flight, the places of a gone client's rows not yet judged are free again."""
    backend = Gated(tiny_judge.tokenizer)
    judge = Judge(backend, progress=False, batch_size=64, score_reading="direct")
    app = create_app(judge, reward="score", max_batch=40, max_queue=500, max_request_items=500)
    rows = {"rows": [{"prompt": "q", "response": f"answer {i}"} for i in range(400)]}

    async def scenario(url):
        async with httpx.AsyncClient(timeout=30) as http:
            post = asyncio.ensure_future(http.post(f"{url}/score", json=rows))
            await asyncio.to_thread(backend.entered.wait, 30)  # the first 40-row call is being judged
            post.cancel()  # the client goes away
            during = await health_when(http, url, lambda h: h["abandoned_items"] > 0)
            backend.gate.set()
            return during

    with live(app) as url:
        during = asyncio.run(scenario(url))
    assert during["queued_items"] == 40 and during["abandoned_items"] == 360 and during["judge_calls"] == 1


# -- issue 32 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value",
    [("--max_batch", "0"), ("--pairing", "bogus"), ("--aggregate", "bogus"), ("--scale", "1"), ("--port", "70000"),
     ("--max_request_items", "-5"), ("--max_queue", "0"), ("--max_wait_s", "nan"), ("--group_timeout", "inf")],
)  # fmt: skip
def test_bad_serve_flags_are_one_line_and_exit_2_before_the_judge_loads(tmp_path, capsys, flag, value):
    """`--max_batch 0` hung the first request and /health and ignored SIGTERM; the others ended in tracebacks after
    the judge loaded, or made every request 413. The judge here cannot load: the flag's error must come first."""
    from trainers.cli import main

    (tmp_path / "no-judge").mkdir()
    assert main(["serve", "--judge", str(tmp_path / "no-judge"), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag.lstrip("-") in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content_type", ["application/JSON", "Application/Json; charset=utf-8", None, "text/plain"])
@pytest.mark.parametrize(
    "body", [b'{"rows": [{"prompt": "q", "response": "a\\ud800"}]}', b'{"query": ["q a"], "prompts": [NaN]}']
)
def test_the_json_hygiene_check_ignores_how_the_content_type_is_spelled(judge_of, content_type, body):
    """FastAPI reads `application/JSON` (and a body without a Content-Type) as JSON; the check skipped them."""
    with TestClient(create_app(judge_of(), reward="score")) as c:
        path = "/get_reward" if b"query" in body else "/score"
        r = c.post(path, content=body, headers={"Content-Type": content_type} if content_type else {})
        assert r.status_code == 422, r.text
        assert c.get("/health").json()["requests"] == 0  # never reached the judge


def test_a_token_with_non_ascii_characters_matches(judge_of):
    with TestClient(create_app(judge_of(), token="pässwörd-🙂")) as c:
        row = {"rows": [{"prompt": "q", "response": "a"}]}
        ok = c.post("/score", json=row, headers={"Authorization": "Bearer pässwörd-🙂".encode()})
        assert ok.status_code == 200
        for wrong in ("Bearer pässwörd-🙃".encode(), "Bearer pässwörd-🙂".encode()[:-1], b"Bearer passwoerd"):
            assert c.post("/score", json=row, headers={"Authorization": wrong}).status_code == 401


def test_openapi_states_the_non_empty_lists_and_texts(judge_of):
    with TestClient(create_app(judge_of())) as c:
        schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert schema["RewardRequest"]["properties"]["query"]["minItems"] == 1
    assert schema["RewardRequest"]["properties"]["prompts"]["minItems"] == 1
    assert schema["ScoreRequest"]["properties"]["rows"]["minItems"] == 1
    assert schema["CompareRequest"]["properties"]["rows"]["minItems"] == 1
    text = schema["ScoreRow"]["properties"]["response"]["anyOf"]
    assert {"type": "string", "minLength": 1} in text and any(t.get("minItems") == 1 for t in text)


def start_serve(model_dir, *flags):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "trainers.cli", "serve", "--judge", model_dir, "--judge_device",
                               "cpu", "--port", str(port), *flags],
                              env=os.environ | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, port, url
        except httpx.TransportError:
            time.sleep(0.3)


def test_slow_headers_are_cut_off_and_sigterm_answers_held_samples_503_at_once(tiny_model_dir):
    """Connections that never finish their headers are closed after --header_timeout_s (they held sockets, up to
    the file limit, for good); on SIGTERM a sample held for its group gets 503 at once (it got a 500 after the 5 s
    grace)."""
    import threading

    server, port, url = start_serve(tiny_model_dir, "--group_size", "4", "--group_timeout", "60",
                                    "--header_timeout_s", "1")  # fmt: skip
    try:
        slow = []
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")  # and never more
            s.settimeout(6)
            slow.append(s)
        closed = 0
        for s in slow:
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                pass
            s.close()
        assert closed == len(slow)
        # Only the headers are timed: a body that arrives after --header_timeout_s is still read and answered.
        body = b'{"query": [], "prompts": []}'
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])  # fmt: skip
            time.sleep(2)
            s.sendall(body[5:])
            s.settimeout(10)
            assert s.recv(64).startswith(b"HTTP/1.1 400")  # "empty request", not a closed connection
        limits = Path(f"/proc/{server.pid}/limits")
        if limits.exists():  # the soft open-file limit raised towards the hard one
            soft, hard = next(line for line in limits.read_text().splitlines() if "open files" in line).split()[3:5]
            assert int(soft) >= min(65536, int(hard) if hard.isdigit() else 65536)
        answer = {}

        def held():
            body = {"query": ["What is two plus two? It is four."], "prompts": ["What is two plus two?"]}
            r = httpx.post(f"{url}/get_reward", json=body, timeout=30)
            answer.update(status=r.status_code, text=r.text, at=time.monotonic())

        thread = threading.Thread(target=held, daemon=True)
        thread.start()
        until = time.monotonic() + 60
        while httpx.get(f"{url}/health", timeout=5).json()["waiting_in_groups"] < 1:
            assert time.monotonic() < until, "the sample was never held"
            time.sleep(0.1)
        time.sleep(1.5)  # held past --header_timeout_s: only unfinished headers are timed, not a request in flight
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        thread.join(20)
        assert answer["status"] == 503 and "shutting down" in answer["text"]
        assert answer["at"] - sent < 3  # not after the 5 s grace
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_default_body_and_item_limits(judge_of):
    """The defaults of `trustreward serve`: 1024 items in one request, a body of 16 MiB (JSON whitespace pads the
    body here, so only its size changes)."""
    with TestClient(create_app(judge_of())) as c:
        rows = [{"prompt": "q", "response": "a"}] * 1025
        over = c.post("/score", json={"rows": rows})
        assert over.status_code == 413 and "at most 1024" in over.text
        ok = c.post("/score", json={"rows": rows[:1024]})
        assert ok.status_code == 200 and len(ok.json()["rows"]) == 1024
        body = b'{"rows": [{"prompt": "q", "response": "a"}]}'
        headers = {"Content-Type": "application/json"}
        fits = c.post("/score", content=body + b" " * ((16 << 20) - len(body)), headers=headers)
        assert fits.status_code == 200 and fits.json()["rows"][0]["score"] == pytest.approx(expected(judge_of))
        big = c.post("/score", content=body + b" " * ((16 << 20) - len(body) + 1), headers=headers)
        assert big.status_code == 413 and str(16 << 20) in big.text
