"""Token ids of plain texts, as `tokenizer(texts, add_special_tokens=False).input_ids` gives them, cheaper.

transformers' tokenizer call re-checks its arguments, resets truncation and padding and wraps the result on every
call: on a judge prompt that is about as long as the tokenisation itself. A fast tokenizer's Rust `Tokenizer`
gives the same ids directly, as long as it is set up as that call would set it (no truncation, no padding, the
same special-token splitting); otherwise, and for slow tokenizers, the ordinary call is used.
"""

from __future__ import annotations

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
    return [e.ids for e in rust.encode_batch(list(texts), add_special_tokens=False)]


def bytes_bound(tokenizer) -> bool:
    """Whether no text has more tokens than its UTF-8 bytes plus one (a byte-level BPE without normaliser: every
    token holds at least one byte; plus one for a prefix space). Lets a caller skip tokenising a text that fits
    anyway."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is None or rust.normalizer is not None or type(rust.model).__name__ != "BPE":
        return False
    pre = rust.pre_tokenizer
    return pre is not None and b'"ByteLevel"' in pre.__getstate__()
