"""The reward server under slime's remote reward, as `slime/rollout/rm_hub/__init__.py` calls it (THUDM/slime).

slime is not on PyPI (the `slime` there is another package), so `FakeSlime` follows its code, on the same HTTP
client (aiohttp 3.14.5, installed aside with its import closure, `tests/aside.py`):
`remote_rm` posts `{"prompt", "response", "label"}` through one shared `aiohttp.ClientSession` (a `TCPConnector`
of 64 connections, 120 s total timeout), calls `raise_for_status()`, and makes `await resp.json()` (which also
insists on a JSON content type) the sample's reward; a failure is retried with backoff
`min(2**attempt, 30) + random()` seconds, 10 tries (scaled down here). `generate_and_rm_group`
(`slime/rollout/sglang_rollout.py`) generates a prompt's `n_samples_per_prompt` samples concurrently; without
`--group-rm` each sample is posted when its own generation ends, with `--group-rm` the group's posts go out
together after all are generated (`batched_async_rm`: `asyncio.gather` of `remote_rm` per sample).

Expected rewards are computed by hand from the fake judge's known preferences (tests/live_server.py): a pair
(a, b) of qualities gives P(a wins) = 0.9 a / (a + b) and P(tie) = 0.1 in both presentation orders, so
- pairwise (`mean_win`, all pairs): mean over the peers b of 0.9 a / (a + b) + 0.05;
- against a reference of quality r: 0.9 a / (a + r) + 0.05.
"""

import asyncio
import importlib
import random
import sys

import aside
import httpx
import pytest
from live_server import QUALITY, by_quality, live, points_by_quality

from trainers.server import create_app

ANSWERS = {
    "Name a colour.": ["Red.", "Dark blue.", "It is green, like grass.", "Yellow, the colour of the sun."],
    "What is two plus two?": ["Two plus two is four.", "Four.", "It is 4, since 2 + 2 = 4.", "4"],
}


def hand_pairwise(answers):
    """Each answer's mean_win reward among `answers` (all pairs, both orders merged), by hand."""
    q = QUALITY
    return {a: sum(0.9 * q[a] / (q[a] + q[b]) + 0.05 for b in answers if b != a) / (len(answers) - 1)
            for a in answers}  # fmt: skip


@pytest.fixture(scope="module")
def aiohttp():
    """aiohttp, slime's HTTP client, from its own directory (installed there on first use)."""
    target = aside.install("aiohttp-3.14.5")
    sys.path.insert(0, str(target))
    try:
        try:
            yield importlib.import_module("aiohttp")
        except ModuleNotFoundError as error:
            aside.missing("aiohttp-3.14.5", error)
    finally:
        sys.path.remove(str(target))


class FakeSlime:
    """slime's rollout and `remote_rm`, as in `slime/rollout/rm_hub/__init__.py` and `sglang_rollout.py`."""

    def __init__(self, aiohttp, rm_url, group_rm=False, max_retries=10, backoff_scale=0.01):
        self.aiohttp, self.rm_url, self.group_rm = aiohttp, rm_url, group_rm
        self.max_retries, self.backoff_scale = max_retries, backoff_scale
        self.posts = 0

    async def remote_rm(self, session, sample):
        payload = {"prompt": sample["prompt"], "response": sample["response"], "label": sample["label"]}
        for attempt in range(self.max_retries):
            try:
                self.posts += 1
                async with session.post(self.rm_url, json=payload) as resp:
                    resp.raise_for_status()
                    return await resp.json()
            except Exception:
                if attempt + 1 >= self.max_retries:
                    raise
                await asyncio.sleep(self.backoff_scale * (min(2**attempt, 30) + random.random()))

    async def rollout(self, groups):
        """`groups`: per prompt, the samples (dicts with prompt, response, label, delay); each sample's reward
        is set in place. All prompts' groups run concurrently, as slime's rollout does."""
        aiohttp = self.aiohttp
        connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def generate_and_rm(sample):
                await asyncio.sleep(sample["delay"])  # generation
                if not self.group_rm:
                    sample["reward"] = await self.remote_rm(session, sample)
                return sample

            async def generate_and_rm_group(group):
                group = await asyncio.gather(*[generate_and_rm(s) for s in group])
                if self.group_rm:
                    rewards = await asyncio.gather(*[self.remote_rm(session, s) for s in group])
                    for sample, reward in zip(group, rewards):
                        sample["reward"] = reward
                return group

            return await asyncio.gather(*[generate_and_rm_group(g) for g in groups])


def slime_groups(labels=None):
    """Two prompts x 4 samples; generations end interleaved across the prompts."""
    groups = []
    for p, (prompt, answers) in enumerate(ANSWERS.items()):
        groups.append([{"prompt": prompt, "response": a, "label": (labels or {}).get(a), "delay": 0.02 * (2 * k + p)}
                       for k, a in enumerate(answers)])  # fmt: skip
    return groups


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=points_by_quality)


