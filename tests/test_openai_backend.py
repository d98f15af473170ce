"""The OpenAI-compatible backend against a loopback server that serves a transformers model's exact top-k
logprobs, and through a proxy that injects faults."""

import asyncio
import math
import pickle

import httpx
import pytest
from openai_fake import MAX_TOP_K, FaultProxy, fake_openai_server

from reward import Judge
from reward.backends.hf import HFBackend
from reward.backends.openai import OpenAIBackend, RetryableError, choices, top_logprobs
from trainers import JudgeScoreReward

PROMPTS = ["What is two plus two? Score: [", "Paris is in France, a b c. Score: [", "Which is better? Verdict: ["]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    server = fake_openai_server(model, tokenizer, max_top_k=None)  # lists the whole vocabulary: exactness tests
    yield server, HFBackend(model, tokenizer), tokenizer
    server.close()


def test_chained_labels_match_the_local_backend(served):
    server, local, tokenizer = served
    remote = OpenAIBackend(server.url, "tiny", tokenizer, top_logprobs=len(tokenizer))  # the whole vocabulary
    labels = ["A", "B", "C", "1", "4", "10", "47", "100"]
    got, want = remote.label_logprobs(PROMPTS, labels), local.label_logprobs(PROMPTS, labels)
    for g, w in zip(got, want):
        for label in labels:
            assert g[label] == pytest.approx(w[label], abs=1e-4)


def test_labels_outside_the_top_k_are_missing_mass(served):
    # Top-50 of the tiny judge's 600 tokens after this prompt hold "1" and "9" (ranks 20 and 14), not 2-8: those
    # get no probability (missing mass, not an error), the listed ones exactly P(label) times the listed part of
    # their end mass (the top-50 after the label), a lower bound of their value.
    server, local, tokenizer = served

    def top50(text):
        body = {"model": "tiny", "prompt": text, "max_tokens": 1, "logprobs": 50}
        return httpx.post(f"{server.url}/completions", json=body).json()["choices"][0]["logprobs"]["top_logprobs"][0]

    labels = [str(s) for s in range(1, 10)]
    topk = OpenAIBackend(server.url, "tiny", tokenizer, top_logprobs=50, exact="off")  # today's top-k read
    got = topk.label_logprobs(PROMPTS[:1], labels)[0]
    exact = local.label_logprobs(PROMPTS[:1], labels)[0]
    listed = top50(PROMPTS[0])
    assert {"1", "9"} <= set(listed) and not set(listed) & set("2345678")
    for label in labels:
        if label in listed:
            ends = [lp for t, lp in top50(PROMPTS[0] + label).items() if not t[:1].isalnum()]
            assert got[label] == pytest.approx(listed[label] + math.log(sum(math.exp(lp) for lp in ends)), abs=1e-6)
            assert got[label] <= exact[label] + 1e-6
        else:
            assert got[label] == -math.inf
    assert not topk.exact_reads


def test_response_shapes():
    first = {"token": "A", "logprob": -0.5, "top_logprobs": [{"token": "A", "logprob": -0.5}]}
    assert top_logprobs({"index": 0, "logprobs": {"content": [first]}}) == {"A": -0.5}
    with pytest.raises(RetryableError, match="no top logprobs"):
        top_logprobs({"text": "5"})
    with pytest.raises(RetryableError, match="expected 2 choices"):
        choices({"choices": [{"index": 0, "text": ""}]}, 2)
    with pytest.raises(RetryableError, match="expected 2 choices"):
        choices({"choices": [{"index": 0, "text": ""}, {"index": 0, "text": ""}]}, 2)


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "nologprobs", "timeout", "drop"])
def test_each_fault_is_retried_to_the_same_answer(served, fault):
    server, local, tokenizer = served
    proxy = FaultProxy(server.url, timeout_s=1.5)
    try:
        clean = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer))
        clean.label_logprobs(PROMPTS, ["A", "B", "C"])
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer), timeout=0.5, max_retries=3)
        proxy.faults, seen = [fault, fault], proxy.seen  # the next two requests fail, then it recovers
        got = remote.label_logprobs(PROMPTS, ["A", "B", "C"])  # batched: all prompts in one request
        want = local.label_logprobs(PROMPTS, ["A", "B", "C"])
        assert got == [pytest.approx(w, abs=1e-4) for w in want] and remote.failures == 0
        # Both faults were met and retried (a slow machine may add a timed-out retry: not an exact count).
        assert proxy.faults == [] and remote.requests == proxy.seen - seen >= clean.requests + 2
    finally:
        proxy.close()


