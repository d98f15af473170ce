"""Groups for per-sample clients: samples held with their prompt's peers, retries that find their place again.

OpenRLHF posts one sample per request, so a pairwise reward has no peers inside a request. A sample is held with
the other samples of its prompt until `size` have arrived (then the group is judged) or `timeout` seconds passed
(then it is judged with what arrived, `incomplete`). More samples of the prompt start a new group.

Retries (OpenRLHF retries a failed request to the same URL with the same body; requests carry no sample id, and
identical samples of one group are separate members):

- a sample whose client has gone (timed out, disconnected, or answered with the stand-in at the deadline) stays
  a member of its group; its judgement, once made, is kept for `keep_s` seconds;
- a request identical to such a sample (same prompt, same query) takes over its place and its judgement, made
  or in flight: no new group, no second judgement (`Stats.retries_joined`);
- an identical request while its twin's client still waits is a new member;
- a group whose clients all left by its timeout is not judged (nobody would read it) until a retry comes for it;
  it is forgotten after `keep_s`.

Held samples are capped in bytes (`max_bytes`, beyond: `QueueFull`, a 503) as well as in count (the batcher's
`max_queue`); a response is cut to `max_chars` characters (head and tail) on arrival, so a huge sample never
costs more than a judge prompt can hold (`GroupJudge` cuts it to the judge's context once more, in tokens).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field

from reward.judge import CUT_MARK

from .batching import Batcher, QueueFull, SampleReward, ShuttingDown

logger = logging.getLogger(__name__)


def sample_key(prompt: str, query: str) -> bytes:
    """A request's identity for retries: its prompt and query (OpenRLHF sends the same body again)."""
    return hashlib.sha256(prompt.encode() + b"\x00" + query.encode()).digest()


