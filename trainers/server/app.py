"""The reward server's routes: the judge over HTTP, for PPO trainers that take a remote reward (OpenRLHF, verl).

- `POST /get_reward`: OpenRLHF's remote reward protocol. `{"query": [...], "prompts": [...], "labels": [...]}`
  -> `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. `query` is the decoded prompt + response (chat
  template applied), `prompts` the prompt as the policy saw it: the response is `query` minus its prompt, with
  end-of-sequence tokens stripped. Every reward is a number (OpenRLHF has no missing value): a failed judgement
  gets the `on_failure` stand-in and counts in `extra_logs["judge/failures"]`; every `extra_logs` value is a
  finite float and every answer has the same keys (OpenRLHF stacks them into one tensor per key).
- Pairwise rewards over per-sample clients: with `group_size=N`, a prompt's samples are held until N arrived
  (or `group_timeout` passed) and judged together (`holding.Groups`: retries take over their gone twin's place
  and judgement); every group complete at the same time goes to the engine in one call (`batching.Batcher`).
  A lone sample gets 0.5 (`reward.group_judging.NEUTRAL_WIN`, its would-be peers' mean), counted.
- Deadline: every `/get_reward` is answered within `deadline_s` (150 s, below OpenRLHF's 180 s): a sample not
  judged by then gets the `on_failure` stand-in (`group_mean`: 0.5; `value:X`: X; `retry`: 503, and the retry
  takes over the sample's place), counted in `judge/failures` and `/health`'s `late`.
- `reward="reference"`: each sample against the reference answer in its `labels` entry (OpenRLHF's
  `--label_key`), both orders merged: P(the sample wins) + P(tie) / 2 in [0, 1]. A sample without a usable
  reference is a failure (the `on_failure` stand-in, counted); a request without `labels` answers 400.
- `reward="rubric"`: each sample's rubric reward on [0, 1] (`Judge.rubric`, `rubric_mode` explicit | implicit |
  pairwise), the rubric in its `labels` entry as JSON text (OpenRLHF's `--label_key` column holding the rubric;
  pairwise: an object with the criteria and the anchor answer under `"reference"`, see `protocols.rubric_labels`).
  A label that is not a rubric answers 400 naming the sample and the problem, never a 0; a failed judgement (a
  criterion the judge failed to read) gets the `on_failure` stand-in, counted (`group_mean` alone: 0.5, the
  middle of [0, 1], and in pairwise mode "as good as the anchor").
- `POST /score`, `POST /compare`: `{"rows": [...]}` in the `trustreward score` / `compare` row format; the rows
  come back with the judge's fields added.
- `POST /verify` (NeMo Gym resources server, also `genrm_compare`'s batch body on `/compare`), `POST /remote_rm`
  (slime): other trainers' protocols on the same per-sample path (`trainers/protocols/`).
- `GET /health`.

Requests arriving together are judged in one call (`batching.Batcher`); a full queue (items, or held bytes)
answers 503; `token` requires `Authorization: Bearer TOKEN`; malformed requests answer 4xx with a reason and never take
the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBearer

from reward.group_judging import GroupJudge, neutral
from reward.text import as_text

from ..fallback import FailurePolicy
from ..protocols import Samples, add_routes, rubric_labels
from ..protocols.nemo_gym import GenRMCompareRequest, genrm_compare
from .batching import Batcher, QueueFull, SampleReward, ShuttingDown, TooLarge
from .guard import Guard
from .holding import Groups
from .models import ERRORS, CompareRequest, Health, RewardRequest, RewardResponse, RowsResponse, ScoreRequest

logger = logging.getLogger(__name__)
SERVE_REWARDS = ("pairwise", "score", "reference", "rubric")  # what /get_reward computes


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


def extra_logs(outcomes: list[SampleReward], latency: float) -> dict[str, float]:
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


def option_problems(
    reward, group_size, group_timeout, on_failure, deadline_s=150.0, rubric_mode="explicit"
) -> list[str]:
    """What is wrong with the reward options (empty when they are fine): checked once, where the app is built (and
    by `serve` before the judge loads)."""
    from reward.rubric_judging import RUBRIC_MODES

    problems = []
    if reward not in SERVE_REWARDS:
        problems.append(f"reward must be one of {', '.join(SERVE_REWARDS)}, got {reward!r}")
    if rubric_mode not in RUBRIC_MODES:
        problems.append(f"rubric_mode must be one of {', '.join(RUBRIC_MODES)}, got {rubric_mode!r}")
    if group_size is not None and (reward != "pairwise" or group_size < 2):
        problems.append(f"group_size needs reward pairwise and at least 2 samples, got {group_size!r}")
    if not (isinstance(group_timeout, int | float) and 0 < group_timeout < float("inf")):
        problems.append(f"group_timeout must be positive seconds, got {group_timeout!r}")
    if not (isinstance(deadline_s, int | float) and 0 < deadline_s < float("inf")):
        problems.append(f"deadline_s must be positive seconds, got {deadline_s!r}")
    elif group_size is not None and group_timeout >= deadline_s:
        problems.append(f"group_timeout ({group_timeout} s) must be below deadline_s ({deadline_s} s)")
    try:
        FailurePolicy.parse(on_failure)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def limit_problems(scale, pairing, aggregate, max_batch, max_wait_s, max_queue, max_request_items) -> list[str]:
    """What is wrong with the judging and queue options (`max_batch 0` hung the first request and the server). The
    judging options are checked by the engine that will use them (`GroupJudge`), so the rules live in one place."""
    import math

    problems = []
    try:
        GroupJudge(pairing=pairing, aggregate=aggregate, scale=scale)
    except ValueError as exc:
        problems.append(str(exc))
    for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_request_items", max_request_items)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(max_wait_s, int | float) and math.isfinite(max_wait_s) and max_wait_s >= 0):
        problems.append(f"max_wait_s must be finite seconds >= 0, got {max_wait_s!r}")
    return problems


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def refusal(exc: Exception) -> HTTPException:
    """The HTTP answer to a request the queue cannot take."""
    if isinstance(exc, QueueFull):
        return HTTPException(503, "the judge's queue is full; retry later")
    if isinstance(exc, ShuttingDown):
        return HTTPException(503, "the server is shutting down; retry elsewhere")
    return HTTPException(413, f"{exc}: split the request")


def create_app(
    judge,
    *,
    reward: str = "pairwise",
    scale: int = 5,
    pairing: str = "all",
    aggregate: str | None = None,
    group_size: int | None = None,
    group_timeout: float = 30.0,
    on_failure: str = "group_mean",
    max_batch: int = 64,
    max_wait_s: float = 0.02,
    max_queue: int = 4096,
    max_request_items: int = 1024,
    deadline_s: float = 150.0,
    max_held_bytes: int = 256 << 20,
    token: str | None = None,
    max_body_bytes: int = 16 << 20,
    allowed_hosts: list[str] | None = None,
    rubric_mode: str = "explicit",
) -> FastAPI:
    """The reward server's app (serve it with uvicorn); arguments as `ServeArguments`' flags."""
    problems = option_problems(reward, group_size, group_timeout, on_failure, deadline_s, rubric_mode)
    problems += limit_problems(scale, pairing, aggregate, max_batch, max_wait_s, max_queue, max_request_items)
    if problems:
        raise ValueError("; ".join(problems))
    policy = FailurePolicy.parse(on_failure)
    batcher = Batcher(judge, reward=reward, scale=scale, on_failure=policy, max_batch=max_batch,
                      max_wait_s=max_wait_s, max_queue=max_queue, max_request_items=max_request_items,
                      engine=GroupJudge(pairing=pairing, aggregate=aggregate), rubric_mode=rubric_mode)  # fmt: skip
    groups = Groups(batcher, group_size, group_timeout, keep_s=max(deadline_s, 2 * group_timeout),
                    max_bytes=max_held_bytes, max_chars=16 * judge.backend.max_length)  # fmt: skip
    tok = judge.tokenizer
    stops = sorted({t for t in (tok.eos_token, tok.pad_token, "<|im_end|>", "<|endoftext|>", "</s>") if t}, key=len)
    stand_in = policy.value if policy.kind == "value" else neutral(reward, scale)

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

    async def answered(request: Request, work, *, deadline: float | None = None, on_gone=None):
        """The work's result; a client that goes away cancels it (its items not yet judged are dropped), or with
        `on_gone` hands it over (`on_gone()` is called, the work goes on). At `deadline` (monotonic seconds) the
        work stops waiting: `TimeoutError`. The disconnect is awaited, not polled: a thousand waiting requests
        cost the event loop nothing."""
        task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected(request))
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({task, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if gone in done:
                if on_gone is not None:
                    on_gone()
                raise HTTPException(400, "the client went away")
            raise TimeoutError
        except (QueueFull, ShuttingDown, TooLarge) as exc:
            raise refusal(exc) from None
        finally:
            for t in (task, gone):
                if not t.done():
                    t.cancel()

    @app.get("/health", response_model=Health)
    async def health():
        s = batcher.stats
        return Health(status="ok", queued_items=batcher.pending, waiting_in_groups=groups.waiting,
                      held_bytes=groups.held_bytes, requests=s.requests, items=s.items, judge_calls=s.judge_calls,
                      groups=s.groups, failures=s.failures, lone=s.lone, incomplete=s.incomplete, late=s.late,
                      retries_joined=s.retries_joined, rejected_full=s.rejected_full,
                      rejected_large=s.rejected_large, abandoned_items=s.abandoned_items,
                      degraded=groups.degraded)  # fmt: skip

    def late(n: int) -> list[SampleReward]:
        """The stand-ins of samples not judged by the deadline (counted; under `retry`: a 503)."""
        batcher.stats.late += n
        batcher.stats.failures += n
        logger.warning("%d sample(s) not judged within deadline_s=%s: answered with the stand-in", n, deadline_s)
        if policy.kind == "retry":
            raise HTTPException(503, "not judged within the deadline; retry (the retry takes this sample's place)")
        return [SampleReward(stand_in, failed=True) for _ in range(n)]

    async def pairwise(request: Request, prompts: list, queries: list, responses: list[str], deadline: float):
        """The samples held with their prompt's peers (`queries`: each sample's identity for retries)."""
        try:
            members = groups.join(prompts, queries, responses)
        except (QueueFull, ShuttingDown, TooLarge) as exc:  # refused before anything was held
            raise refusal(exc) from None
        waiters = [m.waiter for m in members]

        async def results():  # waits without owning the waiters: stopping it leaves the judgements to a retry
            await asyncio.wait(waiters)
            return [w.result() for w in waiters]

        try:
            return await answered(request, results(), deadline=deadline, on_gone=lambda: groups.leave(members))
        except TimeoutError:
            groups.leave(members)  # a retry may still take their places and judgements
            outcomes = [w.result() if w.done() and not w.exception() else None for w in waiters]
            stand_ins = iter(late(outcomes.count(None)))
            return [o if o is not None else next(stand_ins) for o in outcomes]

    @app.post("/get_reward", responses=ERRORS, dependencies=secured, response_model=RewardResponse)
    async def get_reward(body: RewardRequest, request: Request):
        """OpenRLHF's remote reward: one number per query, always (see the module docstring)."""
        start = time.perf_counter()
        deadline = time.monotonic() + deadline_s
        if not body.query:
            raise HTTPException(400, "empty request: nothing to judge")
        if len(body.query) != len(body.prompts):
            raise HTTPException(400, f"query has {len(body.query)} items but prompts has {len(body.prompts)}")
        if body.labels is not None and len(body.labels) != len(body.query):
            raise HTTPException(400, f"labels has {len(body.labels)} items, query {len(body.query)}")
        batcher.stats.requests += 1
        responses = [response_of(q, p, stops) for q, p in zip(body.query, body.prompts)]
        if reward == "pairwise":
            outcomes = await pairwise(request, body.prompts, body.query, responses, deadline)
        else:
            if reward == "score":
                work = batcher.submit("score", (body.prompts, responses), len(responses))
            elif reward == "rubric":
                rubrics, anchors = rubric_labels(body.labels, rubric_mode)
                anchors = anchors or [None] * len(responses)
                work = batcher.submit("rubric", (body.prompts, responses, rubrics, anchors), len(responses))
            else:
                if body.labels is None:
                    raise HTTPException(400, "reward reference compares each sample with its labels entry; the "
                                        "request has no labels (OpenRLHF: --label_key)")  # fmt: skip
                references = [as_text(label) for label in body.labels]
                work = batcher.submit("reference", (body.prompts, responses, references), len(responses))
            try:
                outcomes = await answered(request, work, deadline=deadline)
            except TimeoutError:
                outcomes = late(len(responses))
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

    @app.post("/score", responses=ERRORS, dependencies=secured, response_model=RowsResponse)
    async def score(body: ScoreRequest, request: Request):
        """`trustreward score` rows, returned with the judge's fields added."""
        return await rows_endpoint("score", body, request)

    samples = Samples(reward, batcher, answered, lambda text: response_of(text, "", stops), pairwise, deadline_s,
                      rubric_mode)  # fmt: skip

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
