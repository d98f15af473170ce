"""Text helpers that backends, `Judge` and the trainers share: one definition of what a usable text is.

- `as_text`: a prompt or completion (a string or chat messages) as the plain text the judge reads, or `None`;
- `text_key`: the identity of a text or conversation: how rewards group a prompt's completions, how cleaning
  finds a prompt's candidates and how shards are assigned (so the same prompt is one group everywhere);
- `extend`: a prompt continued by text (text prompts and chat prompts alike);
- `check_texts`: a clear error for anything but a list of non-empty strings;
- `lone_surrogate`: whether a text holds a broken character that no tokenizer or UTF-8 file takes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def as_text(value) -> str | None:
    """Plain text of a prompt or completion (plain string or conversational messages); `None` if unusable.

    A conversation of one user message (after an optional system message) becomes that message; longer
    conversations are written out turn by turn so the judge sees the context.
    """
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in value
    ):
        return None
    turns = [m for m in value if m.get("role") != "system"]
    if len(turns) == 1:
        text = turns[0]["content"]
    else:
        text = "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m['content']}" for m in turns)
    return text if text.strip() else None


def lone_surrogate(value) -> bool:
    """Whether a text, or a conversation's contents, holds a lone surrogate: half of a character, what a cut emoji
    written as `"\\ud83d"` in JSON reads as. No tokenizer takes it and no UTF-8 file can hold it.

    ```python
    >>> lone_surrogate("fine 🙂"), lone_surrogate(json.loads('"cut \\\\ud83d"'))
    (False, True)
    >>> lone_surrogate([{"role": "user", "content": "\\udfff"}])
    True

    ```
    """
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return lone_surrogate(value.get("content"))
    if isinstance(value, list):
        return any(lone_surrogate(m) for m in value)
    return False


def extend(prompt, text: str):
    """A prompt continued by `text`: appended to a text prompt, or to the assistant turn a chat prompt ends with
    (opened if needed), which chat servers continue rather than answer."""
    if isinstance(prompt, str):
        return prompt + text
    if prompt and prompt[-1]["role"] == "assistant":
        return [*prompt[:-1], {"role": "assistant", "content": prompt[-1]["content"] + text}]
    return [*prompt, {"role": "assistant", "content": text}]


def check_texts(name: str, values: Sequence, n: int | None = None) -> list[str]:
    """Raises a clear error unless `values` is a sequence of non-empty strings (of length `n`)."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    if n is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} items, expected {n}")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(v).__name__}")
        if not v.strip():
            raise ValueError(f"{name}[{i}] is empty or whitespace")
    return list(values)


def text_key(value) -> str:
    """A hashable identity for a text or a conversation: a string is itself, messages their canonical JSON.

    ```python
    >>> text_key("What is 2+2?")
    'What is 2+2?'
    >>> text_key([{"role": "user", "content": "Hi"}]) == text_key([{"content": "Hi", "role": "user"}])
    True

    ```
    """
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