@pytest.mark.parametrize("group_rm", [False, True])
def test_slime_gets_each_groups_pairwise_rewards_as_bare_numbers(aiohttp, judge, group_rm):
    app = create_app(judge, group_size=4, group_timeout=30)
    with live(app) as url:
        slime = FakeSlime(aiohttp, f"{url}/remote_rm", group_rm=group_rm)
        groups = asyncio.run(slime.rollout(slime_groups()))
        health = httpx.get(f"{url}/health").json()
    for group, answers in zip(groups, ANSWERS.values()):
        want = hand_pairwise(answers)
        for sample in group:
            assert type(sample["reward"]) is float  # the body itself is the reward: no object, no null
            assert sample["reward"] == pytest.approx(want[sample["response"]], abs=1e-6)
    assert slime.posts == 8 and health["groups"] == 2 and health["failures"] == health["incomplete"] == 0


def test_slime_chat_prompts_and_end_tokens(aiohttp, judge):
    """A chat prompt (slime without --apply-chat-template) is one group; a trailing end token is not judged."""
    app = create_app(judge, group_size=2)
    prompt = [{"role": "user", "content": "Name a colour."}]
    with live(app) as url:
        slime = FakeSlime(aiohttp, f"{url}/remote_rm")
        samples = [{"prompt": prompt, "response": "Red.<|im_end|>", "label": None, "delay": 0.0},
                   {"prompt": prompt, "response": "Dark blue.", "label": None, "delay": 0.01}]  # fmt: skip
        (group,) = asyncio.run(slime.rollout([samples]))
    want = hand_pairwise(["Red.", "Dark blue."])
    assert [s["reward"] for s in group] == pytest.approx([want["Red."], want["Dark blue."]], abs=1e-6)


def test_slime_labels_are_references(aiohttp, judge):
    references = {"Red.": "It is green, like grass.", "Dark blue.": "Red.", "Four.": "4",
                  "It is 4, since 2 + 2 = 4.": "Two plus two is four."}  # fmt: skip
    app = create_app(judge, reward="reference")
    groups = [[s for s in g if s["response"] in references] for g in slime_groups(references)]
    with live(app) as url:
        groups = asyncio.run(FakeSlime(aiohttp, f"{url}/remote_rm").rollout(groups))
    for sample in [s for g in groups for s in g]:
        a, r = QUALITY[sample["response"]], QUALITY[references[sample["response"]]]
        assert sample["reward"] == pytest.approx(0.9 * a / (a + r) + 0.05, abs=1e-6)


def test_slime_failed_sample_gets_the_stand_in_never_null(aiohttp, judge):
    """An empty response has no judgement: the group's mean (a number), counted in /health."""
    app = create_app(judge, group_size=3)
    answers = ["Red.", "It is green, like grass."]
    samples = [{"prompt": "Name a colour.", "response": a, "label": None, "delay": 0.01 * k}
               for k, a in enumerate([*answers, ""])]  # fmt: skip
    with live(app) as url:
        (group,) = asyncio.run(FakeSlime(aiohttp, f"{url}/remote_rm").rollout([samples]))
        health = httpx.get(f"{url}/health").json()
    want = hand_pairwise(answers)
    assert [s["reward"] for s in group[:2]] == pytest.approx([want[a] for a in answers], abs=1e-6)
    assert group[2]["reward"] == pytest.approx(0.5, abs=1e-6) and health["failures"] == 1


def test_slime_retries_a_503_until_the_judge_answers(aiohttp, fake_judge):
    """on_failure=retry answers 503 to the whole failed group; slime's retries form the group again and get
    its rewards."""
    calls = {"n": 0}

    def flaky(prompt):
        calls["n"] += 1
        if calls["n"] <= 2:  # the group's first judgement (one pair, both orders) fails
            raise RuntimeError("judge warming up")
        return by_quality(prompt)

    judge = fake_judge(rule=flaky, points=points_by_quality)
    app = create_app(judge, group_size=2, on_failure="retry")
    answers = ["Red.", "Yellow, the colour of the sun."]
    samples = [{"prompt": "Name a colour.", "response": a, "label": None, "delay": 0.0} for a in answers]
    with live(app) as url:
        slime = FakeSlime(aiohttp, f"{url}/remote_rm")
        (group,) = asyncio.run(slime.rollout([samples]))
    want = hand_pairwise(answers)
    assert [s["reward"] for s in group] == pytest.approx([want[a] for a in answers], abs=1e-6)
    assert slime.posts > 2  # at least one 503 was retried
