"""The reward server's front door, options and holding, checked where a one-line wrong version passed the suite.

Each test here fails on a break planted in `trainers/server/` that every other server test passed (issue 27's
survey, tallied in docs/install.md), and passes on the real code. All in-process (TestClient, a fake judge): no
port, no sleeps, no timing thresholds.
"""

import threading
import time

import pytest
from conftest import FakeBackend, answer_in_slot
from fastapi.testclient import TestClient

from reward import Judge
from trainers.server import create_app, hosts_for, response_of

POINTS = {"1": 0.1, "2": 0.1, "3": 0.2, "4": 0.4, "5": 0.2}  # expected score 3.5 (slot read)
ROW = {"rows": [{"prompt": "q", "response": "a"}]}


@pytest.fixture
def judge(tiny_judge):
    return Judge(FakeBackend(tiny_judge.tokenizer, lambda p: {"A": 0.5, "B": 0.3, "C": 0.2}, POINTS), progress=False,
                 score_reading="direct")  # fmt: skip


def wait_for(client, ready, timeout=30.0):
    """/health once `ready(health)` holds (polled; the deadline only bounds a broken server)."""
    deadline = time.monotonic() + timeout
    while not ready(health := client.get("/health").json()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return health


# -- guard ---------------------------------------------------------------------------------------------------------
def test_loopback_hosts_include_ipv6_with_and_without_a_port(judge):
    """A server bound to loopback answers `Host: [::1]:8000` (what a client of http://[::1]:8000 sends) and
    `[::1]`; a name-with-port parse that ignores the brackets refused them."""
    with TestClient(create_app(judge, allowed_hosts=hosts_for("127.0.0.1", None))) as c:
        for host in ("[::1]:8000", "[::1]", "127.0.0.1", "localhost:1234"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("[::2]:8000", "127.0.0.2", "localhost.evil:80"):
            assert c.get("/health", headers={"Host": host}).status_code == 400, host


def test_a_lone_surrogate_in_a_key_is_422_too(judge):
    """The JSON check walks keys as well as values: a row with a key no tokenizer takes never reaches the judge."""
    with TestClient(create_app(judge, reward="score")) as c:
        body = b'{"rows": [{"prompt": "q", "response": "a", "\\ud800": 1}]}'
        r = c.post("/score", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "surrogate" in r.text
        assert c.get("/health").json()["requests"] == 0


def test_a_star_in_the_allowed_hosts_answers_any_host(judge):
    """`serve --allowed_hosts '*'` on a loopback bind: any Host is answered (the flag's documented meaning)."""
    assert hosts_for("127.0.0.1", "*") == ["*"]
    with TestClient(create_app(judge, allowed_hosts=hosts_for("127.0.0.1", "*"))) as c:
        assert c.get("/health", headers={"Host": "judge.internal:8000"}).status_code == 200


# -- the app ---------------------------------------------------------------------------------------------------------
def test_stacked_end_tokens_are_all_stripped_whatever_their_order():
    """A query may end with several end tokens (EOS then the chat turn's end, with newlines between): all go, in
    any order, not only those after the last one checked."""
    stops = ["</s>", "<|im_end|>", "<|endoftext|>"]
    for end in ("</s><|im_end|>", "<|im_end|>\n</s>", "<|endoftext|><|im_end|></s>\n", "</s></s>"):
        assert response_of("P: hi A: yes" + end, "P: hi A:", stops) == " yes", end


def test_labels_of_another_length_than_the_query_are_400(judge):
    """More labels than samples is as wrong as fewer: which label belongs to which sample is unknown."""
    with TestClient(create_app(judge, reward="reference")) as c:
        for labels in (["ref a", "ref b"], []):
            body = {"query": ["q a"], "prompts": ["q"], "labels": labels}
            r = c.post("/get_reward", json=body)
            assert r.status_code == 400 and f"labels has {len(labels)} items" in r.text, labels
        assert c.get("/health").json()["requests"] == 0


def test_a_late_score_gets_the_midpoint_of_its_own_scale(tiny_judge):
    """`--reward score --scale 10`: a sample not judged by the deadline gets 5.5, the 1-10 scale's midpoint (not
    the 1-5 scale's 3.0). The judge is held until the answer is in, so the deadline always comes first."""

    class Held(FakeBackend):
        gate = threading.Event()

        def label_logprobs(self, prompts, labels):
            assert self.gate.wait(60), "the test never opened the gate"
            return super().label_logprobs(prompts, labels)

    backend = Held(tiny_judge.tokenizer, points={"10": 1.0})
    judge = Judge(backend, progress=False, score_reading="direct")
    with TestClient(create_app(judge, reward="score", scale=10, deadline_s=0.2)) as c:
        try:
            r = c.post("/get_reward", json={"query": ["q a"], "prompts": ["q"]})
        finally:
            backend.gate.set()
        health = c.get("/health").json()
    assert r.status_code == 200 and r.json()["rewards"] == [5.5] and r.json()["extra_logs"]["judge/failures"] == 1
    assert health["late"] == 1


def test_a_huge_sample_keeps_its_head_and_tail_for_the_judge(tiny_judge):
    """A response over the server's character cap (16 x the judge's context) is cut in the middle on arrival:
    the judge still sees its end (where an answer's conclusion is), as the judge's own cut keeps it."""
    backend = FakeBackend(tiny_judge.tokenizer, lambda p: {"A": 0.5, "B": 0.3, "C": 0.2})
    backend.max_length = 1024  # cap: 16384 characters
    judge = Judge(backend, progress=False)
    huge = "HEAD " + "word " * 4000 + "TAIL"
    with TestClient(create_app(judge)) as c:
        r = c.post("/get_reward", json={"query": ["q " + huge, "q short"], "prompts": ["q", "q"]})
    assert r.status_code == 200 and r.json()["extra_logs"]["judge/compared_pairs"] == 1
    shown = [answer_in_slot(p, "A") for p in backend.prompts] + [answer_in_slot(p, "B") for p in backend.prompts]
    cut = [text for text in shown if text.lstrip().startswith("HEAD")]
    assert len(cut) == 2 and all(text.endswith("TAIL") for text in cut)


def test_held_bytes_may_reach_the_cap_exactly(judge):
    """`max_held_bytes`: samples whose bytes fill the cap exactly are held (beyond it: 503)."""
    size = len("q") + len("aaaa")  # prompt + response bytes per sample (ASCII)
    with TestClient(create_app(judge, group_size=2, group_timeout=30.0, max_held_bytes=2 * size)) as c:
        first = threading.Thread(target=lambda: c.post("/get_reward", json={"query": ["qaaaa"], "prompts": ["q"]}))
        first.start()
        wait_for(c, lambda h: h["waiting_in_groups"] == 1)
        second = c.post("/get_reward", json={"query": ["qbbbb"], "prompts": ["q"]})
        first.join(30)
    assert second.status_code == 200 and second.json()["extra_logs"]["judge/group_size"] == 2


def test_a_group_timeout_equal_to_the_deadline_is_refused(judge):
    """A group must time out before the deadline answers its samples (else every incomplete group is late)."""
    with pytest.raises(ValueError, match="group_timeout"):
        create_app(judge, group_size=2, group_timeout=5.0, deadline_s=5.0)
    create_app(judge, group_size=2, group_timeout=4.5, deadline_s=5.0)


# -- serve's flags ---------------------------------------------------------------------------------------------------
def test_every_loopback_bind_checks_the_host():
    """A server bound to IPv6 loopback is as exposed to DNS rebinding as one on 127.0.0.1: it answers loopback
    names only; a non-loopback bind answers any Host unless told otherwise."""
    for bind in ("127.0.0.1", "localhost", "::1"):
        assert hosts_for(bind, None) == ["127.0.0.1", "localhost", "[::1]", "::1"], bind
    assert hosts_for("0.0.0.0", None) is None and hosts_for("::", None) is None


def test_serve_flags_at_their_edges():
    """Port 0 (any free port) and 65535 are ports; a header timeout of 0 s would close every connection."""
    from trainers.args import UserError
    from trainers.server import ServeArguments

    for port in (0, 65535):
        assert ServeArguments(port=port).port == port
    for bad in ({"port": 65536}, {"port": -1}, {"header_timeout_s": 0.0}, {"header_timeout_s": float("inf")}):
        with pytest.raises(UserError, match=next(iter(bad))):
            ServeArguments(**bad)


def test_serve_refuses_an_unset_token_variable_before_loading_the_judge(tmp_path, monkeypatch):
    """`--token_env NAME` with NAME unset must not start a server without a token (nor load the judge first)."""
    from trainers.server import main

    monkeypatch.delenv("TRUSTREWARD_TEST_UNSET_TOKEN", raising=False)
    (tmp_path / "no-judge").mkdir()
    with pytest.raises(SystemExit, match="TRUSTREWARD_TEST_UNSET_TOKEN is not set"):
        main(["--judge", str(tmp_path / "no-judge"), "--token_env", "TRUSTREWARD_TEST_UNSET_TOKEN"])


def test_serve_flags_reach_the_running_app(judge, monkeypatch):
    """`trustreward serve`'s flags reach the app it serves: the app handed to uvicorn is checked over HTTP (the
    judge's loading and uvicorn's run are replaced; nothing listens on a port)."""
    import uvicorn

    from trainers.judge_args import JudgeArguments
    from trainers.server import main

    judge.backend.points = {"10": 1.0}  # a rating only a 1-10 scale can read
    seen = {}
    monkeypatch.setattr(JudgeArguments, "load", lambda self: judge)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.setdefault("config", self.config))
    monkeypatch.setenv("TRUSTREWARD_TEST_TOKEN", "s3cret")
    argv = ["--judge", "unused", "--reward", "score", "--scale", "10", "--max_request_items", "2",
            "--token_env", "TRUSTREWARD_TEST_TOKEN", "--host", "0.0.0.0", "--header_timeout_s", "3"]  # fmt: skip
    assert main(argv) == 0
    config = seen["config"]
    assert config.host == "0.0.0.0"
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(config.app, base_url="http://judge.internal") as c:  # 0.0.0.0: any Host
        body = {"query": ["q a", "q b"], "prompts": ["q", "q"]}
        assert c.post("/get_reward", json=body).status_code == 401
        r = c.post("/get_reward", json=body, headers=auth)
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx([10.0, 10.0])
        three = c.post("/get_reward", json={"query": ["q a"] * 3, "prompts": ["q"] * 3}, headers=auth)
        assert three.status_code == 413 and "at most 2" in three.text


# -- fair share between clients --------------------------------------------------------------------------------------
def test_each_waiting_request_gets_a_share_of_the_next_judge_call(tiny_judge):
    """Fair batching, in-process: a 12-row request's first 4 rows are being judged (max_batch 4) when two 1-row
    requests arrive; the next call takes one row from each of the three requests (4 // 3), not the big one's next
    four. Every row is judged exactly once and each answer holds its own rows' scores. The order of events is
    fixed by a gate the first judge call waits on, never by how fast this machine runs."""

    class Gated(FakeBackend):
        def __init__(self, tokenizer):
            super().__init__(tokenizer, points=lambda p: {str(1 + len(answer(p)) % 5): 1.0})
            self.calls, self.entered, self.gate = [], threading.Event(), threading.Event()

        def label_logprobs(self, prompts, labels):
            self.calls.append([answer(p) for p in prompts])
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
            return super().label_logprobs(prompts, labels)

    def answer(prompt):
        return prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End", 1)[0]

    backend = Gated(tiny_judge.tokenizer)
    judge = Judge(backend, progress=False, score_reading="direct")
    big = [{"prompt": "q", "response": "big" + "x" * i} for i in range(12)]
    out = {}

    def post(name, rows):
        out[name] = c.post("/score", json={"rows": rows}).json()["rows"]

    with TestClient(create_app(judge, reward="score", max_batch=4, max_wait_s=0.0)) as c:
        threads = [threading.Thread(target=post, args=("big", big))]
        threads[0].start()
        assert backend.entered.wait(30)  # the first call (the big request's first 4 rows) is in flight
        for name in ("small-b", "small-c"):
            threads.append(threading.Thread(target=post, args=(name, [{"prompt": "q", "response": name}])))
            threads[-1].start()
        wait_for(c, lambda h: h["queued_items"] == 14)  # both small requests are queued behind the call
        backend.gate.set()
        for t in threads:
            t.join(60)
    assert backend.calls[0] == [r["response"] for r in big[:4]]
    assert sorted(backend.calls[1]) == sorted(["small-b", "small-c", big[4]["response"]])
    everything = [r["response"] for r in big] + ["small-b", "small-c"]
    assert sorted(a for call in backend.calls for a in call) == sorted(everything)  # each row judged once
    for name, rows in out.items():
        assert [r["score"] for r in rows] == [1 + len(r["response"]) % 5 for r in rows], name
