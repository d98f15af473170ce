"""Exact label reads of a served judge (`reward/backends/served_reads.py`) against fakes of vLLM's and SGLang's
`/v1/completions` (tests/served_fakes.py names the source files followed) whose full distribution is known and whose
top-k is capped at 20 like vLLM's default: every label, those outside the top-20 included, gets its full-vocabulary
probability; a server without an exact read falls back to the top-k read and says so."""

import logging
import math

import pytest

pytest.importorskip("httpx")

from served_fakes import fake_served, full_label_logprobs  # noqa: E402

from reward import Judge  # noqa: E402
from reward.backends.openai import OpenAIBackend, RequestError  # noqa: E402
from reward.backends.served_reads import Plan, label_token_ids, vocab_info  # noqa: E402

PROMPTS = ["What is two plus two? Score: [", "Paris is in France, a b c. Score: ["]
SCALE = [str(s) for s in range(1, 101)]
CUSTOM = ["good", "bad", "A", "Z", "x", "7", "ok"]  # words and letters, most of them far outside the top-20

SERVERS = {  # fake -> the read `exact="auto"` must pick
    "vllm --max-logprobs -1": ({"flavor": "vllm", "max_logprobs": -1}, "full"),
    "vllm --logprobs-mode processed_logprobs": (
        {"flavor": "vllm", "logprobs_mode": "processed_logprobs"},
        "logit_bias",
    ),
    "sglang": ({"flavor": "sglang"}, "logit_bias"),
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def want(tiny):
    return {labels: [full_label_logprobs(*tiny, p, list(labels)) for p in PROMPTS[:1]] for labels in (tuple(SCALE),
            tuple(CUSTOM))}  # fmt: skip


def one_round(tokenizer, labels, mode, per_request=64) -> int:
    """Requests of one round of reads: each kind of read (count and bias) in as few requests as hold them."""
    plan = Plan(label_token_ids(tokenizer, PROMPTS[0], labels, {}), mode, vocab_info(tokenizer)[1].__getitem__, 20)
    kinds = {}
    for read in plan.first_reads():
        kinds[(read.kind, read.lifted)] = kinds.get((read.kind, read.lifted), 0) + 1
    return sum(-(-n // per_request) for n in kinds.values())


def top20(server, prompt):
    import httpx

    body = {"model": "m", "prompt": prompt, "max_tokens": 1, "logprobs": 20}
    return httpx.post(f"{server.url}/completions", json=body).json()["choices"][0]["logprobs"]["top_logprobs"][0]


@pytest.mark.parametrize("name", list(SERVERS))
def test_every_label_gets_its_full_vocabulary_probability(tiny, want, name):
    # Labels outside the top-20 (most of 2-8 at the slot, "good", "bad"; every two-digit branch after a digit)
    # get exactly what the full distribution gives, where the top-k read gives them 0; one round of requests.
    options, mode = SERVERS[name]
    server = fake_served(*tiny, **options)
    try:
        listed = top20(server, PROMPTS[0])
        assert len(listed) <= 21 and not set(listed) & {"2", "3", "5", "good", "bad"}  # outside the top-20
        backend = OpenAIBackend(server.url, "m", tiny[1], exact="auto")
        for labels in (SCALE, CUSTOM):
            before = backend.requests
            (got,) = backend.label_logprobs(PROMPTS[:1], labels)
            w = want[tuple(labels)][0]
            assert max(abs(math.exp(got[k]) - math.exp(w[k])) for k in labels) < 1e-9
            assert sum(map(math.exp, got.values())) == pytest.approx(sum(map(math.exp, w.values())), rel=1e-9)
            # One round trip, however deep the labels: the probe (first call), then each kind of read at once.
            probe = (2 if mode == "logit_bias" else 3) if before == 0 else 0  # (plain, lift; then full)
            assert backend.requests - before - probe == one_round(tiny[1], labels, mode)
        assert backend._mode == mode and backend.exact_reads and backend.inexact == 0
        top_k = OpenAIBackend(server.url, "m", tiny[1], exact="off").label_logprobs(PROMPTS[:1], SCALE)[0]
        assert top_k["3"] == -math.inf < want[tuple(SCALE)][0]["3"]  # what today's read gives it
    finally:
        server.close()


def test_a_server_without_an_exact_read_falls_back_and_says_so_once(tiny, want, caplog):
    # vLLM's defaults: at most 20 log-probs (a larger count is HTTP 400) and log-probs reported before the logit
    # bias: nothing exact to read. The top-k read, one warning, and every result flagged as a lower bound.
    server = fake_served(*tiny, flavor="vllm")
    try:
        backend = OpenAIBackend(server.url, "m", tiny[1], exact="auto")
        judge = Judge(backend, progress=False)
        with caplog.at_level(logging.WARNING, logger="reward.backends.openai"):
            scores = judge.score(["What is two plus two?"] * 2, ["Four.", "It is 4."], scale=10)
            prefs = judge.compare(["What is two plus two?"], ["Four."], ["Five."])
        assert backend._mode == "off" and not backend.exact_reads
        assert sum("no exact read" in r.message for r in caplog.records) == 1
        assert all(not s.valid_mass_exact for s in scores) and not prefs[0].valid_mass_exact
        got = backend.label_logprobs(PROMPTS[:1], SCALE)[0]
        assert sum(map(math.exp, got.values())) < sum(map(math.exp, want[tuple(SCALE)][0].values()))
    finally:
        server.close()


def test_exact_scores_are_flagged_exact_and_keep_the_prefix_cache(tiny):
    # SGLang's radix cache: each prompt's text is computed once; every later read adds only its few label tokens.
    server = fake_served(*tiny, flavor="sglang")
    try:
        judge = Judge(OpenAIBackend(server.url, "m", tiny[1], exact="auto"), progress=False)
        questions, answers = ["What is two plus two?", "Name a city in France."], ["Four.", "Paris."]
        scores = judge.score(questions, answers, scale=100)
        assert all(s.error is None and s.valid_mass_exact for s in scores)
        fields = [
            {"question": q, "response": a, "min_score": "1", "max_score": "100"} for q, a in zip(questions, answers)
        ]
        texts = [judge._render(judge.pointwise_template, f) for f in fields]
        once = sum(len(tiny[1](t + judge.pointwise_template.slot).input_ids) for t in texts)
        reads = len(server.prompts) - 2  # (the probe's two reads)
        assert server.computed <= once + 3 * reads < server.prompt_tokens / 10
    finally:
        server.close()


def test_bad_exact_options(tiny):
    server = fake_served(*tiny)
    try:
        with pytest.raises(ValueError, match="exact must be one of"):
            OpenAIBackend(server.url, "m", tiny[1], exact="sometimes")
        with pytest.raises(ValueError, match="completions"):
            OpenAIBackend(server.url, "m", tiny[1], endpoint="chat", exact="full")
        chat = OpenAIBackend(server.url, "m", tiny[1], endpoint="chat", exact="auto")
        assert chat._mode == "off"  # auto: the chat endpoint reads the top-k
        # A chosen logit-bias read on a server reporting log-probs before the bias (vLLM's default) would undo a
        # bias that was never applied: it fails once probed, never reads wrong values.
        with pytest.raises(RequestError, match="before the bias"):
            OpenAIBackend(server.url, "m", tiny[1], exact="logit_bias").label_logprobs(PROMPTS[:1], ["1", "2"])
    finally:
        server.close()


def test_judge_exact_flag_reaches_the_backend(tiny, tiny_model_dir):
    # --judge_exact is declared once (trainers/judge_args.py) and passed through load_judge's server_options: a
    # flag parsed but dropped would leave every served judge on the top-k read; a typo fails when parsed.
    from trainers.args import UserError, parse
    from trainers.judge_args import JudgeArguments

    server = fake_served(*tiny, flavor="sglang")
    try:
        argv = ["--judge", f"openai:{server.url}", "--judge_model", "m", "--judge_tokenizer", str(tiny_model_dir),
                "--judge_exact", "auto"]  # fmt: skip
        (served,) = parse("t", (JudgeArguments,), argv)
        backend = served.load().backend
        backend.label_logprobs(PROMPTS[:1], ["2", "3"])
        assert backend.exact == "auto" and backend._mode == "logit_bias" and backend.exact_reads
        with pytest.raises(UserError, match="judge_exact must be one of"):
            parse("t", (JudgeArguments,), argv[:-1] + ["exactly"])
    finally:
        server.close()
