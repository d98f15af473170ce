"""A judge behind any OpenAI-compatible server (vLLM, SGLang, llama.cpp): label probabilities from logprobs.

Each prompt (ending at the slot) goes to `/v1/completions` with `max_tokens=1` and `logprobs=k` (the prompt is
rendered here with the tokenizer's chat template), or with `endpoint="chat"` to `/v1/chat/completions` with
`logprobs=true, top_logprobs=k` (the messages go as they are, the slot pre-filled as an unfinished assistant turn
that the server continues: llama.cpp does by default, vLLM with `continue_final_message`, which is sent): the top-k
next tokens and their log-probabilities. A label's probability is read along its tokens like the local backend
does (P("47") = P("4") P("7" | "4") P(end | "47")), one follow-up request per label prefix the server listed;
a label whose tokens fall outside the top-k gets no probability (it shows up as missing `valid_mass`), and the
end of a label is the listed mass on tokens that do not continue it (a lower bound).

Requests run concurrently (bounded), with timeouts and retries with exponential backoff on 429, 5xx, malformed
or logprob-less responses and connection errors (tenacity). An item that still fails gets `-inf` for every
label and the reason is logged: the judge then reports it as failed, never as a score.

Rationale mode (`mode="rationale"`) asks the server for a greedy critique first (`max_tokens=rationale_tokens`,
`stop` at the slot, the generated tokens' log-probs for the perplexity method), then reads the slot after it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence

from ..judge import extend

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
ENDPOINTS = ("completions", "chat")


class RetryableError(Exception):
    """A response worth asking again for (rate limit, server error, malformed or incomplete body)."""


def top_logprobs(body: dict) -> dict[str, float]:
    """The first generated token's top-k {token text: logprob}, from either response shape.

    Legacy completions (`logprobs.top_logprobs[0]` a dict, as vLLM returns) or the content list
    (`logprobs.content[0].top_logprobs` a list of {token, logprob}, as llama.cpp and chat completions return).

    ```python
    >>> top_logprobs({"choices": [{"logprobs": {"top_logprobs": [{"5": -0.1, "4": -2.3}]}}]})
    {'5': -0.1, '4': -2.3}

    ```
    """
    try:
        logprobs = body["choices"][0]["logprobs"]
        if isinstance(logprobs.get("content"), list):
            return {t["token"]: float(t["logprob"]) for t in logprobs["content"][0]["top_logprobs"]}
        return {k: float(v) for k, v in logprobs["top_logprobs"][0].items()}
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise RetryableError(f"no top logprobs in the response ({type(exc).__name__}: {exc})") from None


class OpenAIBackend:
    """`JudgeBackend` for an OpenAI-compatible server.

    Args:
        base_url: e.g. "http://127.0.0.1:8080/v1".
        model: the served model's name (sent as `model`).
        tokenizer: the served model's tokenizer (chat template and token counts, for rendering and truncation).
        endpoint: "completions" (text prompts) or "chat" (messages; for servers that only serve chats).
        max_length: the most tokens a judge prompt may hold (the server's context).
        top_logprobs: k of the top-k (servers cap it: vLLM 20 by default, OpenAI 20).
        concurrency: requests in flight at once.
        requests_per_second: client-side rate limit (`None`: none).
        timeout: seconds per request.
        max_retries: attempts after the first, with exponential backoff (0.5 s, 1 s, 2 s, ... up to 8 s).
        api_key_env: environment variable holding the API key (sent as a bearer token, never logged).
    """

    lockstep = False

    def __init__(self, base_url: str, model: str, tokenizer, *, endpoint: str = "completions", max_length: int = 4096,
                 top_logprobs: int = 20, concurrency: int = 8, requests_per_second: float | None = None,
                 timeout: float = 60.0, max_retries: int = 4, api_key_env: str = "OPENAI_API_KEY"):  # fmt: skip
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        self.base_url, self.model, self.tokenizer = base_url.rstrip("/"), model, tokenizer
        self.endpoint, self.chat = endpoint, endpoint == "chat"  # `chat`: `Judge` hands over messages
        self.max_length, self.top_k = max_length, top_logprobs
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.min_interval = 1 / requests_per_second if requests_per_second else 0.0
        self.api_key_env = api_key_env
        self.requests = 0  # sent, retries included
        self.failures = 0  # items given up on

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def _payload(self, prompt, max_tokens: int = 1, stop: Sequence[str] = ()) -> tuple[str, dict]:
        """(path, body) of a request for the next `max_tokens` tokens: the top-k of the first one (label reads),
        or a greedy continuation up to a stop string with its tokens' log-probs (rationale mode)."""
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0}
        if stop:
            body["stop"] = list(stop)
        k = self.top_k if max_tokens == 1 else 1
        if not self.chat:
            return "completions", body | {"prompt": prompt, "logprobs": k}
        body |= {"messages": prompt, "logprobs": True, "top_logprobs": k}
        if prompt[-1]["role"] == "assistant":  # continue the open turn (the slot), do not answer it
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return "chat/completions", body

    async def _post(self, client, prompt, parse, **request):
        """One request with retries and backoff; `parse(body)` raises `RetryableError` on an unusable answer."""
        import httpx
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type((RetryableError, httpx.TransportError)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._pace()
                self.requests += 1
                path, payload = self._payload(prompt, **request)
                response = await client.post(f"{self.base_url}/{path}", json=payload)
                if response.status_code in RETRY_STATUS:
                    raise RetryableError(f"HTTP {response.status_code}")
                response.raise_for_status()
                try:
                    body = response.json()
                except ValueError:
                    raise RetryableError("malformed JSON") from None
                return parse(body)

    async def _pace(self) -> None:
        if self.min_interval:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self.min_interval
            if wait > 0:
                await asyncio.sleep(wait)

    async def _each(self, prompts: Sequence, work):
        """`work(request, prompt)` for every prompt, concurrently: `request(prompt, parse, **options)` sends one
        request through a shared client, at most `concurrency` at a time, paced by the rate limit."""
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency)
        self._next_slot = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(
            headers=_headers(self.api_key_env), timeout=self.timeout, limits=limits
        ) as client:

            async def request(prompt, parse, **options):
                async with gate:
                    return await self._post(client, prompt, parse, **options)

            return await asyncio.gather(*(work(request, p) for p in prompts))

    async def _labels(self, request, prompt, labels: Sequence[str]) -> dict[str, float]:
        """log P(label, then a token that does not continue it) for each label; -inf for all on failure."""
        try:
            cache: dict[str, asyncio.Task] = {}

            def node(path: str):  # top-k after prompt + path, one request per distinct path
                if path not in cache:
                    cache[path] = asyncio.ensure_future(request(extend(prompt, path), top_logprobs))
                return cache[path]

            async def one(label: str) -> float:
                total, path = 0.0, ""
                while path != label:
                    tops = await node(path)
                    step = max((t for t in tops if t and label.startswith(path + t)), key=len, default=None)
                    if step is None:
                        return -math.inf  # outside the top-k: missing mass
                    total += tops[step]
                    path += step
                tops = await node(label)
                ends = [lp for t, lp in tops.items() if not t[:1].isalnum()]
                return total + (math.log(sum(math.exp(lp) for lp in ends)) if ends else -math.inf)

            values = await asyncio.gather(*(one(label) for label in labels))
            return dict(zip(labels, values))
        except Exception as exc:  # this item is lost, the others are not
            self.failures += 1
            logger.warning("judge request failed after retries: %s: %s", type(exc).__name__, exc)
            return {label: -math.inf for label in labels}

    # -- JudgeBackend ------------------------------------------------------------------------------------------

    def label_logprobs(self, prompts: Sequence, labels: Sequence[str]) -> list[dict[str, float]]:
        labels = list(labels)
        return _run(self._each(list(prompts), lambda request, p: self._labels(request, p, labels)))

    def generate(self, prompts: Sequence, max_new_tokens: int, stop: Sequence[str]) -> list[tuple[str, float, int]]:
        """Greedy continuations (rationale mode): (text, sum of its tokens' log-probs, token count) each. A prompt
        that still fails after retries raises: the judge then fails its batch, never guesses a rationale."""

        async def one(request, prompt):
            return await request(prompt, generation, max_tokens=max_new_tokens, stop=stop)

        return _run(self._each(list(prompts), one))


def generation(body: dict) -> tuple[str, float, int]:
    """(text, sum of log-probs, token count) of a generated answer, from either response shape.

    ```python
    >>> generation({"choices": [{"text": " Fine.", "logprobs": {"token_logprobs": [-0.5, -0.25]}}]})
    (' Fine.', -0.75, 2)

    ```
    """
    try:
        choice = body["choices"][0]
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


def _headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0) -> str:
    """The first model an OpenAI-compatible server lists at `GET /models` (vLLM, SGLang and llama.cpp list theirs)."""
    import httpx

    url = f"{base_url.rstrip('/')}/models"
    try:
        response = httpx.get(url, headers=_headers(api_key_env), timeout=timeout)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"cannot read the served model's name from {url} ({exc}); pass model=") from None


def _run(coroutine):
    """Runs a coroutine to completion, also from inside a running event loop (e.g. an async reward call)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
