"""Retries and deadlines under OpenRLHF 0.11.2's own remote-reward client, its retry policy scaled down.

OpenRLHF (`openrlhf/utils/agent.py`, `_fetch_rewards_via_http`) posts each sample alone with
`aiohttp.ClientTimeout(total=180)` and tries 5 times, 1 s apart, with the same body. Here the timeout is 2 s and
the judge takes 3 s a call (slow on purpose): every first try times out while its group is being judged. The
retries must take over their twins' places and judgements (no new group, no second judgement), and with a
deadline below the client's timeout every request is answered with the stand-in instead of timing out.
"""

import time

import httpx
import pytest
from conftest import FakeBackend
from live_server import by_quality, finite, live, points_by_quality
from test_openrlhf import agent, rollouts  # noqa: E402, F401  (the fixture installs OpenRLHF's own code)
from test_server_groups import ANSWERS, LOG_KEYS, templated, want_pairwise

from reward import Judge
from trainers.server import create_app


class Slow(FakeBackend):
    """Each backend call takes `delay` seconds; counts the calls and the pairwise prompts judged."""

    def __init__(self, tokenizer, delay):
        super().__init__(tokenizer, by_quality, points_by_quality)
        self.delay, self.calls, self.pairwise = delay, 0, 0

    def label_logprobs(self, prompts, labels):
        self.calls += 1
        self.pairwise += len(prompts) if set(labels) == {"A", "B", "C"} else 0
        time.sleep(self.delay)
        return super().label_logprobs(prompts, labels)


@pytest.fixture
def scaled_down(agent, monkeypatch):  # noqa: F811
    """OpenRLHF's client with a 2 s timeout instead of 180 s (its 5 tries, 1 s apart, unchanged)."""
    real = agent.aiohttp.ClientTimeout
    monkeypatch.setattr(agent.aiohttp, "ClientTimeout", lambda total: real(total=2.0))
    return agent


def test_retries_take_over_their_places_and_each_sample_is_judged_once(scaled_down, tiny_judge):
    backend = Slow(tiny_judge.tokenizer, delay=3.0)
    judge = Judge(backend, progress=False)
    with live(create_app(judge, group_size=4, group_timeout=5.0)) as url:
        order, outputs = rollouts(scaled_down, judge.tokenizer, f"{url}/get_reward")
        health = httpx.get(f"{url}/health").json()
    assert all("reward" in out and finite(out["reward"]) for out in outputs)  # 0 samples without a reward
    assert all(set(out["extra_logs"]) == LOG_KEYS and out["extra_logs"]["judge/failures"] == 0 for out in outputs)
    # Each sample judged once: two groups of 4, all pairs in both orders = 2 x 12 prompts (no group judged again).
    assert backend.pairwise == 24 and health["groups"] == 2
    assert health["retries_joined"] >= 8 and health["late"] == 0  # every first try timed out and was retried
    fast = Judge(FakeBackend(tiny_judge.tokenizer, by_quality, points_by_quality), progress=False)
    for question, answers in ANSWERS.items():  # the rewards are the groups' own
        prompt = templated(judge.tokenizer, question)
        got = sorted(out["reward"][0] for p, out in zip(order, outputs) if p == prompt)
        assert got == pytest.approx(sorted(want_pairwise(fast, prompt, answers).values()), abs=1e-6)


def test_a_deadline_below_the_clients_timeout_answers_everyone_with_the_stand_in(scaled_down, tiny_judge):
    backend = Slow(tiny_judge.tokenizer, delay=3.0)
    judge = Judge(backend, progress=False)
    with live(create_app(judge, group_size=4, group_timeout=0.5, deadline_s=1.0)) as url:
        start = time.perf_counter()
        _, outputs = rollouts(scaled_down, judge.tokenizer, f"{url}/get_reward")
        took = time.perf_counter() - start
        time.sleep(3.5)  # the judgement in flight ends
        health = httpx.get(f"{url}/health").json()
    assert all(out["reward"] == [0.5] for out in outputs)  # the documented stand-in, never a null
    assert all(out["extra_logs"]["judge/failures"] == 1 for out in outputs)
    assert health["late"] == 8 and health["retries_joined"] == 0 and took < 2.0 * 5  # no request timed out
    assert backend.pairwise == 24  # still judged once: a retry arriving later would be answered from it
    assert health["degraded"]["unclaimed_samples"] == 8


def test_held_samples_are_capped_in_bytes(tiny_judge):
    """A sample that would take the held bytes over `max_held_bytes` is refused (503), not held; the held one is
    still judged when its group completes."""
    import asyncio

    judge = Judge(FakeBackend(tiny_judge.tokenizer, lambda p: {"A": 0.6, "B": 0.3, "C": 0.1}), progress=False)
    app = create_app(judge, group_size=2, group_timeout=5.0, max_held_bytes=1500)

    async def scenario(url):
        async with httpx.AsyncClient(timeout=30) as http:
            post = lambda r: http.post(f"{url}/get_reward", json={"query": ["q" + r], "prompts": ["q"]})  # noqa: E731
            held = asyncio.ensure_future(post("a" * 1000))
            await asyncio.sleep(0.5)
            refused = await post("b" * 1000)  # 2 x 1000 bytes > 1500
            health = (await http.get(f"{url}/health")).json()
            small = await post("c" * 10)  # fits: completes the group
            return refused, health, await held, small

    with live(app) as url:
        refused, health, held, small = asyncio.run(scenario(url))
    assert refused.status_code == 503 and "full" in refused.text
    assert health["held_bytes"] == 1 + 1000 and health["waiting_in_groups"] == 1  # prompt + response, UTF-8
    assert held.status_code == small.status_code == 200
    assert held.json()["extra_logs"]["judge/group_size"] == small.json()["extra_logs"]["judge/group_size"] == 2
