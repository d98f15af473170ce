"""A judge behind any OpenAI-compatible server (vLLM, SGLang, llama.cpp): label probabilities from logprobs.

Each prompt (ending at the slot) goes to `/v1/completions` with `max_tokens=1` and `logprobs=k` (the prompt is
rendered here with the tokenizer's chat template), or with `endpoint="chat"` to `/v1/chat/completions` with
`logprobs=true, top_logprobs=k` (the messages go as they are, the slot pre-filled as an unfinished assistant turn
that the server continues: llama.cpp does by default, vLLM with `continue_final_message`, which is sent): the top-k
next tokens and their log-probabilities. A label's probability is read along its tokens like the local backend
does (P("47") = P("4") P("7" | "4") P(end | "47")): one follow-up read per label prefix the server listed; a label
whose tokens fall outside the top-k gets no probability (it shows up as missing `valid_mass`), and the end of a
label is the listed mass on tokens that do not continue it (a lower bound).

Batched: the reads go in rounds (the slot of every prompt, then every listed label prefix, ...; with few labels,
as on a 1-5 scale or for verdicts, the slot and every label's end in one round), and a round's
prompts are packed into few `/v1/completions` requests (`prompt: [...]`, at most `prompts_per_request` each; vLLM,
SGLang and llama-server answer one choice per prompt, with `index`). Chat servers take one conversation per request, so
the chat endpoint sends one request per read, concurrently. Requests run on one connection pool (an httpx client
on the backend's own event-loop thread, kept across calls), at most `concurrency` in flight, with timeouts and
retries with exponential backoff on 429, 5xx, malformed or logprob-less responses and connection errors. A
request that still fails is split in halves, each retried, before any item is given up (a bad prompt, e.g. too
long for the server, costs only its own item); an item that still fails gets `-inf` for every label and the
reason is logged: the judge then reports it as failed, never as a score.

Several judge replicas: `base_url` may be a list; requests go round-robin, a retry to the next URL, and a URL that
refuses connections is skipped for `DOWN_S` seconds. A router (vLLM's, SGLang's) is just one URL.

Exact reads (`exact=`, `served_reads`): a label outside the top-k and the unlisted part of a label's end mass are
read exactly where the server allows it: the whole vocabulary listed ("full": vLLM with `--max-logprobs -1`; on
llama.cpp megabytes per read) or label tokens lifted into the top-k by a logit bias and undone ("logit_bias":
servers that report log-probs after the bias: SGLang, llama.cpp with `post_sampling_probs`). Run against the real
llama-server; the vLLM and SGLang paths only against fakes that follow their source. Opt-in, `exact="off"` (the
top-k read) by default: the exact read's label-end reads cost several top-k reads (docs/served-judges.md).
`exact="auto"` probes the server once; where neither works (or on the chat endpoint) it falls back to the top-k
read above, says so once in the log, and `exact_reads` is False
(`Judge` then flags `valid_mass` as a lower bound).

Rationale mode (`mode="rationale"`) asks the server for a greedy critique first (`max_tokens=rationale_tokens`,
`stop` at the slot, the generated tokens' log-probs for the perplexity method), then reads the slot after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from ..text import extend
from . import JudgeBackend, served_reads
from .responses import RequestError, RetryableError, choices, generation, labels_from_top_k, top_entries, top_logprobs

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
ENDPOINTS = ("completions", "chat")
DOWN_S = 10.0  # a replica that refused a connection is skipped this long (while another is up)
READ_AHEAD = 16  # labels with at most this many prefixes (1-10 scales, verdicts) are read in one round


class OpenAIBackend(JudgeBackend):
    """`JudgeBackend` for an OpenAI-compatible server, or several replicas of one.

    Args:
        base_url: e.g. "http://127.0.0.1:8080/v1", or a list of such URLs (replicas, used round-robin).
        model: the served model's name (sent as `model`).
        tokenizer: the served model's tokenizer (chat template and token counts, for rendering and truncation).
        endpoint: "completions" (text prompts) or "chat" (messages; for servers that only serve chats).
        max_length: the most tokens a judge prompt may hold (the server's context).
        top_logprobs: k of the top-k (servers cap it: vLLM 20 by default, OpenAI 20).
        concurrency: requests in flight at once (over all URLs).
        prompts_per_request: the most prompts one `/v1/completions` request holds (chat: always one conversation).
        requests_per_second: client-side rate limit (`None`: none).
        timeout: seconds per request.
        max_retries: attempts after the first, with exponential backoff (0.5 s, 1 s, 2 s, ... up to 8 s).
        api_key_env: environment variable holding the API key (sent as a bearer token, never logged).
        exact: how labels are read (`served_reads.EXACT_MODES`): "off" (default: the top-k read), "auto" (probe the
            server once: "logit_bias", else "full", else "off"), "full" or "logit_bias" (chosen; "logit_bias" still
            probes which fields the server needs, e.g. llama.cpp's `post_sampling_probs`).
        exact_bias: the lift of "logit_bias" reads, in nats.

    `requests` counts requests sent (retries included), `sent` them per URL, `failures` the items given up on,
    `inexact` the items an exact mode still read as a lower bound; `exact_reads` says whether reads are exact.
    """

    def __init__(self, base_url: str | Sequence[str], model: str, tokenizer, *, endpoint: str = "completions",
                 max_length: int = 4096, top_logprobs: int = 20, concurrency: int = 8, prompts_per_request: int = 64,
                 requests_per_second: float | None = None, timeout: float = 60.0, max_retries: int = 4,
                 api_key_env: str = "OPENAI_API_KEY", exact: str = "off", exact_bias: float = 30.0):  # fmt: skip
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        if exact not in served_reads.EXACT_MODES:
            raise ValueError(f"exact must be one of {served_reads.EXACT_MODES}, got {exact!r}")
        if endpoint == "chat" and exact in ("full", "logit_bias"):
            raise ValueError(f'exact={exact!r} reads need endpoint="completions" (token ids); use "auto" or "off"')
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(f"base_url must be one or more http(s) URLs, got {base_url!r}")
        for name, value in (("concurrency", concurrency), ("prompts_per_request", prompts_per_request)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.urls = [u.rstrip("/") for u in urls]
        self.base_url, self.model, self.tokenizer = self.urls[0], model, tokenizer
        self.endpoint, self.chat = endpoint, endpoint == "chat"  # `chat`: `Judge` hands over messages
        self.max_length, self.top_k, self.prompts_per_request = max_length, top_logprobs, prompts_per_request
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.min_interval = 1 / requests_per_second if requests_per_second else 0.0
        self.api_key_env = api_key_env
        self.requests = 0  # sent, retries included
        self.sent: Counter[str] = Counter()  # the same, per URL
        self.failures = 0  # items given up on
        self.exact, self.exact_bias, self.inexact = exact, exact_bias, 0
        self._mode = "off" if exact == "off" or self.chat else None if exact == "auto" else exact
        self._fields: dict | None = None if self._mode == "logit_bias" else {}  # a server's extra read fields
        self._lock = threading.Lock()
        self._loop = None

    def __getstate__(self):  # the event loop, its thread and the connections stay in this process
        caches = ("_vocab_info", "_mask_fields", "_bias_json")  # rebuilt on first use (megabytes for a big vocab)
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_loop", "_client", "_gate", *caches)}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), _loop=None)

    # -- the event loop: one thread, one connection pool, kept across calls ------------------------------------------

    def _run(self, coroutine):
        """Runs `coroutine` on the backend's event loop (started on first use, and again in a forked child) and
        waits for it; works from any thread, also from inside another running loop (e.g. an async reward)."""
        import httpx

        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="openai-judge", daemon=True).start()
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client = httpx.AsyncClient(headers=_headers(self.api_key_env), timeout=self.timeout,
                                                 limits=limits)  # fmt: skip
                self._gate, self._next_slot, self._turn, self._down = None, 0.0, 0, {}
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Closes the connections and stops the event-loop thread (a later call starts them again)."""
        with self._lock:
            if self._loop is not None and self._pid == os.getpid():
                asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def _payload(self, prompts: list, max_tokens: int = 1, stop: Sequence[str] = (), fields: dict | None = None):
        """(path, body) of a request for the next `max_tokens` tokens after each prompt: the top-k of the first one
        (label reads; `fields`: an exact read's count and bias), or a greedy continuation up to a stop string with
        its tokens' log-probs (rationale mode)."""
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0}
        if stop:
            body["stop"] = list(stop)
        k = self.top_k if max_tokens == 1 else 1
        if not self.chat:  # one prompt as a string (what every server takes), several as a list
            body |= {"prompt": prompts[0] if len(prompts) == 1 else prompts, "logprobs": k}
            return "completions", body | (fields or {})
        (messages,) = prompts
        body |= {"messages": messages, "logprobs": True, "top_logprobs": k}
        if messages[-1]["role"] == "assistant":  # continue the open turn (the slot), do not answer it
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return "chat/completions", body

    def _pick(self) -> str:
        """The next URL round-robin, skipping those down (unless all are)."""
        now = time.monotonic()
        for _ in range(len(self.urls)):
            url = self.urls[self._turn % len(self.urls)]
            self._turn += 1
            if self._down.get(url, 0.0) <= now:
                return url
        return url

    async def _post(self, path: str, payload: dict, parse: Callable):
        """One request with retries and backoff, each attempt to the next URL; `parse(body)` raises
        `RetryableError` on an unusable answer. It holds its slot of `concurrency` through the backoff: a
        struggling server gets fewer requests, not more."""
        import httpx

        if self._gate is None:
            self._gate = asyncio.Semaphore(self.concurrency)
        async with self._gate:
            for attempt in range(self.max_retries + 1):
                url = self._pick()
                try:
                    await self._pace()
                    self.requests += 1
                    self.sent[url] += 1
                    response = await self._client.post(f"{url}/{path}", content=self._encode(payload),
                                                       headers={"Content-Type": "application/json"})  # fmt: skip
                    if response.status_code in RETRY_STATUS:
                        raise RetryableError(f"HTTP {response.status_code}")
                    if response.status_code >= 400:
                        raise RequestError(f"HTTP {response.status_code}: {response.text[:200]}")
                    try:
                        body = response.json()
                    except ValueError:
                        raise RetryableError("malformed JSON") from None
                    return parse(body)
                except (RetryableError, httpx.TransportError) as exc:
                    if attempt == self.max_retries:
                        raise
                    if isinstance(exc, httpx.ConnectError):  # nobody there: another replica, right away
                        self._down[url] = time.monotonic() + DOWN_S
                        if any(self._down.get(u, 0.0) <= time.monotonic() for u in self.urls):
                            continue
                    await asyncio.sleep(min(0.5 * 2**attempt, 8.0))

    def _encode(self, payload: dict) -> bytes:
        """The request body: a mask read's large bias (every letter and digit token) encoded once per backend and
        spliced in, as JSON text, where encoding it per request cost most of an exact read's client time."""
        bias = payload.get("logit_bias")
        if bias is None or len(bias) < 1000:
            return json.dumps(payload).encode()
        if self.__dict__.get("_bias_json", (None,))[0] is not bias:
            self._bias_json = (bias, json.dumps(bias))
        head = json.dumps({k: v for k, v in payload.items() if k != "logit_bias"})
        return (head[:-1] + ', "logit_bias": ' + self._bias_json[1] + "}").encode()

    async def _pace(self) -> None:
        if self.min_interval:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self.min_interval
            if wait > 0:
                await asyncio.sleep(wait)

    async def _send(self, prompts: list, parse: Callable, **request) -> list:
        """`parse(choice)` for each prompt, from one request; a request that still fails after its retries is
        split in halves and each sent again, down to single prompts. Returns results, or the exception of each
        prompt that failed alone (or whose server could not be reached at all: splitting cannot help there)."""
        import httpx

        try:
            path, payload = self._payload(prompts, **request)
            # One unusable choice fails the request: retried, then split below.
            return await self._post(path, payload, lambda body: [parse(c) for c in choices(body, len(prompts))])
        except Exception as exc:
            if len(prompts) == 1 or isinstance(exc, httpx.ConnectError):
                return [exc] * len(prompts)
            half = len(prompts) // 2
            first, second = await asyncio.gather(
                self._send(prompts[:half], parse, **request), self._send(prompts[half:], parse, **request)
            )
            return first + second

    async def _batched(self, prompts: list, parse: Callable, **request) -> list:
        """`_send` over all `prompts` in requests of at most `prompts_per_request` (one per conversation for chat),
        at least one per URL so every replica gets a share, concurrently; results in prompt order."""
        size = 1 if self.chat else self.prompts_per_request
        pieces = min(len(prompts), max(-(-len(prompts) // size), len(self.urls)))
        bounds = [len(prompts) * i // pieces for i in range(pieces + 1)]
        sends = [self._send(prompts[a:b], parse, **request) for a, b in zip(bounds, bounds[1:])]
        parts = await asyncio.gather(*sends)
        return [r for part in parts for r in part]

    async def _label_reads(self, prompts: list, labels: list[str]) -> list[dict[str, float]]:
        """Rounds of batched reads: every prompt's slot first, then every label prefix listed so far, until each
        prompt's labels are read to their end (or its request failed). Where the labels have few prefixes, the
        first round reads them all at once (the slot and every label's end: one round trip instead of two; a read
        the labels turn out not to need, e.g. after a label outside the top-k, changes nothing)."""
        if self._mode is None or self._fields is None:
            await self._detect(prompts[0])
        if self._mode != "off":
            return await self._exact_reads(prompts, labels)
        ahead = sorted({label[:n] for label in labels for n in range(len(label) + 1)})
        ahead = ahead if len(ahead) <= READ_AHEAD else [""]
        tops: list[dict[str, dict | Exception]] = [{} for _ in prompts]
        out: list[dict[str, float] | None] = [None] * len(prompts)
        while True:
            wanted = []  # (item, path) to read this round
            for i, node in enumerate(tops):
                if out[i] is not None:
                    continue
                failed = next((v for v in node.values() if isinstance(v, Exception)), None)
                if failed is not None:  # this item is lost, the others are not
                    self.failures += 1
                    logger.warning("judge request failed after retries: %s: %s", type(failed).__name__, failed)
                    out[i] = {label: -math.inf for label in labels}
                    continue
                values, paths = labels_from_top_k(node.get, labels) if node else ({}, ahead)
                if paths:
                    wanted += [(i, path) for path in sorted(paths)]
                else:
                    out[i] = values
            if not wanted:
                return out
            reads = await self._batched([extend(prompts[i], path) for i, path in wanted], top_logprobs)
            for (i, path), read in zip(wanted, reads):
                tops[i][path] = read

    # -- exact reads (served_reads) -----------------------------------------------------------------------------

    @property
    def exact_reads(self) -> bool:
        """True while every label read so far was exact (an exact mode, no item read as a lower bound)."""
        return self._mode != "off" and not self.inexact

    def _vocab(self):
        """`served_reads.vocab_info` of the tokenizer, once."""
        if "_vocab_info" not in self.__dict__:
            self._vocab_info = served_reads.vocab_info(self.tokenizer)
        return self._vocab_info

    async def _detect(self, prompt) -> str:
        """The exact read this server supports, probed once on a real prompt (`exact="auto"`, or which fields a
        chosen "logit_bias" read needs): a token outside the top-k listed once lifted by a bias ("logit_bias"; on
        llama.cpp, whose entries carry ids, with `served_reads.LLAMA_CPP_FIELDS`), else the whole vocabulary listed
        ("full"), else "off"."""
        ids_of, _, _, distinct = self._vocab()
        shapes = []
        parse = lambda choice: served_reads.keyed(shapes.append(top_entries(choice)) or shapes[-1], ids_of)  # noqa
        vocab, k, bias = len(self.tokenizer), self.top_k, self.exact_bias

        async def listed(read, extra=None):
            fields = served_reads.request_fields(read, k, vocab, (), bias) | (extra or {})
            (result,) = await self._send([prompt], parse, fields=fields)
            if isinstance(result, Exception):
                raise result
            return result

        async def lifts(extra) -> bool:
            """A token outside the top-k, lifted, is listed above the top-k's last: reported after the bias (vLLM
            by default lists it too, as the token it then samples, but with its unbiased, lower log-prob)."""
            if extra and not (isinstance(shapes[0], list) and shapes[0] and "id" in shapes[0][0]):
                return False  # not llama.cpp (its entries carry token ids): no such fields to try
            plain = await listed(served_reads.Read((), "plain"), extra)
            token = next(t for t in range(vocab) if t not in plain)
            lifted = await listed(served_reads.Read((), "lift", frozenset([token])), extra)
            return lifted.get(token, -math.inf) >= min(plain.values())

        probes = [("logit_bias", {}, lifts), ("logit_bias", served_reads.LLAMA_CPP_FIELDS, lifts),
                  ("full", {}, lambda _: listed(served_reads.Read((), "full")))]  # fmt: skip
        # The bias first: its requests carry the bias, where a full read's answers carry the whole vocabulary per read
        # (on llama.cpp, 4.7 MB of JSON per read of a 49152-token vocabulary: docs/served-judges.md).
        mode = "off"
        for name, extra, probe in probes if self._mode is None else probes[:2]:
            try:
                answer = await probe(extra)
                if answer is True or (answer and len(answer) >= 0.99 * distinct):  # (texts listed once each)
                    mode, self._fields = name, dict(extra)
                    break
            except Exception as exc:  # e.g. vLLM's HTTP 400 for a count above its --max-logprobs
                logger.info("%s: %s read refused (%s: %s)", self.base_url, name, type(exc).__name__, exc)
        if self._mode == "logit_bias" and mode == "off":
            raise RequestError(f"{self.base_url}: exact='logit_bias', but the server reports log-probs before the "
                               "bias: use exact='auto' (or 'full')")  # fmt: skip
        if mode == "off":
            self._fields = {}
            logger.warning("%s: no exact read (exact=%r): labels are read from the top-%d, labels outside it get "
                           "no probability and valid_mass is a lower bound", self.base_url, self.exact,
                           self.top_k)  # fmt: skip
        else:
            how = " with llama.cpp's post_sampling_probs" if self._fields else ""
            logger.info("%s: labels read exactly (%s%s)", self.base_url, mode, how)
        self._mode = mode
        return mode

    async def _exact_reads(self, prompts: list, labels: list[str]) -> list[dict[str, float]]:
        """Label log-probs by `served_reads.Plan`: rounds of reads (one for most label sets), each kind of read
        (count and bias) one batched request per `prompts_per_request` prompts."""
        ids_of, is_end, mask_ids, _ = self._vocab()
        parse = lambda choice: served_reads.keyed(top_entries(choice), ids_of)  # noqa: E731
        cache = self.__dict__.setdefault("_label_ids", {})
        plans, items = {}, []
        for prompt in prompts:
            ids = served_reads.label_token_ids(self.tokenizer, prompt, labels, cache)
            if ids not in plans:
                plans[ids] = served_reads.Plan(ids, self._mode, is_end.__getitem__, self.top_k, self.exact_bias)
            items.append((plans[ids], {}))
        wanted = [(i, read) for i, (plan, _) in enumerate(items) for read in plan.first_reads()]
        out: list[dict[str, float] | None] = [None] * len(prompts)
        while wanted:
            groups: dict[tuple, list] = {}
            for i, read in wanted:
                groups.setdefault((read.kind, read.lifted), []).append((i, read))
            sends = []
            for group in groups.values():
                read = group[0][1]
                if read.kind != "mask":
                    fields = served_reads.request_fields(read, self.top_k, len(self.tokenizer), (), self.exact_bias)
                    fields |= self._fields
                elif "_mask_fields" in self.__dict__:  # the same dict every time: its JSON is kept (`_encode`)
                    fields = self._mask_fields
                else:
                    fields = served_reads.request_fields(read, self.top_k, 0, mask_ids, 0.0) | self._fields
                    self._mask_fields = fields
                texts = [extend(prompts[i], self.tokenizer.decode(list(read.node))) for i, read in group]
                sends.append(self._batched(texts, parse, fields=fields))
            for group, results in zip(groups.values(), await asyncio.gather(*sends)):
                for (i, read), result in zip(group, results):
                    items[i][1][read] = result
            wanted = []
            for i, (plan, got) in enumerate(items):
                if out[i] is not None:
                    continue
                failed = next((v for v in got.values() if isinstance(v, Exception)), None)
                if failed is not None:
                    self.failures += 1
                    logger.warning("judge request failed after retries: %s: %s", type(failed).__name__, failed)
                    out[i] = {label: -math.inf for label in labels}
                    continue
                values, more = plan.labels(got)
                if more:
                    wanted += [(i, read) for read in more]
                    continue
                if any(math.isnan(v) for v in values):  # a label token or end the reads could not pin down
                    self.inexact += 1
                    logger.warning("an item's labels could not all be read exactly: those are read as 0 (a lower "
                                   "bound of valid_mass)")  # fmt: skip
                    values = [-math.inf if math.isnan(v) else v for v in values]
                out[i] = dict(zip(labels, values))
        return out

    # -- JudgeBackend ------------------------------------------------------------------------------------------

    def label_logprobs(self, prompts: Sequence, labels: Sequence[str]) -> list[dict[str, float]]:
        prompts, labels = list(prompts), list(labels)
        return self._run(self._label_reads(prompts, labels)) if prompts else []

    def generate(self, prompts: Sequence, max_new_tokens: int, stop: Sequence[str]) -> list[tuple[str, float, int]]:
        """Greedy continuations (rationale mode): (text, sum of its tokens' log-probs, token count) each. A prompt
        that still fails after retries raises: the judge then fails its batch, never guesses a rationale."""
        if not prompts:
            return []
        out = self._run(self._batched(list(prompts), generation, max_tokens=max_new_tokens, stop=stop))
        for result in out:
            if isinstance(result, Exception):
                raise result
        return out


def _headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(base_url: str | Sequence[str], api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0) -> str:
    """The first model an OpenAI-compatible server lists at `GET /models` (vLLM, SGLang and llama.cpp list theirs);
    with several URLs, the first that answers."""
    import httpx

    errors = []
    for url in [base_url] if isinstance(base_url, str) else base_url:
        url = f"{url.rstrip('/')}/models"
        try:
            response = httpx.get(url, headers=_headers(api_key_env), timeout=timeout)
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            errors.append(f"{url} ({exc})")
    raise ValueError(f"cannot read the served model's name from {', '.join(errors)}; pass model=")
