"""The OpenAI-compatible backend against a loopback server that serves a transformers model's exact top-k
logprobs, and through a proxy that injects faults."""

import math

import pytest

pytest.importorskip("httpx")
pytest.importorskip("tenacity")

from openai_fake import FaultProxy, fake_openai_server  # noqa: E402

from reward import Judge  # noqa: E402
from reward.backends.hf import HFBackend  # noqa: E402
from reward.backends.openai import OpenAIBackend, top_logprobs  # noqa: E402
from trainers import JudgeScoreReward  # noqa: E402

PROMPTS = ["What is two plus two? Score: [", "Paris is in France, a b c. Score: [", "Which is better? Verdict: ["]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    server = fake_openai_server(model, tokenizer)
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
    server, local, tokenizer = served
    remote = OpenAIBackend(server.url, "tiny", tokenizer, top_logprobs=3)
    got = remote.label_logprobs(PROMPTS[:1], [str(s) for s in range(1, 11)])[0]
    assert any(v == -math.inf for v in got.values())  # not listed: no probability, not an error
    assert sum(math.exp(v) for v in got.values()) < 1


def test_response_shapes():
    first = {"token": "A", "logprob": -0.5, "top_logprobs": [{"token": "A", "logprob": -0.5}]}
    content = {"choices": [{"logprobs": {"content": [first]}}]}
    assert top_logprobs(content) == {"A": -0.5}
    from reward.backends.openai import RetryableError

    with pytest.raises(RetryableError, match="no top logprobs"):
        top_logprobs({"choices": [{"text": "5"}]})


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "nologprobs", "timeout", "drop"])
def test_each_fault_is_retried_to_the_same_answer(served, fault):
    server, local, tokenizer = served
    proxy = FaultProxy(server.url, timeout_s=1.5)
    try:
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer), timeout=0.5, max_retries=3)
        proxy.faults = [fault, fault]  # the first two requests fail, then it recovers
        got = remote.label_logprobs(PROMPTS[:1], ["A", "B", "C"])[0]
        want = local.label_logprobs(PROMPTS[:1], ["A", "B", "C"])[0]
        assert got == pytest.approx(want, abs=1e-4) and remote.failures == 0
        assert remote.requests >= 4 + 2  # 4 distinct requests (root + 3 label ends) plus the 2 retried
    finally:
        proxy.close()


def test_a_dead_server_costs_rewards_never_the_run(served, tiny_judge):
    server, _, tokenizer = served
    proxy = FaultProxy(server.url)
    try:
        proxy.always = "500"
        remote = OpenAIBackend(proxy.url, "tiny", tokenizer, top_logprobs=len(tokenizer), max_retries=1)
        reward = JudgeScoreReward(Judge(remote, progress=False))
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
        reward = JudgeScoreReward(Judge(remote, progress=False))
        log = {}
        rewards = reward(prompts=["q1", "q2"], completions=["a", "b"], log_metric=lambda k, v: log.update({k: v}))
        assert rewards == [None, None] and log["judge/failures"] == 2
        assert remote.failures == 0  # the server answered: nothing to retry
    finally:
        proxy.close()


def test_concurrency_rate_limit_and_api_key(tiny_model_dir, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    server = fake_openai_server(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, delay_s=0.2)
    monkeypatch.setenv("JUDGE_KEY", "sk-test-secret")
    try:
        # At most 2 requests in flight, however many items wait.
        remote = OpenAIBackend(server.url, "tiny", tokenizer, concurrency=2, api_key_env="JUDGE_KEY")
        remote.label_logprobs(PROMPTS * 2, ["A", "B"])
        assert server.max_in_flight == 2 and server.authorization == "Bearer sk-test-secret"
        # At most 10 requests per second: starts at least 0.1 s apart (a busy machine only widens the gaps).
        server.arrivals.clear()
        paced = OpenAIBackend(server.url, "tiny", tokenizer, concurrency=8, requests_per_second=10)
        paced.label_logprobs(PROMPTS, ["A", "B", "C"])
        gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
        assert len(server.arrivals) == paced.requests >= 3 and min(gaps) >= 0.09
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
