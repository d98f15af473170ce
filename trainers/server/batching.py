"""The reward server's batching: one worker that hands the judge what arrived together.

- `Batcher`: a queue of jobs, the count of items waiting (beyond `max_queue`: `QueueFull`, a 503), and one
  worker that gathers the jobs arriving within `max_wait_s` and makes the judge calls in a thread, one at a time
  (a judge is not thread-safe). Per-sample jobs (`score`, `reference`, `rubric`, rows) are taken up to `max_batch`
  items a round, fairly; every complete group waiting is taken whole, and all of them go to the engine in one call
  (`reward.group_judging.GroupJudge`: one judge call, which the backend batches by its own budget).
- The judge isolates a failing prompt itself (`Judge` splits a failed backend call until the failing prompts are
  alone), so a bad item costs only its own reward here.

Every judged sample ends as a `SampleReward` whose reward is a number unless the failure policy is `retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from reward.group_judging import ANCHOR, NEUTRAL_WIN, Group, GroupJudge, neutral
from reward.text import as_text

from ..fallback import FailurePolicy
from ..reward_funcs import JudgeScoreReward

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More items (or held bytes) than the server takes would be waiting: retry later (503)."""


class TooLarge(Exception):
    """A request that can never be taken (over `max_request_items` or `max_queue`): 413, retrying cannot help."""


class ShuttingDown(Exception):
    """The server stopped judging (503)."""


@dataclass
class SampleReward:
    """One sample's reward and how it was reached (the server's `extra_logs` are built from these)."""

    reward: float | None  # None only under on_failure="retry"
    failed: bool = False  # no judgement: the reward is the failure policy's stand-in
    lone: bool = False  # no peer: `NEUTRAL_WIN`, its would-be peers' mean
    incomplete: bool = False  # its group was judged before `group_size` samples arrived
    group_size: int = 1
    compared_pairs: float = 0.0  # pairs of its group judged in both orders
    consistent_pairs: float = 0.0  # ... of which the two orders agreed


@dataclass
class Stats:
    requests: int = 0
    items: int = 0
    judge_calls: int = 0
    rejected_full: int = 0
    rejected_large: int = 0
    abandoned_items: int = 0
    failures: int = 0
    lone: int = 0
    incomplete: int = 0
    groups: int = 0
    late: int = 0  # samples answered with the stand-in at the deadline
    retries_joined: int = 0  # retried samples that took over their gone twin's place (and judgement)
    started: float = field(default_factory=time.time)


KINDS = ("score", "reference", "rubric", "group", "score_rows", "compare_rows")
PER_SAMPLE = ("score", "reference", "rubric")  # rewards of samples judged one by one (failures filled per prompt)


@dataclass(eq=False)
class _Job:
    kind: str  # one of KINDS
    payload: Any  # score: (prompts, responses); reference: (prompts, responses, references); rubric: (prompts,
    # responses, parsed rubrics, anchors or None); group: (prompt, responses, incomplete); rows: the rows
    future: asyncio.Future
    size: int
    taken: int = 0  # items handed to the worker so far (a large job is judged piece by piece)
    done: int = 0
    results: list = field(default_factory=list)

    def part(self, start: int, end: int):
        if self.kind == "group":
            return self.payload
        if self.kind in PER_SAMPLE:
            return tuple(column[start:end] for column in self.payload)
        return self.payload[start:end]


@dataclass
class _Piece:
    job: _Job
    start: int
    end: int

    @property
    def payload(self):
        return self.job.part(self.start, self.end)


