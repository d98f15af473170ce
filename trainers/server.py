"""`trustreward serve`: the judge over HTTP, for PPO trainers that take a remote reward (OpenRLHF, verl).

- `POST /get_reward`: OpenRLHF's remote reward protocol. `{"query": [...], "prompts": [...], "labels": [...]}`
  -> `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. `query` is the decoded prompt + response (chat
  template applied), `prompts` the prompt as the policy saw it: the response is `query` minus its prompt, with
  end-of-sequence tokens stripped. A failed item gets `null` and counts in `extra_logs["judge/failures"]`.
- `POST /score`, `POST /compare`: `{"rows": [...]}` in the `trustreward score` / `compare` row format; the rows
  come back with the judge's fields added.
- `GET /health`.

Requests arriving together are judged in one call (up to `max_batch` items, waiting at most `max_wait_s`); a
full queue answers 503; `token` requires `Authorization: Bearer TOKEN`; malformed requests answer 4xx with a
reason and never take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from .rewards import JudgePairwiseReward, JudgeScoreReward, as_text


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: list[str]
    prompts: list[str]
    labels: list[Any] | None = None


class RowsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]]


@dataclass
class _Job:
    kind: str
    payload: Any
    future: asyncio.Future
    size: int


@dataclass
class Stats:
    requests: int = 0
    items: int = 0
    judge_calls: int = 0
    rejected_full: int = 0
    started: float = field(default_factory=time.time)


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


def create_app(
    judge,
    *,
    reward: str = "pairwise",
    scale: int = 5,
    max_batch: int = 64,
    max_wait_s: float = 0.02,
    max_queue: int = 4096,
    token: str | None = None,
    max_body_bytes: int = 16 << 20,
) -> FastAPI:
    """The reward server's app (serve it with uvicorn)."""
    from .cli import judge_rows

    if reward not in ("pairwise", "score"):
        raise ValueError(f"reward must be 'pairwise' or 'score', got {reward!r}")
    score_reward = JudgeScoreReward(judge, scale=scale)
    pair_reward = JudgePairwiseReward(judge)
    tok = judge.tokenizer
    stops = sorted({t for t in (tok.eos_token, tok.pad_token, "<|im_end|>", "<|endoftext|>", "</s>") if t}, key=len)
    stats = Stats()
    queue: asyncio.Queue[_Job] = asyncio.Queue()
    pending = {"items": 0}

    def run_rewards(jobs: list[_Job]) -> list:
        """One judge call for the batch (a pairwise reward keeps each request's groups apart: one call each)."""
        if reward == "score" or len(jobs) == 1:
            prompts = [p for j in jobs for p in j.payload[0]]
            responses = [r for j in jobs for r in j.payload[1]]
            logs: dict[str, float] = {}
            fn = score_reward if reward == "score" else pair_reward
            rewards = fn(prompts=prompts, completions=responses, log_metric=lambda k, v: logs.__setitem__(k, v))
            out, start = [], 0
            for j in jobs:
                out.append((rewards[start : start + j.size], logs))
                start += j.size
            stats.judge_calls += 1
            return out
        return [r for j in jobs for r in run_rewards([j])]

    def run_rows(kind: str, jobs: list[_Job]) -> list:
        rows = [r for j in jobs for r in j.payload]
        fields = judge_rows(judge, kind, rows, {"scale": scale} if kind == "score" else {})
        stats.judge_calls += 1
        out, start = [], 0
        for j in jobs:
            out.append([{**row, **f} for row, f in zip(j.payload, fields[start : start + j.size])])
            start += j.size
        return out

    async def worker():
        while True:
            first = await queue.get()
            jobs, deadline = [first], time.monotonic() + max_wait_s
            while sum(j.size for j in jobs) < max_batch:  # gather what arrives within the wait
                try:
                    nxt = queue.get_nowait() if time.monotonic() >= deadline else await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - time.monotonic()))  # fmt: skip
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                jobs.append(nxt)
            for kind in ("reward", "score", "compare"):
                batch = [j for j in jobs if j.kind == kind]
                if not batch:
                    continue
                try:
                    fn = run_rewards if kind == "reward" else (lambda b, k=kind: run_rows(k, b))
                    results = await asyncio.to_thread(fn, batch)
                    for j, r in zip(batch, results):
                        j.future.set_result(r)
                except Exception as exc:  # a failed judge call fails its requests, not the server
                    for j in batch:
                        j.future.set_exception(exc)
                finally:
                    pending["items"] -= sum(j.size for j in batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):  # the batching worker lives as long as the server; shutdown cancels it
        task = asyncio.create_task(worker())
        yield
        task.cancel()

    app = FastAPI(title="trustreward judge server", lifespan=lifespan)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        if int(request.headers.get("content-length") or 0) > max_body_bytes:
            return JSONResponse({"detail": f"body over {max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    async def submit(kind: str, payload, size: int):
        if size == 0:
            raise HTTPException(400, "empty request: nothing to judge")
        if pending["items"] + size > max_queue:
            stats.rejected_full += 1
            raise HTTPException(503, "the judge's queue is full; retry later")
        pending["items"] += size
        stats.requests += 1
        stats.items += size
        job = _Job(kind, payload, asyncio.get_running_loop().create_future(), size)
        await queue.put(job)
        return await job.future

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued_items": pending["items"], "requests": stats.requests, "items": stats.items,
                "judge_calls": stats.judge_calls, "rejected_full": stats.rejected_full}  # fmt: skip

    @app.post("/get_reward")
    async def get_reward(body: RewardRequest):
        if len(body.query) != len(body.prompts):
            raise HTTPException(400, f"query has {len(body.query)} items but prompts has {len(body.prompts)}")
        if body.labels is not None and len(body.labels) != len(body.query):
            raise HTTPException(400, f"labels has {len(body.labels)} items, query {len(body.query)}")
        responses = [response_of(q, p, stops) for q, p in zip(body.query, body.prompts)]
        rewards, logs = await submit("reward", (body.prompts, responses), len(responses))
        extra = dict(logs) | {"judge/failures": float(sum(r is None for r in rewards))}
        return {"rewards": rewards, "scores": rewards, "extra_logs": extra}

    async def rows_endpoint(kind: str, body: RowsRequest):
        columns = ("prompt", "response") if kind == "score" else ("prompt", "response_a", "response_b")
        for i, row in enumerate(body.rows):
            missing = [c for c in columns if c not in row]
            if missing:
                raise HTTPException(400, f"rows[{i}] lacks {', '.join(missing)}")
            if any(as_text(row[c]) is None for c in columns):
                raise HTTPException(400, f"rows[{i}]: {', '.join(columns)} must be non-empty text or conversations")
        return {"rows": await submit(kind, body.rows, len(body.rows))}

    @app.post("/score")
    async def score(body: RowsRequest):
        return await rows_endpoint("score", body)

    @app.post("/compare")
    async def compare(body: RowsRequest):
        return await rows_endpoint("compare", body)

    app.state.stats = stats
    return app


@dataclass
class ServeArguments:
    judge: str = field(
        default="embedded", metadata={"help": "Judge spec: 'embedded', a directory, a hub id, openai:URL."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (loopback unless told otherwise)."})
    port: int = field(default=8000, metadata={"help": "Port."})
    reward: str = field(default="pairwise", metadata={"help": "/get_reward: pairwise (within each request) | score."})
    scale: int = field(default=5, metadata={"help": "Pointwise ratings 1..scale."})
    device: str | None = field(default=None, metadata={"help": "Judge device."})
    max_length: int | None = field(default=None, metadata={"help": "Most tokens in one judge prompt."})
    batch_size: int = field(default=32, metadata={"help": "Judge prompts per backend call."})
    max_batch: int = field(default=64, metadata={"help": "Most items judged in one call across requests."})
    max_wait_s: float = field(default=0.02, metadata={"help": "How long a request waits for others to batch with."})
    max_queue: int = field(default=4096, metadata={"help": "Items queued at most; beyond, 503."})
    token_env: str | None = field(default=None, metadata={"help": "Env variable with a bearer token to require."})


def main(argv: list[str]) -> int:
    import os

    import uvicorn
    from trl import TrlParser

    from reward import load_judge

    from .cli import ServedJudgeArguments

    args, served = TrlParser((ServeArguments, ServedJudgeArguments)).parse_args_and_config(args=argv)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise SystemExit(f"serve: --token_env {args.token_env} is not set")
    judge = load_judge(args.judge, device=args.device, max_length=args.max_length, batch_size=args.batch_size,
                       progress=False, **served.load_options(args.judge))  # fmt: skip
    app = create_app(judge, reward=args.reward, scale=args.scale, max_batch=args.max_batch,
                     max_wait_s=args.max_wait_s, max_queue=args.max_queue, token=token)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")  # SIGINT / SIGTERM: graceful shutdown
    return 0
