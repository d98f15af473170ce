"""`trustreward serve`: the judge over HTTP, for PPO trainers that take a remote reward (OpenRLHF, verl).

- `POST /get_reward`: OpenRLHF's remote reward protocol. `{"query": [...], "prompts": [...], "labels": [...]}`
  -> `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. `query` is the decoded prompt + response (chat
  template applied), `prompts` the prompt as the policy saw it: the response is `query` minus its prompt, with
  end-of-sequence tokens stripped. Every reward is a number (OpenRLHF has no missing value): a failed judgement
  gets the `on_failure` stand-in and counts in `extra_logs["judge/failures"]`; every `extra_logs` value is a
  finite float and every answer has the same keys (OpenRLHF stacks them into one tensor per key).
- Pairwise rewards over per-sample clients: with `group_size=N`, a prompt's samples are held until N arrived
  (or `group_timeout` passed) and judged together (`trainers.server_batching.Groups`).
- `reward="reference"`: each sample against the reference answer in its `labels` entry (OpenRLHF's
  `--label_key`), both orders merged: P(the sample wins) + P(tie) / 2 in [0, 1]. A sample without a usable
  reference is a failure (the `on_failure` stand-in, counted); a request without `labels` answers 400.
- `POST /score`, `POST /compare`: `{"rows": [...]}` in the `trustreward score` / `compare` row format; the rows
  come back with the judge's fields added.
- `POST /verify` (NeMo Gym resources server, also `genrm_compare`'s batch body on `/compare`), `POST /remote_rm`
  (slime): other trainers' protocols on the same per-sample path (`trainers/protocols/`).
- `GET /health`.

Requests arriving together are judged in one call (`trainers.server_batching.Batcher`); a full queue answers
503; `token` requires `Authorization: Bearer TOKEN`; malformed requests answer 4xx with a reason and never take
the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict

from reward.text import as_text

from .fallback import FailurePolicy
from .protocols import Samples, add_routes
from .protocols.nemo_gym import GenRMCompareRequest, genrm_compare
from .server_batching import Batcher, Groups, Outcome, QueueFull, ShuttingDown, TooLarge
from .server_guard import Guard


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: list[str]
    prompts: list[str]
    labels: list[Any] | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = "user"
    content: str


Text = str | Message | list[Message]  # plain text or a conversation, as in `trustreward score` files


class ScoreRow(BaseModel):
    model_config = ConfigDict(extra="allow")  # other columns (ids, ...) come back untouched
    prompt: Text
    response: Text


class CompareRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: Text
    response_a: Text
    response_b: Text


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[ScoreRow]


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[CompareRow]


ERRORS = {
    400: {"description": "Mismatched or empty lists, empty text, or a Host that is not allowed."},
    401: {"description": "Missing or wrong bearer token (`WWW-Authenticate: Bearer`)."},
    413: {"description": "A body over the limit, or more items than one request may hold."},
    422: {"description": "Wrong types, unknown fields, NaN / Infinity, or lone surrogates."},
    503: {"description": "The queue is full, the server is shutting down, or on_failure=retry: retry later."},
}


def response_of(query: str, prompt: str, stops: list[str]) -> str:
    """The response inside an OpenRLHF `query`: the query after its prompt, without trailing end tokens."""
    text = query[len(prompt) :] if query.startswith(prompt) else query
    text = text.rstrip()
    stripped = True
    while stripped:
        stripped = False
        for stop in stops:
            if stop and text.endswith(stop):
                text, stripped = text[: -len(stop)].rstrip(), True
    return text


def extra_logs(outcomes: list[Outcome], latency: float) -> dict[str, float]:
    """One answer's `extra_logs`: always the same keys, each a finite float (counts over the request's samples,
    group figures averaged over them; order consistency = consistent_pairs / compared_pairs)."""
    n = len(outcomes)
    return {
        "judge/failures": float(sum(o.failed for o in outcomes)),
        "judge/lone": float(sum(o.lone for o in outcomes)),
        "judge/incomplete": float(sum(o.incomplete for o in outcomes)),
        "judge/group_size": sum(o.group_size for o in outcomes) / n,
        "judge/compared_pairs": sum(o.compared_pairs for o in outcomes) / n,
        "judge/consistent_pairs": sum(o.consistent_pairs for o in outcomes) / n,
        "judge/latency_s": float(latency),
    }


REWARDS = ("pairwise", "score", "reference")


def option_problems(reward, group_size, group_timeout, on_failure) -> list[str]:
    """What is wrong with the reward options (empty when they are fine)."""
    problems = []
    if reward not in REWARDS:
        problems.append(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    if group_size is not None and (reward != "pairwise" or group_size < 2):
        problems.append(f"group_size needs reward pairwise and at least 2 samples, got {group_size!r}")
    if not group_timeout > 0:
        problems.append(f"group_timeout must be positive seconds, got {group_timeout!r}")
    try:
        FailurePolicy.parse(on_failure)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def create_app(
    judge,
    *,
    reward: str = "pairwise",
    scale: int = 5,
    pairing: str = "all",
    aggregate: str = "mean_win",
    group_size: int | None = None,
    group_timeout: float = 30.0,
    on_failure: str = "group_mean",
    max_batch: int = 64,
    max_wait_s: float = 0.02,
    max_queue: int = 4096,
    max_request_items: int = 1024,
    token: str | None = None,
    max_body_bytes: int = 16 << 20,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The reward server's app (serve it with uvicorn); arguments as `ServeArguments`' flags."""
    problems = option_problems(reward, group_size, group_timeout, on_failure)
    if problems:
        raise ValueError("; ".join(problems))
    batcher = Batcher(judge, reward=reward, scale=scale, pairing=pairing, aggregate=aggregate,
                      on_failure=FailurePolicy.parse(on_failure),
                      max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue,
                      max_request_items=max_request_items)  # fmt: skip
    groups = Groups(batcher, group_size, group_timeout)
    tok = judge.tokenizer
    stops = sorted({t for t in (tok.eos_token, tok.pad_token, "<|im_end|>", "<|endoftext|>", "</s>") if t}, key=len)

    @contextlib.asynccontextmanager
    async def lifespan(app):  # the batching worker lives as long as the server; shutdown stops judging
        task = asyncio.create_task(batcher.run())
        yield
        batcher.close()
        groups.cancel()
        task.cancel()

    app = FastAPI(title="trustreward judge server", lifespan=lifespan)
    app.add_middleware(Guard, token=token, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts)
    secured = [Depends(HTTPBearer(auto_error=False))] if token is not None else []  # the scheme, in the schema

    async def answered(request: Request, work):
        """The work's result; a client that goes away cancels it (its items not yet judged are dropped)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    task.cancel()
                    raise HTTPException(400, "the client went away")
        except QueueFull:
            raise HTTPException(503, "the judge's queue is full; retry later") from None
        except ShuttingDown:
            raise HTTPException(503, "the server is shutting down; retry elsewhere") from None
        except TooLarge as exc:
            raise HTTPException(413, f"{exc}: split the request") from None
        finally:
            if not task.done():
                task.cancel()

    samples = Samples(reward, batcher, groups, answered, lambda text: response_of(text, "", stops))

    @app.get("/health")
    async def health():
        s = batcher.stats
        return {"status": "ok", "queued_items": batcher.pending, "waiting_in_groups": groups.waiting,
                "requests": s.requests, "items": s.items, "judge_calls": s.judge_calls, "groups": s.groups,
                "failures": s.failures, "lone": s.lone, "incomplete": s.incomplete,
                "rejected_full": s.rejected_full, "rejected_large": s.rejected_large,
                "abandoned_items": s.abandoned_items, "isolated_retries": s.isolated_retries}  # fmt: skip

    @app.post("/get_reward", responses=ERRORS, dependencies=secured)
    async def get_reward(body: RewardRequest, request: Request):
        """OpenRLHF's remote reward: one number per query, always (see the module docstring)."""
        if not body.query:
            raise HTTPException(400, "empty request: nothing to judge")
        if len(body.query) != len(body.prompts):
            raise HTTPException(400, f"query has {len(body.query)} items but prompts has {len(body.prompts)}")
        if body.labels is not None and len(body.labels) != len(body.query):
            raise HTTPException(400, f"labels has {len(body.labels)} items, query {len(body.query)}")
        start = time.perf_counter()
        batcher.stats.requests += 1
        responses = [response_of(q, p, stops) for q, p in zip(body.query, body.prompts)]
        if reward == "score":
            work = batcher.submit("score", (body.prompts, responses), len(responses))
        elif reward == "reference":
            if body.labels is None:
                raise HTTPException(400, "reward reference compares each sample with its labels entry; the request "
                                    "has no labels (OpenRLHF: --label_key)")  # fmt: skip
            references = [as_text(label) for label in body.labels]
            work = batcher.submit("reference", (body.prompts, responses, references), len(responses))
        else:
            work = groups.judge(body.prompts, responses)
        outcomes = await answered(request, work)
        rewards = [o.reward for o in outcomes]
        if None in rewards:  # on_failure="retry"
            raise HTTPException(503, "the judge failed on this request; retry")
        return {"rewards": rewards, "scores": rewards, "extra_logs": extra_logs(outcomes, time.perf_counter() - start)}

    async def rows_endpoint(kind: str, body, request: Request):
        columns = ("prompt", "response") if kind == "score" else ("prompt", "response_a", "response_b")
        if not body.rows:
            raise HTTPException(400, "empty request: nothing to judge")
        rows = [row.model_dump(exclude_unset=True) for row in body.rows]
        for i, row in enumerate(rows):
            if any(as_text(row[c]) is None for c in columns):
                raise HTTPException(400, f"rows[{i}]: {', '.join(columns)} must be non-empty text or conversations")
        batcher.stats.requests += 1
        return {"rows": await answered(request, batcher.submit(f"{kind}_rows", rows, len(rows)))}

    @app.post("/score", responses=ERRORS, dependencies=secured)
    async def score(body: ScoreRequest, request: Request):
        """`trustreward score` rows, returned with the judge's fields added."""
        return await rows_endpoint("score", body, request)

    @app.post("/compare", responses=ERRORS, dependencies=secured)
    async def compare(body: CompareRequest | GenRMCompareRequest, request: Request):
        """`trustreward compare` rows, returned with the judge's fields added; or NeMo Gym's `genrm_compare` batch
        (`conversation_history`, `response_objs`: trainers/protocols/nemo_gym.py)."""
        if isinstance(body, GenRMCompareRequest):
            return await genrm_compare(samples, body, request)
        return await rows_endpoint("compare", body, request)

    add_routes(app, samples, secured, ERRORS)  # other trainers' protocols: trainers/protocols/

    app.state.stats = batcher.stats
    app.state.batcher, app.state.groups = batcher, groups
    return app


