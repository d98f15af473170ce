"""The reward server's batching: one worker that judges what arrives together, and groups for per-sample clients.

- `Batcher`: a queue of jobs, the count of items waiting (beyond `max_queue`: `QueueFull`, a 503), and one
  worker that gathers the jobs arriving within `max_wait_s` (up to `max_batch` items) and makes the judge calls
  in a thread, one at a time (a judge is not thread-safe).
- `Groups`: OpenRLHF posts one sample per request, so a pairwise reward has no peers inside a request. A
  sample is held with the other samples of its prompt until `size` have arrived (then the group is judged in
  one `JudgePairwiseReward` call) or `timeout` seconds passed (then it is judged with what arrived; a lone sample
  gets its pointwise score). More samples of the prompt start a new group. Other prompts keep flowing.

Every judged sample ends as an `Outcome` whose reward is a number unless the failure policy is `retry`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .fallback import FailurePolicy
from .rewards import JudgePairwiseReward, JudgeScoreReward

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More items than `max_queue` would be waiting: the client should retry later (503)."""


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
    failures: int = 0
    lone: int = 0
    incomplete: int = 0
    groups: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class _Job:
    kind: str  # "score" (pointwise rewards), "group" (one group's rewards), "score_rows", "compare_rows"
    payload: Any
    future: asyncio.Future
    size: int


class Batcher:
    """The judge behind one queue (see the module docstring).

    Args:
        judge: a `reward.Judge`.
        reward: "pairwise" or "score" (what `/get_reward` computes).
        scale: pointwise ratings 1..scale.
        on_failure: a `FailurePolicy`.
        max_batch, max_wait_s, max_queue: items per judge call, how long the first job waits for others, items
            waiting at most.
    """

    def __init__(self, judge, *, reward: str, scale: int, on_failure: FailurePolicy, max_batch: int,
                 max_wait_s: float, max_queue: int):  # fmt: skip
        self.judge, self.reward, self.scale, self.on_failure = judge, reward, scale, on_failure
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.score_reward = JudgeScoreReward(judge, scale=scale)
        self.pair_reward = JudgePairwiseReward(judge)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.pending = 0  # items reserved: queued, held in a group, or being judged
        self.stats = Stats()

    # -- admission -------------------------------------------------------------------------------------------
    def reserve(self, size: int) -> None:
        if self.pending + size > self.max_queue:
            self.stats.rejected_full += 1
            raise QueueFull
        self.pending += size
        self.stats.items += size

    async def submit(self, kind: str, payload, size: int, reserved: bool = False):
        """Queue a job and wait for its result (`reserved`: its items were counted by `reserve` already)."""
        if not reserved:
            self.reserve(size)
        job = _Job(kind, payload, asyncio.get_running_loop().create_future(), size)
        await self.queue.put(job)
        return await job.future

    # -- the worker ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            jobs, deadline = [first], time.monotonic() + self.max_wait_s
            while sum(j.size for j in jobs) < self.max_batch:  # gather what arrives within the wait
                try:
                    timeout = max(0.0, deadline - time.monotonic())
                    jobs.append(
                        self.queue.get_nowait() if timeout == 0 else await asyncio.wait_for(self.queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            for kind in ("score", "group", "score_rows", "compare_rows"):
                batch = [j for j in jobs if j.kind == kind]
                # A pairwise group is one call of its own: its rewards are what JudgePairwiseReward gives it alone.
                for part in [[j] for j in batch] if kind == "group" else [batch] if batch else []:
                    try:
                        results = await asyncio.to_thread(self._call, kind, part)
                        for j, r in zip(part, results):
                            if not j.future.done():  # its client may have gone
                                j.future.set_result(r)
                    except Exception as exc:  # a failed call fails its requests, not the server
                        for j in part:
                            if not j.future.done():
                                j.future.set_exception(exc)
                    finally:
                        self.pending -= sum(j.size for j in part)

    def _call(self, kind: str, jobs: list[_Job]) -> list:
        self.stats.judge_calls += 1
        if kind == "score":
            return self._score(jobs)
        if kind == "group":
            return [self._group(*jobs[0].payload)]
        from .cli import judge_rows

        command = kind.removesuffix("_rows")
        rows = [r for j in jobs for r in j.payload]
        fields = judge_rows(self.judge, command, rows, {"scale": self.scale} if command == "score" else {})
        out, start = [], 0
        for j in jobs:
            out.append([{**row, **f} for row, f in zip(j.payload, fields[start : start + j.size])])
            start += j.size
        return out

    # -- judge calls (in the worker thread) ------------------------------------------------------------------
    def _score(self, jobs: list[_Job]) -> list[list[Outcome]]:
        """Pointwise rewards for every job's (prompts, responses) in one call; failures filled per prompt."""
        prompts = [p for j in jobs for p in j.payload[0]]
        try:
            rewards = self.score_reward(prompts=prompts, completions=[r for j in jobs for r in j.payload[1]])
        except Exception as exc:  # counted below as failures of every item
            logger.warning("score reward failed: %s", exc)
            rewards = [None] * len(prompts)
        out, start = [], 0
        for j in jobs:
            mine, filled = rewards[start : start + j.size], [None] * j.size
            start += j.size
            by_prompt: dict[str, list[int]] = {}
            for i, p in enumerate(j.payload[0]):
                by_prompt.setdefault(p, []).append(i)
            for members in by_prompt.values():
                for i, r in zip(members, self.on_failure.fill([mine[i] for i in members], (1 + self.scale) / 2)):
                    filled[i] = r
            out.append([self._count(Outcome(r, failed=m is None)) for r, m in zip(filled, mine)])
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
        self.stats.groups += 1
        return [self._count(Outcome(r, failed=raw is None, lone=n == 1, incomplete=incomplete, group_size=n,
                                    compared_pairs=compared, consistent_pairs=consistent))
                for r, raw in zip(filled, rewards)]  # fmt: skip

    def _count(self, outcome: Outcome) -> Outcome:
        self.stats.failures += outcome.failed
        self.stats.lone += outcome.lone
        self.stats.incomplete += outcome.incomplete
        return outcome


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
