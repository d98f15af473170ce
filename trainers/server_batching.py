"""The reward server's batching: one worker that judges what arrives together, and groups for per-sample clients.

- `Batcher`: a queue of jobs, the count of items waiting (beyond `max_queue`: `QueueFull`, a 503), and one
  worker that gathers the jobs arriving within `max_wait_s` (up to `max_batch` items) and makes the judge calls
  in a thread, one at a time (a judge is not thread-safe).
- `Groups`: OpenRLHF posts one sample per request, so a pairwise reward has no peers inside a request. A
  sample is held with the other samples of its prompt until `size` have arrived (then the group is judged in
  one `JudgePairwiseReward` call) or `timeout` seconds passed (then it is judged with what arrived; a lone sample
  gets its pointwise score). More samples of the prompt start a new group. Other prompts keep flowing.

- `reference` rewards (PPO with a reference answer per sample, OpenRLHF's `labels`): each sample against its own
  reference, both orders merged, P(sample wins) + P(tie) / 2; no peers needed, so samples of any prompts batch.

Every judged sample ends as an `Outcome` whose reward is a number unless the failure policy is `retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .fallback import FailurePolicy
from .reward_funcs import JudgePairwiseReward, JudgeScoreReward, against_references

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More items than `max_queue` would be waiting: the client should retry later (503)."""


class TooLarge(Exception):
    """A request that can never be taken (over `max_request_items` or `max_queue`): 413, retrying cannot help."""


class ShuttingDown(Exception):
    """The server stopped judging (503)."""


@dataclass
class Outcome:
    """One sample's reward and how it was reached (the server's `extra_logs` are built from these)."""

    reward: float | None  # None only under on_failure="retry"
    failed: bool = False  # no judgement: the reward is the failure policy's stand-in
    lone: bool = False  # no peer: its pointwise score, rescaled to [0, 1]
    incomplete: bool = False  # its group timed out before `group_size` samples arrived
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
    isolated_retries: int = 0
    failures: int = 0
    lone: int = 0
    incomplete: int = 0
    groups: int = 0
    started: float = field(default_factory=time.time)


KINDS = ("score", "reference", "group", "score_rows", "compare_rows")
PER_SAMPLE = ("score", "reference")  # rewards of samples judged one by one (failures filled per prompt)


@dataclass(eq=False)
class _Job:
    kind: str  # one of KINDS: pointwise rewards, rewards against references, one group's rewards, rows
    payload: Any  # score: (prompts, responses); reference: (prompts, responses, references); group: (prompt,
    # responses, incomplete); rows: the rows
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