@dataclass
class ServeArguments:
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (loopback unless told otherwise)."})
    port: int = field(default=8000, metadata={"help": "Port."})
    reward: str = field(
        default="pairwise",
        metadata={"help": "/get_reward: pairwise (within a group) | score | reference (each sample vs its labels)."},
    )
    scale: int = field(default=5, metadata={"help": "Pointwise ratings 1..scale."})
    pairing: str = field(default="all", metadata={"help": "pairwise: all | adaptive | circular | swiss (per group)."})
    aggregate: str = field(default="mean_win", metadata={"help": "pairwise: mean_win | bradley_terry | cycle_free."})
    group_size: int | None = field(
        default=None,
        metadata={"help": "pairwise: hold a prompt's samples until N arrived (per-sample clients: OpenRLHF's "
                  "n_samples_per_prompt, verl's rollout.n); default: each request's samples are the group."},
    )  # fmt: skip
    group_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a group waits for its samples; then judged with what arrived."}
    )
    on_failure: str = field(
        default="group_mean",
        metadata={"help": "A failed judgement's reward: group_mean | value:X | retry (503, the client retries)."},
    )
    max_batch: int = field(default=64, metadata={"help": "Most items judged in one call across requests."})
    max_wait_s: float = field(default=0.02, metadata={"help": "How long a request waits for others to batch with."})
    max_queue: int = field(default=4096, metadata={"help": "Items queued at most; beyond, 503."})
    max_request_items: int = field(default=1024, metadata={"help": "Items in one request at most; beyond, 413."})
    allowed_hosts: str | None = field(
        default=None,
        metadata={"help": "Comma-separated Host names to answer ('*': any); default: loopback names when bound "
                  "to loopback, else any."},
    )  # fmt: skip
    token_env: str | None = field(default=None, metadata={"help": "Env variable with a bearer token to require."})


