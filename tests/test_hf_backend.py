"""The tree-attention label reader against a brute force: one full forward per label, no cache."""

import math

import pytest
import torch

from reward.backends.hf import HFBackend

PROMPTS = [
    "Rate it. Score: [",
    "What is two plus two? It is four. The quick brown fox jumps over the lazy dog. Score: [",
    "Paris is in France, a b c. Score: [",
]


def brute_force(model, tokenizer, prompt: str, label: str) -> float:
    """log P(label tokens | prompt) + log P(next token does not continue the label), from full sequences."""
    base = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = tokenizer(prompt + label, add_special_tokens=False).input_ids
    assert ids[: len(base)] == base
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)  # fp64: the reference itself exact
    total = sum(float(logp[t - 1, ids[t]]) for t in range(len(base), len(ids)))
    vocab = logp.shape[-1]
    ends = [i for i in range(vocab) if not tokenizer.decode([i])[:1].isalnum()]
    return total + float(logp[-1, ends].logsumexp(-1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_chained_1_to_100_matches_brute_force(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
    # A small token budget forces several micro-batches, and prompts of different lengths force left padding.
    backend = HFBackend(model, tokenizer, max_batch_tokens=64)
    labels = [str(s) for s in range(1, 101)]
    assert (
        len(tokenizer("Score: [47", add_special_tokens=False).input_ids)
        == len(tokenizer("Score: [", add_special_tokens=False).input_ids) + 2
    ), "the tiny tokenizer must split digits"
    got = backend.label_logprobs(PROMPTS, labels)
    for prompt, row in zip(PROMPTS, got):
        for label in ("1", "4", "10", "47", "99", "100"):
            assert row[label] == pytest.approx(brute_force(model, tokenizer, prompt, label), abs=1e-5)
        total = sum(math.exp(v) for v in row.values())
        assert 0 < total <= 1 + 1e-6
    # Not the same numbers for every prompt: the reader really looks at each prompt.
    assert got[0]["47"] != pytest.approx(got[1]["47"], abs=1e-3)


def test_letters_and_bad_slot(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    backend = HFBackend(model, tokenizer)
    prompt = "Which is better? Verdict: ["
    got = backend.label_logprobs([prompt], ["A", "B", "C"])[0]
    for label in "ABC":
        assert got[label] == pytest.approx(brute_force(model, tokenizer, prompt, label), abs=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        HFBackend(model, tokenizer, max_length=10).label_logprobs([prompt * 5], ["A"])


def test_generate_returns_logprob_of_its_own_text(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    backend = HFBackend(model, tokenizer)
    prompts = ["Rate it.", "What is two plus two? It is four."]
    checked = 0
    for prompt, (text, lp, n) in zip(prompts, backend.generate(prompts, max_new_tokens=6, stop=["Score:"])):
        assert 1 <= n <= 6 and lp < 0
        # Greedy: each generated token is the argmax; its log-prob sum matches a plain forward of the text.
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        new = tokenizer(prompt + text, add_special_tokens=False).input_ids[len(ids) :]
        if len(new) == n:  # no EOS inside: the text re-tokenises to the same tokens
            with torch.no_grad():
                logp = model(torch.tensor([ids + new])).logits[0].log_softmax(-1)
            assert lp == pytest.approx(sum(float(logp[len(ids) + k - 1, t]) for k, t in enumerate(new)), abs=1e-4)
            checked += 1
    assert checked >= 1


def shared_prefix_prompts():
    """Pairwise-style prompts: one long instruction, 2 questions, 3 answers each, every ordered pair."""
    system = "You are a judge. The quick brown fox jumps over the lazy dog. Paris is in France. " * 2
    questions = ["What is two plus two? Answer the question please, it is helpful.", "Where is Paris? a b c d e f."]
    answers = ["It is four.", "four 4 4", "The answer is 42, accurate and relevant."]
    return [
        f"{system}[User Question] {q} [The Start of Assistant A] {a} [The Start of Assistant B] {b} Verdict: ["
        for q in questions
        for a in answers
        for b in answers
        if a != b
    ]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_cache_equals_uncached(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
    prompts = shared_prefix_prompts()
    labels = ["A", "B", "C"] + [str(s) for s in range(1, 101)]
    cached = HFBackend(model, tokenizer, max_batch_tokens=256, min_prefix=8)
    plain = HFBackend(model, tokenizer, max_batch_tokens=256, prefix_cache=False)
    got, want = cached.label_logprobs(prompts, labels), plain.label_logprobs(prompts, labels)
    diff = max(abs(math.exp(g[k]) - math.exp(w[k])) for g, w in zip(got, want) for k in labels)
    assert diff <= 1e-5
    assert got[3]["47"] == pytest.approx(brute_force(model, tokenizer, prompts[3], "47"), abs=1e-5)
    # The instruction, each question and each first answer ran once: far fewer tokens through the model.
    assert cached.forward_tokens < 0.5 * plain.forward_tokens


def test_batches_split_by_length_on_cpu_only(tiny_model_dir, monkeypatch):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    backend = HFBackend(model, AutoTokenizer.from_pretrained(tiny_model_dir), max_batch_tokens=1000)
    # A 64-wide judge: padding 50 tokens costs less than one more forward's host work, padding 80 does not.
    ffn = model.config.intermediate_size
    assert backend._free_padding() == int(5e6 / (2 * (4 * 64 * 64 + 3 * 64 * ffn))) > 30
    assert backend._batches([20, 100, 50]) == [[1, 2], [0]]
    wide = SimpleNamespace(model=SimpleNamespace(config=LlamaConfig(hidden_size=576, intermediate_size=1536)))
    assert HFBackend._free_padding(wide) == 0  # the embedded judge's width: padding is compute
    monkeypatch.setattr(backend, "_free_padding", lambda: 0)
    assert backend._batches([20, 100, 50]) == [[1], [2], [0]]  # CPU: padding is compute, a batch of one is cheap
    assert backend._batches([600, 500]) == [[0], [1]]  # the token budget splits everywhere
    backend.device = torch.device("cuda")  # (only its type is read) GPU: each forward has a fixed cost
    assert backend._batches([20, 100, 50]) == [[1, 2, 0]] and backend._batches([600, 500]) == [[0], [1]]


def test_prefix_cache_shares_a_short_stretch_that_many_prompts_share(tiny_model_dir):
    """A level is worth what it saves, (prompts - 1) x tokens: 11 prompts sharing a 6-token first answer share it
    (60 tokens saved) although 6 < min_prefix; the old rule (a stretch of >= min_prefix tokens) ran it 11 times."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    system = "You are a judge. Compare the two answers and say which is better. " * 3
    answers = [f"It is {w} apples." for w in ("one", "two", "three", "four", "five", "six", "seven", "eight",
                                               "nine", "ten", "eleven", "twelve")]  # fmt: skip
    prompts = [f"{system}[A] {a} [B] {b} Verdict: [" for a in answers for b in answers if a != b]
    prompts += prompts[:2]  # the same prompt twice: each row keeps one token of its own
    cached = HFBackend(model, tokenizer, min_prefix=32)
    cached._free_padding = lambda: 0  # as on a real judge's width: the tokens run are then the tokens computed
    plain = HFBackend(model, tokenizer, prefix_cache=False)
    got, want = cached.label_logprobs(prompts, ["A", "B", "C"]), plain.label_logprobs(prompts, ["A", "B", "C"])
    assert max(abs(math.exp(g[k]) - math.exp(w[k])) for g, w in zip(got, want) for k in "ABC") <= 1e-5
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    radix, prev = 0, []  # tokens in the radix tree of the prompts: every shared prefix counted once
    for ids in sorted(encoded):
        radix += len(ids) - next((k for k, (a, b) in enumerate(zip(ids, prev)) if a != b), min(len(ids), len(prev)))
        prev = ids
    first = len(tokenizer(f"{system}[A] {answers[0]} [B]", add_special_tokens=False).input_ids)
    first -= len(tokenizer(f"{system}[A]", add_special_tokens=False).input_ids)
    assert first < 32  # the first answer's stretch is below min_prefix: only its 11 prompts together are worth it
    assert cached.forward_tokens <= 1.1 * radix  # padding included (1.06x; the old rule: 2.14x)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("own_head", [True, False])
def test_rows_on_different_cached_prefixes_in_one_forward_equal_uncached(tiny_model_dir, attn, own_head):
    """One forward of rows that each continue a cached prefix of their own (three lengths, and none) gives each
    row's label log-probs of its uncached full prompt; so does a stretch extended on different parents at once.
    Wrong positions (the longest prefix's for all), an unmasked padded past or a cache cut in the wrong place
    each move them by far more than 1e-5."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
    backend = HFBackend(model, tokenizer)
    if not own_head:  # the model's head and transformers' forward on the padded past, not the lean decoder
        backend._head_checked = True
    assert (backend._own_head() is not None) == own_head

    def enc(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    system = enc("You are a judge. The quick brown fox jumps over the lazy dog.")
    stems = [enc(" [Q] What is two plus two?"), enc(" [Q] Where is Paris, the capital of France? a b c d")]
    tails = [enc(" It is four. Score: ["), enc(" Paris. Score: ["), enc(" In France, a b c d e f. Score: [")]
    with torch.inference_mode():
        (root,) = backend._extend([system], [None])
        parents = backend._extend(stems, [root, root])  # one parent, two lengths
        assert parents[0][0][0].shape[-2] != parents[1][0][0].shape[-2]
        deeper = backend._extend([tails[0][:3], tails[1][:2]], parents)  # two parents of different lengths
        label_ids = backend._label_tokens("Score: [", [str(s) for s in range(1, 101)])
        trie = backend._trie(label_ids)
        rows = [tails[0], tails[1], tails[2], system + stems[0] + tails[2], tails[0][3:], tails[1][2:]]
        prefixes = [parents[0], parents[1], root, None, deeper[0], deeper[1]]
        full = [system + stems[0] + tails[0], system + stems[1] + tails[1], system + tails[2], rows[3],
                system + stems[0] + tails[0], system + stems[1] + tails[1]]  # fmt: skip
        got = torch.cat(backend._read([backend._trie_forward(rows, trie, prefixes)], trie))
        want = torch.cat([torch.cat(backend._read([backend._trie_forward([r], trie)], trie)) for r in full])
    assert (got - want).abs().max() <= 1e-5
    assert (want[0] - want[1]).abs().max() > 1e-3  # (the rows differ: a mix-up of rows would show)


def test_leaves_of_different_cache_levels_share_forwards(tiny_model_dir):
    """The group of 12 answers in all pairs: each first answer is a cache level, and its 11 prompts' second
    answers are leaves on it. Batched per level (before #28), the leaves took a forward per level at least (12)
    and the stretches a forward per parent at least; here leaves of different levels share forwards, and the
    label reads equal the uncached forwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    system = "You are a judge. Compare the two answers and say which is better. " * 3
    answers = [f"It is {w} apples." for w in ("one", "two", "three", "four", "five", "six", "seven", "eight",
                                               "nine", "ten", "eleven", "twelve")]  # fmt: skip
    prompts = [f"{system}[A] {a} [B] {b} Verdict: [" for a in answers for b in answers if a != b]
    cached = HFBackend(model, tokenizer, min_prefix=8)
    leaf_calls, extend_calls, alive = [], [], []  # the prefixes' ids per forward (kept alive: ids stay unique)
    trie_forward, extend = cached._trie_forward, cached._extend

    def recording(calls, forward):
        def record(rows, *args):
            alive.append(args[-1])
            calls.append([id(kv) for kv in args[-1]])
            return forward(rows, *args)

        return record

    cached._trie_forward, cached._extend = recording(leaf_calls, trie_forward), recording(extend_calls, extend)
    got = cached.label_logprobs(prompts, ["A", "B", "C"])
    want = HFBackend(model, tokenizer, prefix_cache=False).label_logprobs(prompts, ["A", "B", "C"])
    assert max(abs(g[k] - w[k]) for g, w in zip(got, want) for k in "ABC") <= 1e-5
    levels = len({kv for prefixes in leaf_calls for kv in prefixes})  # the cached prefixes leaves ran on
    parents = len({kv for prefixes in extend_calls for kv in prefixes})  # the prefixes stretches were run on
    assert levels >= 12 and sum(map(len, leaf_calls)) == len(prompts)
    assert len(leaf_calls) < levels and len(extend_calls) < parents
    assert max(len(set(prefixes)) for prefixes in leaf_calls) >= 6  # one forward, >= 6 levels
