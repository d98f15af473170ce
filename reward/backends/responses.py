"""What an OpenAI-compatible server's answer says: its choices in prompt order, the top-k log-probs at the first
generated token in either response shape (legacy completions, the content list of chat and llama.cpp), a greedy
continuation, and labels read from top-k lists. How to ask (requests, retries, exact reads) is `openai.py`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


class RetryableError(Exception):
    """A response worth asking again for (rate limit, server error, malformed or incomplete body)."""


class RequestError(Exception):
    """A response not worth asking again for as it is (e.g. HTTP 400): a smaller batch may still pass."""


def top_entries(choice: dict) -> dict | list:
    """The first generated token's listed top-k as the server wrote them: a {text: logprob} dict (legacy
    completions) or a list of {token, logprob, ...} (the content shape; llama.cpp adds each token's `id`)."""
    try:
        logprobs = choice["logprobs"]
        if isinstance(logprobs.get("content"), list):
            first = logprobs["content"][0]  # llama.cpp with `post_sampling_probs`: "top_probs", probabilities
            return first["top_logprobs"] if "top_logprobs" in first or "top_probs" not in first else first["top_probs"]
        return logprobs["top_logprobs"][0]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise RetryableError(f"no top logprobs in the response ({type(exc).__name__}: {exc})") from None


def top_logprobs(choice: dict) -> dict[str, float]:
    """The first generated token's top-k {token text: logprob} of one choice, from either response shape.

    Legacy completions (`logprobs.top_logprobs[0]` a dict, as vLLM returns) or the content list
    (`logprobs.content[0].top_logprobs` a list of {token, logprob}, as llama.cpp and chat completions return).

    ```python
    >>> top_logprobs({"index": 0, "logprobs": {"top_logprobs": [{"5": -0.1, "4": -2.3}]}})
    {'5': -0.1, '4': -2.3}

    ```
    """
    entries = top_entries(choice)
    try:
        if isinstance(entries, list):
            return {t["token"]: float(t["logprob"]) for t in entries}
        return {k: float(v) for k, v in entries.items()}
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise RetryableError(f"no top logprobs in the response ({type(exc).__name__}: {exc})") from None


def generation(choice: dict) -> tuple[str, float, int]:
    """(text, sum of log-probs, token count) of one generated choice, from either response shape.

    ```python
    >>> generation({"text": " Fine.", "logprobs": {"token_logprobs": [-0.5, -0.25]}})
    (' Fine.', -0.75, 2)

    ```
    """
    try:
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        logprobs = choice["logprobs"]
        if isinstance(logprobs.get("content"), list):
            values = [float(t["logprob"]) for t in logprobs["content"]]
        else:
            values = [float(v) for v in logprobs["token_logprobs"] if v is not None]
        if not isinstance(text, str):
            raise TypeError("the text is not a string")
        return text, sum(values), len(values)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise RetryableError(
            f"no generated text with log-probs in the response ({type(exc).__name__}: {exc})"
        ) from None


def choices(body: dict, n: int) -> list[dict]:
    """The `n` choices of a response in prompt order (by `index` where the server gives one).

    ```python
    >>> choices({"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}, 2)
    [{'index': 0, 'text': 'a'}, {'index': 1, 'text': 'b'}]

    ```
    """
    try:
        listed = list(body["choices"])
        if all("index" in c for c in listed):
            listed.sort(key=lambda c: c["index"])
            if [c["index"] for c in listed] != list(range(n)):
                raise ValueError(f"indices {[c['index'] for c in listed]}")
        if len(listed) != n:
            raise ValueError(f"{len(listed)} choices")
        return listed
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise RetryableError(f"expected {n} choices ({type(exc).__name__}: {exc})") from None


def labels_from_top_k(node: Callable[[str], dict | None], labels: Sequence[str]) -> tuple[dict[str, float], set[str]]:
    """Label log-probs from the top-k after each path, as far as the reads so far (`node(path)`, `None` if not read
    yet) allow: ({label: log-prob} of the labels read to the end, {paths still to read}).

    ```python
    >>> tops = {"": {"4": -0.1, "7": -2.0}, "4": {"]": -0.2, "7": -1.0}}
    >>> labels_from_top_k(tops.get, ["4", "47", "5"])
    ({'4': -0.30000000000000004, '5': -inf}, {'47'})

    ```
    """
    values, wanted = {}, set()
    for label in labels:
        total, path = 0.0, ""
        while (tops := node(path)) is not None:
            if path == label:  # the end: listed mass on tokens that do not continue the label
                ends = [lp for t, lp in tops.items() if not t[:1].isalnum()]
                values[label] = total + (math.log(sum(math.exp(lp) for lp in ends)) if ends else -math.inf)
                break
            step = max((t for t in tops if t and label.startswith(path + t)), key=len, default=None)
            if step is None:
                values[label] = -math.inf  # outside the top-k: missing mass
                break
            total, path = total + tops[step], path + step
        else:
            wanted.add(path)
    return values, wanted