LOOPBACK = ["127.0.0.1", "localhost", "[::1]", "::1"]


def hosts_for(bind: str, allowed: str | None) -> list[str] | None:
    """The Host names to answer: the flag's, else loopback names on a loopback bind (None: any)."""
    if allowed:
        return [h.strip() for h in allowed.split(",") if h.strip()]
    return LOOPBACK if bind in ("127.0.0.1", "localhost", "::1") else None


def check_options(args: ServeArguments) -> None:
    """Bad flags stop the command before the judge loads, with the reason (exit 2)."""
    import sys

    problems = option_problems(args.reward, args.group_size, args.group_timeout, args.on_failure)
    if problems:
        print("serve: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str]) -> int:
    import os

    import uvicorn
    from trl import TrlParser

    from .judge_args import JudgeArguments

    args, judge_args = TrlParser((ServeArguments, JudgeArguments)).parse_args_and_config(args=argv)
    check_options(args)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise SystemExit(f"serve: --token_env {args.token_env} is not set")
    judge = judge_args.load()
    app = create_app(judge, reward=args.reward, scale=args.scale, pairing=args.pairing, aggregate=args.aggregate,
                     group_size=args.group_size,
                     group_timeout=args.group_timeout, on_failure=args.on_failure, max_batch=args.max_batch,
                     max_wait_s=args.max_wait_s, max_queue=args.max_queue, max_request_items=args.max_request_items,
                     token=token, allowed_hosts=hosts_for(args.host, args.allowed_hosts))  # fmt: skip
    # SIGINT / SIGTERM: stop accepting, give requests in flight 5 s, then stop judging (the call in flight ends).
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