def test_a_batch_that_keeps_failing_is_split_until_only_its_bad_item_fails(served, tiny_judge):
    # A server that rejects a whole batch for one prompt (HTTP 400, as for a prompt over its context): the batch
    # is split and retried smaller, so only that item fails, counted; the others get their exact judgement.
    server, local, tokenizer = served
    proxy = FaultProxy(server.url)
    try:
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer), max_retries=1)
        judge, answers = Judge(remote, progress=False), ["Four.", "POISON here.", "It is 4.", "Two and two: four."]
        proxy.poison = "POISON"
        got = judge.score(["What is two plus two?"] * 4, answers)
        want = Judge(local, progress=False).score(["What is two plus two?"] * 4, answers)
        assert [g.error is None for g in got] == [True, False, True, True] and remote.failures == 1
        for g, w in zip(got, want):
            if g.error is None:
                assert g.expected == pytest.approx(w.expected, abs=1e-4)
        assert proxy.seen > 2  # the 4-prompt batch, then halves, then the single bad one
    finally:
        proxy.close()


def test_a_dead_server_costs_rewards_never_the_run(served, tiny_judge):
    server, _, tokenizer = served
    proxy = FaultProxy(server.url)
    try:
        proxy.always = "500"
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer), max_retries=1)
        reward = JudgeScoreReward(Judge(remote, progress=False, score_reading="direct"))  # the slot read
        log = {}
        rewards = reward(prompts=["q1", "q2"], completions=["a", "b"], log_metric=lambda k, v: log.update({k: v}))
        assert rewards == [None, None] and log["judge/failures"] == 2 and remote.failures == 2
        proxy.always = None  # the server is back: the next batch is judged
        assert None not in reward(prompts=["q1"], completions=["a"])
    finally:
        proxy.close()


def test_chat_endpoint_reads_the_same_judgements(served):
    # Chat requests carry messages, the slot pre-filled as an unfinished assistant turn; the server renders them.
    server, local, tokenizer = served
    remote = OpenAIBackend(server.url, "tiny", tokenizer, endpoint="chat", top_logprobs=len(tokenizer))
    want, got = Judge(local, progress=False), Judge(remote, progress=False)
    questions, answers = ["What is two plus two?", "Name a city in France."], ["Four.", "Paris, of course."]
    for w, g in zip(want.score(questions, answers, scale=10), got.score(questions, answers, scale=10)):
        assert g.expected == pytest.approx(w.expected, abs=1e-4)
        assert g.probs == pytest.approx(w.probs, abs=1e-5)
    for w, g in zip(want.compare(questions, answers, answers[::-1]), got.compare(questions, answers, answers[::-1])):
        assert (g.p_a, g.p_b, g.p_tie) == pytest.approx((w.p_a, w.p_b, w.p_tie), abs=1e-4)
    # Chat servers take one conversation per request: a read each, sent concurrently.
    assert got.backend.requests == len(server.prompts[-got.backend.requests :]) and got.backend.requests >= 2 * 7
    assert set(server.prompts[-got.backend.requests :]) == {1}
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIBackend(server.url, "tiny", tokenizer, endpoint="responses")


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_ratings_missing_from_the_top_k_are_failed_judgements(served, endpoint):
    # A valid response without any rating token is not retried: it is a judgement with no valid mass, which the
    # reward reports as None and counts, never as a score.
    server, _, tokenizer = served
    proxy = FaultProxy(server.url)
    try:
        proxy.always = "noratings"
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, endpoint=endpoint, top_logprobs=len(tokenizer))
        reward = JudgeScoreReward(Judge(remote, progress=False, score_reading="direct"))  # the slot read
        log = {}
        rewards = reward(prompts=["q1", "q2"], completions=["a", "b"], log_metric=lambda k, v: log.update({k: v}))
        assert rewards == [None, None] and log["judge/failures"] == 2
        assert remote.failures == 0  # the server answered: nothing to retry
    finally:
        proxy.close()