def trim(text: str, max_chars: int) -> str:
    """`text` with its middle cut to keep `max_chars` characters (head and tail), as the judge marks a cut."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + CUT_MARK.format(n="many") + text[len(text) - half :]


@dataclass(eq=False)
class Member:
    key: bytes
    response: str
    waiter: asyncio.Future | None  # the waiting request's future; None while no client waits for it
    group: _Group | None = None
    result: SampleReward | None = None


@dataclass(eq=False)
class _Group:
    prompt: str
    members: list[Member] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    state: str = "open"  # open -> (dormant: timed out, nobody waiting) -> judging -> done
    incomplete: bool = False
    bytes: int = 0
    forget_at: float = 0.0


class Groups:
    """Samples of one prompt held until `size` have arrived or `timeout` seconds passed (see the module docstring).

    Without `size`, each request's samples of a prompt are a group on their own, judged at once.
    """

    def __init__(self, batcher: Batcher, size: int | None, timeout: float, *, keep_s: float = 300.0,
                 max_bytes: int = 256 << 20, max_chars: int = 1 << 20):  # fmt: skip
        self.batcher, self.size, self.timeout = batcher, size, timeout
        self.keep_s, self.max_bytes, self.max_chars = keep_s, max_bytes, max_chars
        self.open: dict[str, _Group] = {}
        self.gone: dict[bytes, list[Member]] = {}  # members whose client has gone, by identity, oldest first
        self.kept: list[_Group] = []  # groups holding such members (dormant, or judged and not yet claimed)
        self.held_bytes = 0
        self.tasks: set[asyncio.Task] = set()
        self.closing = False  # shutdown began: no group can fill up any more

    @property
    def waiting(self) -> int:
        return sum(len(g.members) for g in self.open.values())

    @property
    def degraded(self) -> dict[str, int]:
        return {"dormant_groups": sum(g.state == "dormant" for g in self.kept),
                "unclaimed_samples": sum(len(v) for v in self.gone.values())}  # fmt: skip

    def join(self, prompts: list[str], queries: list[str], responses: list[str]) -> list[Member]:
        """Each sample's place: a gone twin's (a retry) or a new member; raises `QueueFull` / `TooLarge` before
        holding anything."""
        if self.closing:
            raise ShuttingDown
        self._forget_old()
        loop = asyncio.get_running_loop()
        keys = [sample_key(p, q) for p, q in zip(prompts, queries)]
        responses = [trim(r, self.max_chars) for r in responses]
        twins = {}
        for k, key in enumerate(keys):  # retries first: they take no new place
            free = [m for m in self.gone.get(key, ()) if m not in twins.values()]
            if free:
                twins[k] = free[0]
        fresh = [k for k in range(len(keys)) if k not in twins]
        size = sum(len(prompts[k].encode()) + len(responses[k].encode()) for k in fresh)
        if self.held_bytes + size > self.max_bytes:
            self.batcher.stats.rejected_full += 1
            raise QueueFull
        self.batcher.reserve(len(fresh))
        if self.size is None:  # each request's samples of a prompt: a group of their own, judged at once
            by_prompt: dict[str, _Group] = {}
            for k in fresh:
                by_prompt.setdefault(prompts[k], _Group(prompts[k]))
        members: list[Member] = [None] * len(keys)  # type: ignore[list-item]
        for k, twin in twins.items():
            members[k] = self._take_over(twin, loop)
        for k in fresh:
            member = Member(keys[k], responses[k], loop.create_future())
            members[k] = member
            if self.size is None:
                self._add(by_prompt[prompts[k]], member)
                continue
            group = self.open.get(prompts[k])
            if group is None:
                group = self.open[prompts[k]] = _Group(prompts[k])
                group.timer = loop.call_later(self.timeout, self._timed_out, group)
            self._add(group, member)
            if len(group.members) == self.size:
                self._judge(group, incomplete=False)
        if self.size is None:
            for group in by_prompt.values():
                self._judge(group, incomplete=False)
        return members

    def leave(self, members: list[Member]) -> None:
        """Their clients have gone before their answers: each keeps its place (and gets its judgement) for a retry
        to take over."""
        for m in members:
            if m.waiter is None or m.waiter.done():  # gone already, or answered: nothing for a retry to take
                continue
            m.waiter = None
            self.gone.setdefault(m.key, []).append(m)
            group = m.group
            if group.state == "done":
                self._keep(group)
            elif group.state == "open" and self.size is not None:
                self._keep(group)

    def refuse_held(self) -> None:
        """Shutdown began: samples held for groups that can no longer fill up are answered `ShuttingDown` (503) now,
        not cut off when the grace period ends; samples arriving later too. Groups being judged finish."""
        self.closing = True
        for group in self.open.values():
            group.timer.cancel()
            group.state = "done"
            self.batcher.pending -= len(group.members)
            self._release(group)
            for m in group.members:
                if m.waiter is not None and not m.waiter.done():
                    m.waiter.set_exception(ShuttingDown())
        self.open.clear()

    def cancel(self) -> None:
        for group in self.open.values():
            group.timer.cancel()
        self.open.clear()

    # -- internals -------------------------------------------------------------------------------------------
    def _add(self, group: _Group, member: Member) -> None:
        member.group = group
        group.members.append(member)
        group.bytes += len(group.prompt.encode()) + len(member.response.encode())
        self.held_bytes += len(group.prompt.encode()) + len(member.response.encode())

    def _take_over(self, twin: Member, loop) -> Member:
        """A retry takes its gone twin's place: answered from its judgement, or when the judgement in flight ends;
        a dormant group is judged now."""
        self.gone[twin.key].remove(twin)
        if not self.gone[twin.key]:
            del self.gone[twin.key]
        twin.waiter = loop.create_future()
        self.batcher.stats.retries_joined += 1
        group = twin.group
        if twin.result is not None:
            twin.waiter.set_result(twin.result)
        elif group.state == "done":  # its group's judging was stopped (shutdown): nothing to wait for
            twin.waiter.set_exception(ShuttingDown())
        elif group.state == "dormant":
            self._judge(group, incomplete=True)
        return twin

    def _timed_out(self, group: _Group) -> None:
        if self.open.get(group.prompt) is group:
            del self.open[group.prompt]
        if group.state != "open":
            return
        if all(m.waiter is None for m in group.members):  # nobody would read it: judged only if a retry comes
            group.state = "dormant"
            self._keep(group)
            logger.warning("a group of %r timed out with every client gone: held for a retry", group.prompt[:60])
            return
        logger.warning("a group of %r timed out incomplete: judged with %d of %d samples%s", group.prompt[:60],
                       len(group.members), self.size, " (lone: 0.5)" if len(group.members) == 1 else "")  # fmt: skip
        self._judge(group, incomplete=True)

    def _keep(self, group: _Group) -> None:
        group.forget_at = time.monotonic() + self.keep_s
        if group not in self.kept:
            self.kept.append(group)

    def _forget_old(self) -> None:
        """Groups kept for retries that never came: their places and bytes are freed."""
        now = time.monotonic()
        for group in [g for g in self.kept if g.forget_at <= now and g.state in ("dormant", "done")]:
            self.kept.remove(group)
            for m in group.members:
                if m.waiter is None and m in self.gone.get(m.key, ()):
                    self.gone[m.key].remove(m)
                    if not self.gone[m.key]:
                        del self.gone[m.key]
            if group.state == "dormant":
                self.batcher.pending -= len(group.members)
                self.batcher.stats.abandoned_items += len(group.members)
                self._release(group)

    def _release(self, group: _Group) -> None:
        self.held_bytes -= group.bytes
        group.bytes = 0

    def _judge(self, group: _Group, incomplete: bool) -> None:
        if self.open.get(group.prompt) is group:
            del self.open[group.prompt]
        if group.timer is not None:
            group.timer.cancel()
        group.state, group.incomplete = "judging", incomplete
        task = asyncio.get_running_loop().create_task(self._run(group))
        self.tasks.add(task)  # held, so that it is not garbage-collected mid-flight
        task.add_done_callback(self.tasks.discard)

    async def _run(self, group: _Group) -> None:
        payload = (group.prompt, [m.response for m in group.members], group.incomplete)
        try:
            results = await self.batcher.submit("group", payload, len(group.members), reserved=True)
        except Exception as exc:  # reaches every member's request
            for m in group.members:
                if m.waiter is not None and not m.waiter.done():
                    m.waiter.set_exception(exc)
            group.state = "done"
            self._release(group)
            return
        group.state = "done"
        self._release(group)
        for m, r in zip(group.members, results):
            m.result, m.response = r, ""  # the text is no longer needed: a retry is answered from the result
            if m.waiter is not None and not m.waiter.done():
                m.waiter.set_result(r)
        if any(m.waiter is None for m in group.members):
            self._keep(group)
