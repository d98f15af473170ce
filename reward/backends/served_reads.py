"""Exact label probabilities from a served judge: what to ask each server for, and how to undo a logit bias.

A label's probability is read along its tokens as the local backend reads it: P("47") = P("4") P("7" | "4")
P(end | "47"), the end being every token whose text does not start with a letter or a digit. A server lists only
its top-k (vLLM: 20 by default), so a plain read misses labels outside it and sees only part of the end mass (a
lower bound). Two reads are exact (`EXACT_MODES`):

- "full": the whole vocabulary listed (`logprobs` = its size): llama.cpp's server takes any count (it sorts the full
  vocabulary: tools/server/server-context.cpp `populate_token_probs`, server-common.cpp `get_token_probabilities`);
  vLLM when started with `--max-logprobs -1` (vllm/sampling_params.py: -1 means the vocabulary size). Every
  label token and every end token is listed: nothing is missing.
- "logit_bias": for servers that report log-probs after the bias (SGLang: its sampler adds `logit_bias` to the logits
  before the log-softmax, python/sglang/srt/layers/sampler.py; vLLM with `--logprobs-mode processed_logprobs`;
  llama.cpp's server with `post_sampling_probs` and its samplers made neutral, `LLAMA_CPP_FIELDS`: it then lists
  the probabilities after its sampler chain, whose first step is the logit bias).
  Three reads per trie node, all in one round, each kind one request for many prompts:
  "plain" (no bias), "lift" (the label tokens biased by +b: all of them enter the top-k; `unbias`) and, at a
  label's end, "mask" (every token that would continue it, i.e. starts with a letter or a digit, biased by -100:
  the listed tokens are then the end tokens over their own total, P_mask(j) = P(j) / E, so E = P(j) / P_mask(j)
  for any end token j whose exact P(j) the other reads list). A node whose mask read lists no such j gets one more
  "lift" read, of that j.
- "off": today's top-k read (`openai.read_labels`): labels outside the top-k missing, ends a lower bound.

Tokens are matched by id (llama.cpp lists ids; vLLM's `return_tokens_as_token_ids` keys "token_id:N"), else by text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

EXACT_MODES = ("auto", "full", "logit_bias", "off")
MASK = -100.0  # the OpenAI API's lowest bias: a masked token keeps e^-100 of its weight (1e-44)
TOLERANCE = 1e-10  # a lifted token still unlisted has at most this probability, else the item is not exact
# llama.cpp's server lists the probabilities after its sampler chain with `post_sampling_probs` (server-task.cpp
# `params_from_json_cmpl`, server-context.cpp `populate_token_probs`): the logit bias, then every sampler below set
# to do nothing (whatever the server was started with), so the listed values are the biased softmax at T = 1.
LLAMA_CPP_FIELDS = {"post_sampling_probs": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                    "typical_p": 1.0, "top_n_sigma": -1.0, "xtc_probability": 0.0, "repeat_penalty": 1.0,
                    "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
                    "mirostat": 0}  # fmt: skip


def unbias(listed: dict, lifted: set, bias: float, anchor: float | None = None) -> dict:
    """The log-probs without the bias, from the top-k a server reported after adding `bias` to the logits of the
    `lifted` tokens: p = p' e^(-b [lifted]) Z', with Z' = 1 / (1 - q' (1 - e^-b)), q' the lifted tokens' listed mass
    (all of them listed). `anchor`: log Z' itself, from a token listed unbiased here and in an unbiased read (no
    cancellation when the lifted tokens take nearly all the mass; the issue's formula is the same identity).

    ```python
    >>> import math
    >>> p = {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}  # the true distribution; token 3 lifted by 2 nats
    >>> z = 0.95 + 0.05 * math.exp(2)
    >>> seen = {t: math.log(v * (math.exp(2) if t == 3 else 1) / z) for t, v in p.items()}
    >>> {t: round(math.exp(lp), 12) for t, lp in unbias(seen, {3}, 2.0).items()}
    {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}
    >>> {t: round(math.exp(lp), 12) for t, lp in unbias(seen, {3}, 2.0, anchor=math.log(0.5) - seen[0]).items()}
    {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}

    ```
    """
    if anchor is None:
        q = sum(math.exp(listed[t]) for t in lifted if t in listed)
        anchor = -math.log((1 - q) + q * math.exp(-bias))
    return {t: lp + anchor - (bias if t in lifted else 0.0) for t, lp in listed.items()}


def keyed(entries, ids_of: dict[str, int]) -> dict:
    """{token id (or its text when the text is not one token's): logprob} of one position's listed tokens, from
    either response shape: llama.cpp's list of {"id", "token", "logprob"} (or "prob" with `post_sampling_probs`),
    or a {text: logprob} dict (vLLM, SGLang; vLLM's `return_tokens_as_token_ids` writes "token_id:N"). Tokens
    listed under one text are summed.

    ```python
    >>> keyed({"token_id:7": -0.5, "]": -1.0, "??": -2.0}, {"]": 3})
    {7: -0.5, 3: -1.0, '??': -2.0}
    >>> keyed([{"id": 5, "token": "4", "logprob": -0.1}], {})
    {5: -0.1}
    >>> keyed([{"id": 5, "token": "4", "prob": 1.0}, {"id": 6, "token": "5", "prob": 0.0}], {})
    {5: 0.0, 6: -inf}

    ```
    """
    out: dict = {}
    pairs = (
        ((e.get("id", e["token"]), e["logprob"] if "logprob" in e else _log(e["prob"])) for e in entries)
        if isinstance(entries, list)
        else entries.items()
    )
    for key, lp in pairs:
        if isinstance(key, str):
            key = int(key[9:]) if key.startswith("token_id:") else ids_of.get(key, key)
        lp = float(lp)
        out[key] = lp if key not in out else float(max(out[key], lp) + math.log1p(math.exp(-abs(out[key] - lp))))
    return out


class Read(NamedTuple):
    """One read of a trie node: `kind` "plain" / "full" / "lift" / "mask", `lifted` the tokens lifted."""

    node: tuple[int, ...]
    kind: str
    lifted: frozenset = frozenset()


class Plan:
    """The reads a label set needs in one mode, and the label log-probs once they are in.

    Args:
        label_ids: each label's token ids after the slot.
        mode: "full" or "logit_bias".
        is_end: token id -> True where it ends a label (its text does not start with a letter or digit).
        k: the top-k the server lists (lift reads lift at most k // 2 tokens at once).
        bias: the lift, in nats (large enough to bring every label token into the top-k).

    ```python
    >>> import math
    >>> ends = {0: True, 1: False, 2: False, 3: True}  # 0 "]", 1 "4", 2 "7", 3 " "
    >>> plan = Plan([(1,), (1, 2)], "full", ends.get, k=20)
    >>> [(r.node, r.kind) for r in plan.first_reads()]
    [((), 'full'), ((1,), 'full'), ((1, 2), 'full')]
    >>> got = {Read((), "full"): {1: math.log(0.5), 0: math.log(0.5)},
    ...        Read((1,), "full"): {0: math.log(0.6), 2: math.log(0.4)},
    ...        Read((1, 2), "full"): {0: math.log(0.9), 3: math.log(0.05), 1: math.log(0.05)}}
    >>> values, more = plan.labels(got)
    >>> [round(math.exp(v), 6) for v in values], more
    ([0.3, 0.19], [])

    ```
    """

    def __init__(self, label_ids: Sequence[tuple[int, ...]], mode: str, is_end, k: int, bias: float = 30.0):
        self.label_ids, self.mode, self.is_end, self.bias = [tuple(ids) for ids in label_ids], mode, is_end, bias
        self.nodes = sorted({ids[:n] for ids in self.label_ids for n in range(len(ids))} | set(self.label_ids))
        self.children = {node: {ids[len(node)] for ids in self.label_ids if len(ids) > len(node)
                                and ids[: len(node)] == node} for node in self.nodes}  # fmt: skip
        tokens = sorted({t for c in self.children.values() for t in c})
        size = max(1, k // 2)  # room left in the top-k for unbiased anchors
        self.lifts = [frozenset(tokens[i : i + size]) for i in range(0, len(tokens), size)]

    def first_reads(self) -> list[Read]:
        """The reads of the first round: every node at once (one round trip for any label set)."""
        if self.mode == "full":
            return [Read(node, "full") for node in self.nodes]
        reads = [Read(node, "plain") for node in self.nodes]
        reads += [Read(node, "lift", lift) for node in self.nodes if self.children[node] for lift in self.lifts]
        return reads + [Read(node, "mask") for node in set(self.label_ids)]

    def labels(self, got: dict) -> tuple[list[float] | None, list[Read]]:
        """(log P(label) per label, or None while reads are missing; the reads still needed) from `got`:
        {Read: keyed top-k}. A label whose reads cannot be made exact is `nan` (its item then falls back)."""
        exact = {node: self._exact(node, got) for node in self.nodes}
        more = [r for node, e in exact.items() if isinstance(e, Read) for r in [e]]
        if more:
            return None, more
        out = []
        for ids in self.label_ids:
            total = sum(exact[ids[:n]][0].get(ids[n], -math.inf) for n in range(len(ids)))
            out.append(total + exact[ids][1])
        return out, []

    def _exact(self, node, got):
        """({token: exact log-prob} listed at `node`, log end mass or None) or the Read still needed."""
        if self.mode == "full":
            listed = got[Read(node, "full")]
            ends = [lp for t, lp in listed.items() if self._ends(t)]
            return listed, _logsumexp(ends)
        plain = got[Read(node, "plain")]
        exact = dict(plain)
        for read, listed in got.items():
            if read.node != node or read.kind != "lift":
                continue
            anchors = [plain[t] - lp for t, lp in listed.items() if t in plain and t not in read.lifted]
            values = unbias(listed, read.lifted, self.bias, anchors[0] if anchors else None)
            for t in read.lifted:
                if t not in values:  # still below the top-k after the lift: at most the last listed, unlifted
                    bound = min(listed.values()) + (anchors[0] if anchors else 0.0) - self.bias
                    values[t] = -math.inf if bound < math.log(TOLERANCE) else math.nan
            exact.update(values)
        if node not in set(self.label_ids):
            return exact, None
        masked = got[Read(node, "mask")]
        both = [t for t in masked if t in exact and self._ends(t)]
        if both:
            j = max(both, key=masked.get)  # the largest: the most precise ratio
            return exact, exact[j] - masked[j]
        top = max((t for t in masked if self._ends(t)), key=masked.get, default=None)
        wanted = Read(node, "lift", frozenset([top]))
        if top is None or wanted in got:
            return exact, math.nan
        return wanted

    def _ends(self, token) -> bool:
        return self.is_end(token) if isinstance(token, int) else not token[:1].isalnum()


def _log(p) -> float:
    return math.log(p) if p > 0 else -math.inf


def _logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values)) if top > -math.inf else -math.inf


def request_fields(read: Read, k: int, vocab: int, mask_ids: Sequence[int], bias: float) -> dict:
    """The body fields of a read (besides prompt, model, max_tokens): how many log-probs, which bias.

    ```python
    >>> request_fields(Read((), "lift", frozenset([7])), 20, 50000, [], 30.0)
    {'logprobs': 20, 'return_tokens_as_token_ids': True, 'logit_bias': {'7': 30.0}}

    ```
    """
    fields = {"logprobs": vocab if read.kind == "full" else k, "return_tokens_as_token_ids": True}
    if read.kind == "lift":
        fields["logit_bias"] = {str(t): bias for t in sorted(read.lifted)}
    elif read.kind == "mask":
        fields["logit_bias"] = {str(t): MASK for t in mask_ids}
    return fields


def vocab_info(tokenizer) -> tuple[dict[str, int], list[bool], list[int], int]:
    """({text: id} of the texts that are one token's, is_end per id, the ids that are not ends: a mask read's
    bias, the number of distinct texts: what a whole vocabulary listed by text holds). A token ends a label when
    its text does not start with a letter or a digit, as `labels.end_tokens` decides for the local backend."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in tokens]
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    ids_of = {text: i for i, text in enumerate(texts) if counts[text] == 1}
    is_end = [not text[:1].isalnum() for text in texts]
    return ids_of, is_end, [i for i, end in enumerate(is_end) if not end], len(counts)


def label_token_ids(tokenizer, prompt: str, labels: Sequence[str], cache: dict) -> tuple[tuple[int, ...], ...]:
    """Each label's token ids as it follows the prompt's slot (as `HFBackend` tokenises it: the end of the prompt
    and the label together, the prompt's own tokens taken off); `cache` keeps them per slot text."""
    from ..tokens import encode

    tail = prompt[-48:]
    key = (tail, tuple(labels))
    if key not in cache:
        base = encode(tokenizer, [tail])[0]
        out = []
        for label, ids in zip(labels, encode(tokenizer, [tail + label for label in labels])):
            if ids[: len(base)] != base or len(ids) == len(base):
                raise ValueError(f"label {label!r} merges with the end of the slot {tail[-12:]!r} into one token; "
                                 "end the template's slot where a token ends (e.g. with '[')")  # fmt: skip
            out.append(tuple(ids[len(base) :]))
        cache[key] = tuple(out)
    return cache[key]