def _failed(kind: str, result) -> bool:
    return result.failed if isinstance(result, Outcome) else result.get("judge_error") is not None


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

    Fair: each worker round takes an equal share of `max_batch` from every waiting request (a request of
    thousands of rows is judged piece by piece, so a small one never waits behind all of it); the rest of a
    request whose client went away is dropped. Isolated: after a combined judge call, an item that failed in it is
    judged again on its own (a bad row can fail the backend's whole batch), so one bad item never costs its
    batch neighbours.

    Args:
        judge: a `reward.Judge`.
        reward: "pairwise", "score" or "reference" (what `/get_reward` computes).
        scale: pointwise ratings 1..scale.
        on_failure: a `FailurePolicy`.
        max_batch, max_wait_s, max_queue: items per judge call, how long the first job waits for others, items
            waiting at most.
        max_request_items: most items in one request (beyond: `TooLarge`).
        pairing, aggregate: the pairwise reward's design and aggregation (`trainers.JudgePairwiseReward`).
    """

    def __init__(self, judge, *, reward: str, scale: int, on_failure: FailurePolicy, max_batch: int,
                 max_wait_s: float, max_queue: int, max_request_items: int | None = None, pairing: str = "all",
                 aggregate: str = "mean_win"):  # fmt: skip
        self.judge, self.reward, self.scale, self.on_failure = judge, reward, scale, on_failure
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.max_request_items = min(max_request_items or max_queue, max_queue)
        self.score_reward = JudgeScoreReward(judge, scale=scale)
        self.pair_reward = JudgePairwiseReward(judge, pairing=pairing, aggregate=aggregate)
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
        """Stop judging: waiting jobs fail with `ShuttingDown` (the call in flight, at most `max_batch` items,
        finishes in its thread)."""
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
                mine = [p for p in pieces if p.job.kind == kind]
                # A pairwise group is one call of its own: its rewards are what JudgePairwiseReward gives it alone.
                for part in [[p] for p in mine] if kind == "group" else [mine] if mine else []:
                    if self.closing:
                        return
                    try:
                        results = await asyncio.to_thread(self._isolated, kind, part)
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
        """An equal share of `max_batch` items from each waiting job (a group whole). No job takes more than its
        share while others wait, so a request's latency grows with the number of requests, not their sizes."""
        pieces, budget = [], self.max_batch
        share = max(1, self.max_batch // max(1, len(self.jobs)))
        for job in list(self.jobs):
            left = job.size - job.taken
            n = left if job.kind == "group" else min(left, share, budget)
            if n == 0 or (pieces and n > budget):
                continue
            pieces.append(_Piece(job, job.taken, job.taken + n))
            job.taken += n
            budget -= n
            if job.taken == job.size:
                self.jobs.remove(job)
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

    def _isolated(self, kind: str, part: list[_Piece]) -> list:
        """The pieces' results from one call; an item that failed in it is judged again alone."""
        results = self._judged(kind, part)
        if kind in PER_SAMPLE:  # failures filled last, per prompt within the piece
            neutral = (1 + self.scale) / 2 if kind == "score" else 0.5
            results = [self._fill(piece, result, neutral) for piece, result in zip(part, results)]
        return results

    def _judged(self, kind: str, part: list[_Piece]) -> list:
        items = sum(p.end - p.start for p in part)
        try:
            results = self._call(kind, part)
        except Exception as exc:
            if items > 1:
                results = [[None] * (p.end - p.start) for p in part]  # every item judged again alone
            elif kind in ("score_rows", "compare_rows"):
                return [[{**part[0].payload[0], "judge_error": f"{type(exc).__name__}: {exc}"}]]
            else:
                raise
        if kind == "group" or items == 1:
            return results
        for piece, result in zip(part, results):
            for k, r in enumerate(result):
                if r is None or _failed(kind, r):  # a bad neighbour may have failed the whole batch
                    self.stats.isolated_retries += 1
                    result[k] = self._judged(kind, [_Piece(piece.job, piece.start + k, piece.start + k + 1)])[0][0]
        return results

    def _fill(self, piece: _Piece, outcomes: list[Outcome], neutral: float) -> list[Outcome]:
        by_prompt: dict[str, list[int]] = {}
        for i, q in enumerate(piece.payload[0]):
            by_prompt.setdefault(q, []).append(i)
        for members in by_prompt.values():
            filled = self.on_failure.fill([outcomes[i].reward for i in members], neutral)
            for i, r in zip(members, filled):
                outcomes[i].reward = r
        return outcomes

    def _call(self, kind: str, part: list[_Piece]) -> list:
        self.stats.judge_calls += 1
        if kind == "score":
            return self._score(part)
        if kind == "reference":
            return self._reference(part)
        if kind == "group":
            return [self._group(*part[0].payload)]
        from .judge_file import judge_rows

        command = kind.removesuffix("_rows")
        rows = [r for p in part for r in p.payload]
        fields = judge_rows(self.judge, command, rows, {"scale": self.scale} if command == "score" else {})
        out, start = [], 0
        for p in part:
            n = p.end - p.start
            out.append([{**row, **f} for row, f in zip(p.payload, fields[start : start + n])])
            start += n
        return out

    # -- judge calls (in the worker thread) ------------------------------------------------------------------
    def _score(self, part: list[_Piece]) -> list[list[Outcome]]:
        """Pointwise rewards for every piece's (prompts, responses) in one call (failures: reward None)."""
        payloads = [p.payload for p in part]
        prompts = [q for prompts, _ in payloads for q in prompts]
        try:
            rewards = self.score_reward(prompts=prompts, completions=[r for _, rs in payloads for r in rs])
        except Exception as exc:  # counted as failures of every item
            logger.warning("score reward failed: %s", exc)
            rewards = [None] * len(prompts)
        out, start = [], 0
        for piece_prompts, _ in payloads:
            out.append([Outcome(r, failed=r is None) for r in rewards[start : start + len(piece_prompts)]])
            start += len(piece_prompts)
        return out

    def _reference(self, part: list[_Piece]) -> list[list[Outcome]]:
        """Each sample against its reference in one `compare` call (both orders); no reference: a failure."""
        columns = [[x for p in part for x in p.payload[c]] for c in range(3)]
        outcomes = [Outcome(None, failed=True) if pref is None else
                    Outcome(pref.win, compared_pairs=1.0, consistent_pairs=float(pref.order_consistent))
                    for pref in against_references(self.judge, *columns)]  # fmt: skip
        out, start = [], 0
        for p in part:
            out.append(outcomes[start : start + p.end - p.start])
            start += p.end - p.start
        return out

    def _group(self, prompt: str, responses: list[str], incomplete: bool) -> list[Outcome]:
        """One prompt's group: pairwise rewards in one call (a lone sample: its pointwise score in [0, 1])."""
        logs: dict[str, float] = {}
        n = len(responses)
        try:
            if n == 1:
                (score,) = self.score_reward(prompts=[prompt], completions=responses)
                rewards = [None if score is None else (score - 1) / (self.scale - 1)]
            else:
                rewards = self.pair_reward(prompts=[prompt] * n, completions=responses, log_metric=logs.__setitem__)
        except Exception as exc:  # a judge that raises for this group costs this group, counted
            logger.warning("group judgement failed: %s", exc)
            rewards = [None] * n
        compared = round(logs.get("judge/compared_fraction", 0.0) * n * (n - 1) / 2)
        consistent = logs.get("judge/order_consistency", 0.0) * compared
        filled = self.on_failure.fill(rewards, 0.5)
        return [Outcome(r, failed=raw is None, lone=n == 1, incomplete=incomplete, group_size=n,
                        compared_pairs=compared, consistent_pairs=consistent)
                for r, raw in zip(filled, rewards)]  # fmt: skip


@dataclass
class _Group:
    prompt: str
    responses: list[str] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Groups:
    """Samples of one prompt held until `size` have arrived or `timeout` seconds passed (see the module docstring).

    Without `size`, each request's samples of a prompt are a group on their own, judged at once.
    """

    def __init__(self, batcher: Batcher, size: int | None, timeout: float):
        self.batcher, self.size, self.timeout = batcher, size, timeout
        self.open: dict[str, _Group] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closing = False

    async def judge(self, prompts: list[str], responses: list[str]) -> list[Outcome]:
        """The outcome of each sample of a request (raises `QueueFull` before holding anything)."""
        self.batcher.reserve(len(prompts))
        if self.size is None:
            by_prompt: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                by_prompt.setdefault(p, []).append(i)
            parts = await asyncio.gather(*[
                self.batcher.submit("group", (p, [responses[i] for i in m], False), len(m), reserved=True)
                for p, m in by_prompt.items()
            ])  # fmt: skip
            outcomes: list[Outcome | None] = [None] * len(prompts)
            for members, part in zip(by_prompt.values(), parts):
                for i, o in zip(members, part):
                    outcomes[i] = o
            return outcomes
        if self.closing:  # no group can fill up any more
            self.batcher.pending -= len(prompts)
            raise ShuttingDown
        loop = asyncio.get_running_loop()
        futures = []
        for prompt, response in zip(prompts, responses):
            group = self.open.get(prompt)
            if group is None:
                group = self.open[prompt] = _Group(prompt)
                group.timer = loop.call_later(self.timeout, self._close, group, True)
            group.responses.append(response)
            group.futures.append(loop.create_future())
            futures.append(group.futures[-1])
            if len(group.responses) == self.size:
                self._close(group, False)
        return list(await asyncio.gather(*futures))

    @property
    def waiting(self) -> int:
        return sum(len(g.responses) for g in self.open.values())

    def _close(self, group: _Group, incomplete: bool) -> None:
        if self.open.get(group.prompt) is group:
            del self.open[group.prompt]
        group.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._judge(group, incomplete))
        self.tasks.add(task)  # held, so that it is not garbage-collected mid-flight
        task.add_done_callback(self.tasks.discard)

    async def _judge(self, group: _Group, incomplete: bool) -> None:
        try:
            payload = (group.prompt, group.responses, incomplete)
            outcomes = await self.batcher.submit("group", payload, len(group.responses), reserved=True)
        except Exception as exc:  # reaches every member's request
            for f in group.futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f, o in zip(group.futures, outcomes):
            if not f.done():  # a client that disconnected while its group waited
                f.set_result(o)

    def cancel(self) -> None:
        for group in self.open.values():
            group.timer.cancel()
        self.open.clear()

    def refuse_held(self) -> None:
        """Shutdown began: samples held for groups that can no longer fill up are answered `ShuttingDown` (503) now,
        not cut off when the grace period ends; samples arriving later too. Groups being judged finish."""
        self.closing = True
        for group in self.open.values():
            group.timer.cancel()
            self.batcher.pending -= len(group.responses)
            for f in group.futures:
                if not f.done():
                    f.set_exception(ShuttingDown())
        self.open.clear()