class Batcher:
    """The judge behind one queue (see the module docstring).

    Fair: each worker round takes an equal share of `max_batch` from every waiting per-sample request (a request
    of thousands of rows is judged piece by piece, so a small one never waits behind all of it); the rest of a
    request whose client went away is dropped.

    Args:
        judge: a `reward.Judge`.
        reward: "pairwise", "score", "reference" or "rubric" (what `/get_reward` computes).
        scale: pointwise ratings 1..scale.
        on_failure: a `FailurePolicy`.
        max_batch, max_wait_s, max_queue: per-sample items per judge call, how long the first job waits for
            others, items waiting at most.
        max_request_items: most items in one request (beyond: `TooLarge`).
        engine: the pairwise reward's `GroupJudge` (pairing, aggregate).
        rubric_mode: the rubric reward's mode (`reward.rubric_judging.RUBRIC_MODES`).
    """

    def __init__(self, judge, *, reward: str, scale: int, on_failure: FailurePolicy, max_batch: int,
                 max_wait_s: float, max_queue: int, max_request_items: int | None = None,
                 engine: GroupJudge | None = None, rubric_mode: str = "explicit"):  # fmt: skip
        self.judge, self.reward, self.scale, self.on_failure = judge, reward, scale, on_failure
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.max_request_items = min(max_request_items or max_queue, max_queue)
        self.score_reward = JudgeScoreReward(judge, scale=scale) if reward == "score" else None
        self.engine = engine or GroupJudge()
        self.rubric_mode = rubric_mode
        self.jobs: list[_Job] = []  # jobs with items not yet taken, oldest first
        self.wake = asyncio.Event()
        self.closing = False
        self.pending = 0  # items reserved: queued, held in a group, or being judged
        self.stats = Stats()

    # -- admission -------------------------------------------------------------------------------------------
    def reserve(self, size: int) -> None:
        if self.closing:
            raise ShuttingDown
        if size > self.max_request_items:
            self.stats.rejected_large += 1
            raise TooLarge(f"{size} items in one request; at most {self.max_request_items}")
        if self.pending + size > self.max_queue:
            self.stats.rejected_full += 1
            raise QueueFull
        self.pending += size
        self.stats.items += size

    async def submit(self, kind: str, payload, size: int, reserved: bool = False):
        """Queue a job and wait for its result (`reserved`: its items were counted by `reserve` already).
        Cancelling the wait (a client that went away) drops the job's items not yet judged."""
        if not reserved:
            self.reserve(size)
        job = _Job(kind, payload, asyncio.get_running_loop().create_future(), size, results=[None] * size)
        self.jobs.append(job)
        self.wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # its client went away: free its places now, not after the call in flight
            self._drop(job)
            raise

    def close(self) -> None:
        """Stop judging: waiting jobs fail with `ShuttingDown` (the call in flight finishes in its thread)."""
        self.closing = True
        self.wake.set()
        for job in self.jobs:
            if not job.future.done():
                job.future.set_exception(ShuttingDown())
        self.jobs.clear()

    # -- the worker ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.closing:
            if not self._untaken():
                self.wake.clear()
                await self.wake.wait()
                continue
            deadline = time.monotonic() + self.max_wait_s
            while self._untaken() < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self.wake.clear()  # gather what arrives within the wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), left)
            pieces = self._take()
            for kind in KINDS:
                part = [p for p in pieces if p.job.kind == kind]
                if not part or self.closing:
                    continue
                try:
                    results = await asyncio.to_thread(self._call, kind, part)
                except Exception as exc:  # a failed call fails its requests, not the server
                    results = [exc] * len(part)
                for piece, result in zip(part, results):
                    self.pending -= piece.end - piece.start
                    self._deliver(piece, result)

    def _untaken(self) -> int:
        """Items waiting to be taken; drops the jobs whose client went away."""
        for job in [j for j in self.jobs if j.future.done()]:
            self._drop(job)
        return sum(j.size - j.taken for j in self.jobs)

    def _drop(self, job: _Job) -> None:
        """Forget a job's items not yet taken (those being judged are released when their call ends)."""
        if job in self.jobs:
            self.jobs.remove(job)
            dropped = job.size - job.taken
            job.taken = job.size
            self.pending -= dropped
            self.stats.abandoned_items += dropped

    def _take(self) -> list[_Piece]:
        """Every waiting group whole, and an equal share of `max_batch` items from each waiting per-sample job. No
        job takes more than its share while others wait, so a request's latency grows with the number of
        requests, not their sizes."""
        pieces = [_Piece(job, 0, job.size) for job in self.jobs if job.kind == "group"]
        others = [job for job in self.jobs if job.kind != "group"]
        budget, share = self.max_batch, max(1, self.max_batch // max(1, len(others)))
        for job in others:
            n = min(job.size - job.taken, share, budget)
            if n == 0:
                continue
            pieces.append(_Piece(job, job.taken, job.taken + n))
            job.taken += n
            budget -= n
        for piece in pieces:
            piece.job.taken = max(piece.job.taken, piece.end)
        self.jobs = [job for job in self.jobs if job.taken < job.size]
        return pieces

    def _deliver(self, piece: _Piece, result) -> None:
        job = piece.job
        if job.future.done():  # its client went away
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
            return
        job.results[piece.start : piece.end] = result
        job.done += piece.end - piece.start
        if job.kind in (*PER_SAMPLE, "group"):  # counted once, when delivered
            self.stats.groups += job.kind == "group"
            for o in result:
                self.stats.failures += o.failed
                self.stats.lone += o.lone
                self.stats.incomplete += o.incomplete
        if job.done == job.size:
            job.future.set_result(job.results)

    # -- judge calls (in the worker thread) ------------------------------------------------------------------
    def _call(self, kind: str, part: list[_Piece]) -> list:
        self.stats.judge_calls += 1
        if kind == "score":
            results = self._score(part)
        elif kind == "reference":
            results = self._reference(part)
        elif kind == "rubric":
            results = self._rubric(part)
        elif kind == "group":
            return self._groups([p.payload for p in part])
        else:
            return self._rows(kind.removesuffix("_rows"), part)
        return [self._fill(piece, result) for piece, result in zip(part, results)]

    def _split(self, part: list[_Piece], flat: list) -> list[list]:
        out, start = [], 0
        for p in part:
            out.append(flat[start : start + p.end - p.start])
            start += p.end - p.start
        return out

    def _rows(self, command: str, part: list[_Piece]) -> list:
        from ..judge_file import judge_rows

        rows = [r for p in part for r in p.payload]
        fields = judge_rows(self.judge, command, rows, {"scale": self.scale} if command == "score" else {})
        return self._split(part, [{**row, **f} for row, f in zip(rows, fields)])

    def _score(self, part: list[_Piece]) -> list[list[SampleReward]]:
        """Pointwise rewards for every piece's (prompts, responses) in one call (failures: reward None)."""
        prompts = [q for p in part for q in p.payload[0]]
        responses = [r for p in part for r in p.payload[1]]
        rewards = self.score_reward(prompts=prompts, completions=responses)
        return self._split(part, [SampleReward(r, failed=r is None) for r in rewards])

    def _reference(self, part: list[_Piece]) -> list[list[SampleReward]]:
        """Each sample against its own reference (groups of one, `anchor`), every piece in one engine call; a
        sample without a usable reference is a failure."""
        texts = [tuple(map(as_text, sample)) for p in part for sample in zip(*p.payload)]
        usable = [k for k, t in enumerate(texts) if None not in t]
        results = ANCHOR(self.judge, [Group(texts[k][0], [texts[k][1]], [texts[k][2]]) for k in usable])
        out = [SampleReward(None, failed=True) for _ in texts]
        for k, result in zip(usable, results):
            pref, reward = result.against_reference.get(0), result.rewards[0]
            if reward is not None:
                out[k] = SampleReward(reward, compared_pairs=1.0, consistent_pairs=float(pref.order_consistent))
        return self._split(part, out)

    def _rubric(self, part: list[_Piece]) -> list[list[SampleReward]]:
        """Each sample's rubric reward (`Judge.rubric`), every piece in one call; a sample without usable text, or
        whose reward is `None` (a criterion failed), is a failure."""
        samples = [sample for p in part for sample in zip(*p.payload)]
        usable = [k for k, (q, r, _, _) in enumerate(samples) if as_text(q) and as_text(r)]  # anchor None: the default
        pick = [samples[k] for k in usable]
        results = self.judge.rubric(
            [s[0] for s in pick],
            [s[1] for s in pick],
            [s[2] for s in pick],
            mode=self.rubric_mode,
            references=[s[3] for s in pick] if self.rubric_mode == "pairwise" else None,
        )
        out = [SampleReward(None, failed=True) for _ in samples]
        for k, result in zip(usable, results):
            out[k] = SampleReward(result.value, failed=result.value is None)
        return self._split(part, out)

    def _fill(self, piece: _Piece, outcomes: list[SampleReward]) -> list[SampleReward]:
        """Failures get the policy's stand-in, per prompt within the piece."""
        by_prompt: dict[str, list[int]] = {}
        for i, q in enumerate(piece.payload[0]):
            by_prompt.setdefault(q, []).append(i)
        for members in by_prompt.values():
            filled = self.on_failure.fill([outcomes[i].reward for i in members], neutral(self.reward, self.scale))
            for i, r in zip(members, filled):
                outcomes[i].reward = r
        return outcomes

    def _groups(self, payloads: list) -> list[list[SampleReward]]:
        """Every group's pairwise rewards from one engine call; a lone sample gets `NEUTRAL_WIN` (counted)."""
        results = self.engine(self.judge, [Group(prompt, list(responses)) for prompt, responses, _ in payloads])
        out = []
        for (_, responses, incomplete), result in zip(payloads, results):
            n = len(responses)
            raw = [NEUTRAL_WIN] if result.lone else result.rewards
            filled = self.on_failure.fill(raw, NEUTRAL_WIN)
            out.append([SampleReward(r, failed=value is None, lone=result.lone, incomplete=incomplete, group_size=n,
                                     compared_pairs=result.pairs, consistent_pairs=result.consistent)
                        for r, value in zip(filled, raw)])  # fmt: skip
        return out
