"""Token ids of plain texts, as `tokenizer(texts, add_special_tokens=False).input_ids` gives them, cheaper.

transformers' tokenizer call re-checks its arguments, resets truncation and padding and wraps the result on every
call: on a judge prompt that is about as long as the tokenisation itself. A fast tokenizer's Rust `Tokenizer`
gives the same ids directly, as long as it is set up as that call would set it (no truncation, no padding, the
same special-token splitting); otherwise, and for slow tokenizers, the ordinary call is used. Where the Rust side
has `encode_batch_fast` (tokenizers >= 0.21) it is used: the same ids without the character offsets, which are a
third of the cost (`bench/bench_host.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence


def _rust(tokenizer):
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is None or not hasattr(rust, "encode_batch"):
        return None
    if rust.truncation is not None or rust.padding is not None:
        return None
    if getattr(rust, "encode_special_tokens", False) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return rust


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added (exactly the tokenizer's own call's ids).

    Example:
    ```python
    >>> from transformers import AutoTokenizer
    >>> from reward.embedded import embedded_judge_path
    >>> tok = AutoTokenizer.from_pretrained(embedded_judge_path())
    >>> texts = ["Score: [4", "<|im_start|>user Hi<|im_end|>"]
    >>> encode(tok, texts) == [tok(t, add_special_tokens=False).input_ids for t in texts]
    True

    ```
    """
    if not texts:
        return []
    rust = _rust(tokenizer)
    if rust is None:
        return tokenizer(list(texts), add_special_tokens=False).input_ids
    texts = list(texts)
    batch = getattr(rust, "encode_batch_fast", rust.encode_batch)
    cut = _shared_cut(texts) if len(texts) > 1 and _splits_at_newlines(rust) else 0
    if not cut:
        return [e.ids for e in batch(texts, add_special_tokens=False)]
    head = batch([texts[0][:cut]], add_special_tokens=False)[0].ids
    return [head + e.ids for e in batch([t[cut:] for t in texts], add_special_tokens=False)]


def _splits_at_newlines(rust) -> bool:
    """Whether a lone "\n" between two visible characters always ends a pre-token, whatever surrounds it: true of
    GPT-2's byte-level pre-tokenizer (its regex has no piece that holds a newline and a visible character, and a
    whitespace run that is a single "\n" is one piece at the end of a text too), alone or after digit splitting
    (which only adds splits around digits), with no normaliser and no added token that holds a newline or strips
    the whitespace next to it. Then the ids of `a + b`, `a` ending in such a newline, are those of `a` and of `b`
    end to end (checked on adversarial texts in tests/test_host_work.py)."""
    if rust.normalizer is not None or type(rust.model).__name__ != "BPE" or rust.pre_tokenizer is None:
        return False
    pre = json.loads(rust.pre_tokenizer.__getstate__())
    steps = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    if [step["type"] for step in steps if step["type"] != "Digits"] != ["ByteLevel"]:
        return False
    if any(step["type"] == "ByteLevel" and {k: step.get(k) for k in gpt2} != gpt2 for step in steps):
        return False
    added = rust.get_added_tokens_decoder().values()
    return not any("\n" in t.content or t.lstrip or t.rstrip for t in added)


def _visible(c: str) -> bool:
    return "!" <= c <= "~"


def _shared_cut(texts: list[str]) -> int:
    """Where the texts' common start can be tokenised apart from their rests: just after its last lone "\n" between
    two visible ASCII characters (0 if none). A batch of judge prompts shares its template's instructions: they are
    then tokenised once instead of once per prompt."""
    common = os.path.commonprefix(texts)
    k = common.rfind("\n", 0, len(common) - 1)
    while k > 0 and not (_visible(common[k - 1]) and _visible(common[k + 1])):
        k = common.rfind("\n", 0, k)
    return k + 1 if k > 0 else 0


def bytes_bound(tokenizer) -> bool:
    """Whether no text has more tokens than its UTF-8 bytes plus one (a byte-level BPE without normaliser: every
    token holds at least one byte; plus one for a prefix space). Lets a caller skip tokenising a text that fits
    anyway."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is None or rust.normalizer is not None or type(rust.model).__name__ != "BPE":
        return False
    pre = rust.pre_tokenizer
    return pre is not None and b'"ByteLevel"' in pre.__getstate__()