def test_concurrency_rate_limit_and_api_key(tiny_model_dir, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    server = fake_openai_server(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, delay_s=0.2, max_top_k=None
    )
    monkeypatch.setenv("JUDGE_KEY", "sk-test-secret")
    try:
        # At most 2 requests in flight, however many wait (one prompt per request, so that many do).
        remote = OpenAIBackend(
            server.url, "tiny", tokenizer, concurrency=2, prompts_per_request=1, api_key_env="JUDGE_KEY"
        )
        remote.label_logprobs(PROMPTS * 2, ["A", "B"])
        assert server.max_in_flight == 2 and server.authorization == "Bearer sk-test-secret"
        # At most 10 requests per second: sent 0.1 s apart (the server sees them with some scheduling jitter).
        server.arrivals.clear()
        paced = OpenAIBackend(
            server.url, "tiny", tokenizer, concurrency=8, prompts_per_request=1, requests_per_second=10
        )
        paced.label_logprobs(PROMPTS, ["A", "B", "C"])
        # A lower bound only (load can stretch the gaps, never shrink the pacing); no per-gap timing gate.
        assert len(server.arrivals) == paced.requests >= 3
        assert server.arrivals[-1] - server.arrivals[0] >= 0.095 * (len(server.arrivals) - 1)
        # A failing server: the warning names the failure, never the key.
        proxy = FaultProxy(server.url)
        proxy.always = "500"
        with caplog.at_level("WARNING"):
            OpenAIBackend(proxy.url, "tiny", tokenizer, max_retries=0, api_key_env="JUDGE_KEY").label_logprobs(
                PROMPTS[:1], ["A"]
            )
        proxy.close()
        assert "HTTP 500" in caplog.text and "sk-test-secret" not in caplog.text
    finally:
        server.close()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_rationale_mode_reads_the_slot_after_the_same_critique(served, endpoint):
    # The server writes the critique (greedy, stopped at the slot's marker), then the slot is read after it.
    server, local, tokenizer = served
    remote = OpenAIBackend(server.url, "tiny", tokenizer, endpoint=endpoint, top_logprobs=len(tokenizer))
    want = Judge(local, progress=False, rationale_tokens=12)
    got = Judge(remote, progress=False, rationale_tokens=12)
    questions, answers = ["What is two plus two?", "Name a city in France."], ["Four.", "Paris, of course."]
    for w, g in zip(want.score(questions, answers, mode="rationale"), got.score(questions, answers, mode="rationale")):
        assert g.error is None and g.probs == pytest.approx(w.probs, abs=1e-5)
    pairs = (questions, answers, answers[::-1])
    for w, g in zip(want.compare(*pairs, mode="rationale"), got.compare(*pairs, mode="rationale")):
        assert g.error is None and (g.p_a, g.p_b, g.p_tie) == pytest.approx((w.p_a, w.p_b, w.p_tie), abs=1e-4)
    prompt = PROMPTS[0] if endpoint == "completions" else [{"role": "user", "content": PROMPTS[0]}]
    ((text, logprob, n),) = remote.generate([prompt], 8, stop=["Verdict"])
    assert 0 < n <= 8 and logprob < 0 and "Verdict" not in text


QUESTIONS = ["What is two plus two?", "Name a city in France.", "Is the sky blue?", "What is 47 plus 53?"] * 8
ANSWERS = ["Four.", "Paris, of course.", "Yes, on a clear day.", "It is 100."] * 8


def test_batched_requests_judge_exactly_as_single_ones(served):
    # Many prompts per /v1/completions request (and label ends read in batched rounds) give the very numbers of one
    # prompt per request, in a few requests: <= 0.25 per scored item, <= 0.5 per compared pair.
    server, _, tokenizer = served
    # (The top-k read: tests/test_served_exact.py counts the exact reads' requests; exact="auto" adds its probe.)
    judges = {size: Judge(OpenAIBackend(server.url, "tiny", tokenizer, top_logprobs=len(tokenizer), exact="off",
                                        prompts_per_request=size), progress=False) for size in (1, 64)}  # fmt: skip
    scores = {size: j.score(QUESTIONS, ANSWERS, scale=10) for size, j in judges.items()}
    requests = {size: j.backend.requests for size, j in judges.items()}
    assert [s.probs for s in scores[64]] == [s.probs for s in scores[1]] and scores[64][0].error is None
    assert requests[64] <= 0.25 * len(QUESTIONS) < requests[1]
    pairs = (QUESTIONS[:8], ANSWERS[:8], ANSWERS[8:16][::-1])
    prefs = {size: j.compare(*pairs) for size, j in judges.items()}
    compared = {size: j.backend.requests - requests[size] for size, j in judges.items()}
    assert [(p.p_a, p.p_b, p.p_tie) for p in prefs[64]] == [(p.p_a, p.p_b, p.p_tie) for p in prefs[1]]
    assert compared[64] <= 0.5 * 8 < compared[1]
    assert max(server.prompts[-compared[64] :]) > 1  # the batched judge really sent lists


def test_choices_are_read_by_index_and_the_pool_is_kept(tiny_model_dir):
    # A server that lists the choices last to first: the client puts them back by `index`. Calls after the first
    # reuse the connections (at most `concurrency` ever opened), where a client per call opens new ones each time.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    server = fake_openai_server(model, tokenizer, reverse=True, max_top_k=None)
    try:
        remote = OpenAIBackend(server.url, "tiny", tokenizer, top_logprobs=len(tokenizer), concurrency=2)
        want = HFBackend(model, tokenizer).label_logprobs(PROMPTS, ["A", "B", "47"])
        for _ in range(3):
            got = remote.label_logprobs(PROMPTS, ["A", "B", "47"])
            assert got == [pytest.approx(w, abs=1e-4) for w in want]
        assert len(server.peers) <= 2 and remote.requests >= 3

        async def inside_a_running_loop():  # an async reward calls the judge from its own event loop
            return remote.label_logprobs(PROMPTS, ["A", "B", "47"])

        assert asyncio.run(inside_a_running_loop()) == got
        copy = pickle.loads(pickle.dumps(remote))  # the loop and its connections stay behind; a copy starts its own
        assert copy.label_logprobs(PROMPTS, ["A", "B", "47"]) == got
    finally:
        server.close()


@pytest.fixture(scope="module")
def replica(tiny_model_dir, served):
    from transformers import AutoModelForCausalLM

    server = fake_openai_server(AutoModelForCausalLM.from_pretrained(tiny_model_dir), served[2], max_top_k=None)
    yield server
    server.close()


def test_replicas_share_the_work_and_one_down_is_routed_around(served, replica, caplog):
    server, _, tokenizer = served
    options = {"top_logprobs": len(tokenizer), "max_retries": 1}
    want = Judge(OpenAIBackend(server.url, "tiny", tokenizer, **options), progress=False).score(QUESTIONS, ANSWERS)
    # Two replicas, round-robin: both get requests, the judgements are one server's.
    both = OpenAIBackend([server.url, replica.url], "tiny", tokenizer, **options)
    before = (len(server.arrivals), len(replica.arrivals))
    got = Judge(both, progress=False).score(QUESTIONS, ANSWERS)
    assert [g.probs for g in got] == [w.probs for w in want]
    assert len(server.arrivals) > before[0] and len(replica.arrivals) > before[1]
    assert both.sent[server.url] > 0 and both.sent[replica.url] > 0
    # One replica down (nothing listens there): its requests go to the other, nothing fails, the refusal counted.
    dead = fake_openai_server(None, tokenizer)
    dead.close()
    one_down = OpenAIBackend([dead.url, replica.url], "tiny", tokenizer, **options)
    got = Judge(one_down, progress=False).score(QUESTIONS, ANSWERS)
    assert [g.probs for g in got] == [w.probs for w in want] and one_down.failures == 0
    assert one_down.sent[dead.url] >= 1 and one_down.requests == one_down.sent[dead.url] + one_down.sent[replica.url]
    # Both down: every item fails, counted per item, and the call returns.
    all_down = OpenAIBackend([dead.url, dead.url + "/"], "tiny", tokenizer, **options)
    got = Judge(all_down, progress=False).score(QUESTIONS[:3], ANSWERS[:3])
    assert all(g.error for g in got) and all_down.failures == 3


def test_bad_backend_options_are_errors(served):
    server, _, tokenizer = served
    for bad in ({"prompts_per_request": 0}, {"concurrency": 0}):
        with pytest.raises(ValueError, match="positive integer"):
            OpenAIBackend(server.url, "tiny", tokenizer, **bad)
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend(["localhost:8000"], "tiny", tokenizer)


def test_load_judge_takes_a_list_of_replicas(served, replica, tiny_model_dir):
    from reward import load_judge

    server, _, tokenizer = served
    judge = load_judge(f"openai:{server.url}, {replica.url}", model="tiny", tokenizer=tiny_model_dir,
                       server_options={"prompts_per_request": 8}, progress=False)  # fmt: skip
    assert judge.backend.urls == [server.url, replica.url] and judge.backend.prompts_per_request == 8
    judge.score(QUESTIONS[:4], ANSWERS[:4])
    assert judge.backend.sent[server.url] > 0 and judge.backend.sent[replica.url] > 0
    with pytest.raises(ValueError, match="openai:URL1,URL2"):
        load_judge(f"openai:{server.url},127.0.0.1:9/v1", model="tiny", tokenizer=tiny_model_dir)


def test_the_default_top_k_under_a_real_servers_cap(tiny_model_dir, served):
    """A server capping top-k at 20 (vLLM's default, OpenAI's limit): the backend's default asks for no more, the
    labels the server lists get their exact read (P(label) times the listed part of its end mass), the others no
    probability (missing mass); asking for more than the cap is the server's 400, a failed read, never a score."""
    from transformers import AutoModelForCausalLM

    _, local, tokenizer = served
    capped = fake_openai_server(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    exact = fake_openai_server(local.model, tokenizer, max_top_k=None)
    try:
        labels = [str(s) for s in range(1, 11)]
        got = OpenAIBackend(capped.url, "tiny", tokenizer).label_logprobs(PROMPTS[:2], labels)
        # The same read from a server listing exactly the top 20, built by hand from the uncapped one.
        listed = OpenAIBackend(exact.url, "tiny", tokenizer, top_logprobs=MAX_TOP_K)
        want = listed.label_logprobs(PROMPTS[:2], labels)
        reads = [v for read in got for v in read.values()]
        assert got == want and -math.inf in reads and max(reads) > -math.inf  # (9 and 4 listed, the rest not)
        over = OpenAIBackend(capped.url, "tiny", tokenizer, top_logprobs=MAX_TOP_K + 1, max_retries=0)
        assert over.label_logprobs(PROMPTS[:2], labels) == [{label: -math.inf for label in labels}] * 2
    finally:
        capped.close()
        exact.close()
