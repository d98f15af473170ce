"""Pairwise rewards over per-sample clients (OpenRLHF's call pattern), the failure policy, and bad input.

OpenRLHF 0.11 posts one sample per request, N per prompt concurrently from its vLLM engines, `query` = the
chat-templated prompt + response + end token; it then builds `torch.tensor([reward])`, so every answer must be a
number and every `extra_logs` value too (with the same keys in every answer).
"""

import asyncio
import subprocess
import sys
import time

import httpx
import pytest
from live_server import QUALITY, by_quality, finite, live, points_by_quality

from trainers import JudgePairwiseReward
from trainers.server import create_app

ANSWERS = {
    "Name a colour.": ["Red.", "Dark blue.", "It is green, like grass.", "Yellow, the colour of the sun."],
    "What is two plus two?": ["Two plus two is four.", "Four.", "It is 4, since 2 + 2 = 4.", "4"],
}
LOG_KEYS = {"judge/failures", "judge/lone", "judge/incomplete", "judge/group_size", "judge/compared_pairs",
            "judge/consistent_pairs", "judge/latency_s"}  # fmt: skip


def templated(tok, question):
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def samples(tok, per_prompt=4):
    """(prompt, query, response) as OpenRLHF sends them: two prompts' samples interleaved."""
    out = []
    for k in range(per_prompt):
        for question, answers in ANSWERS.items():
            prompt = templated(tok, question)
            out.append((prompt, prompt + answers[k] + tok.eos_token, answers[k]))
    return out


async def post_each(url, items, timeout=30.0):
    """One request per sample, all at once: `{"query": [q], "prompts": [p], "labels": [None]}`."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        posts = [http.post(f"{url}/get_reward", json={"query": [q], "prompts": [p], "labels": [None]})
                 for p, q, _ in items]  # fmt: skip
        return await asyncio.gather(*posts)


def want_pairwise(judge, prompt, responses):
    """What JudgePairwiseReward gives the group in one call, by response text."""
    return dict(zip(responses, JudgePairwiseReward(judge)(prompts=[prompt] * len(responses), completions=responses)))


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=points_by_quality)


def check_answer(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rewards"]) == 1 and finite(body["rewards"]) and body["scores"] == body["rewards"]
    assert set(body["extra_logs"]) == LOG_KEYS and finite(body["extra_logs"].values())
    return body["rewards"][0], body["extra_logs"]


def test_per_sample_requests_get_their_groups_pairwise_rewards(judge):
    app = create_app(judge, group_size=4, group_timeout=30)
    items = samples(judge.tokenizer)
    with live(app) as url:
        answers = asyncio.run(post_each(url, items))
        health = httpx.get(f"{url}/health").json()
    for (prompt, _, response), r in zip(items, answers):
        reward, logs = check_answer(r)
        want = want_pairwise(judge, prompt, ANSWERS[[q for q in ANSWERS if q in prompt][0]])
        assert reward == pytest.approx(want[response], abs=1e-6)
        assert logs["judge/group_size"] == 4 and logs["judge/compared_pairs"] == 6
        assert logs["judge/failures"] == logs["judge/lone"] == logs["judge/incomplete"] == 0
    got = {resp: r.json()["rewards"][0] for (_, _, resp), r in zip(items, answers)}
    for answers_of_prompt in ANSWERS.values():  # distinct rewards, in the judge's order of quality
        ranked = sorted(answers_of_prompt, key=got.get)
        assert ranked == sorted(answers_of_prompt, key=QUALITY.get) and len(set(map(got.get, ranked))) == 4
    # Groups complete within one batching window go to the engine in one call.
    assert health["groups"] == 2 and health["judge_calls"] in (1, 2) and health["waiting_in_groups"] == 0


def test_incomplete_group_times_out_and_a_lone_sample_gets_its_peers_mean(judge):
    app = create_app(judge, group_size=4, group_timeout=0.5)
    colour, sums = templated(judge.tokenizer, "Name a colour."), templated(judge.tokenizer, "What is two plus two?")
    items = [(colour, colour + a + "<|im_end|>", a) for a in ANSWERS["Name a colour."][:3]]
    items.append((sums, sums + "Four.<|im_end|>", "Four."))
    with live(app) as url:
        start = time.perf_counter()
        answers = asyncio.run(post_each(url, items))
        waited = time.perf_counter() - start
    want = want_pairwise(judge, colour, ANSWERS["Name a colour."][:3])
    for (_, _, response), r in zip(items[:3], answers[:3]):
        reward, logs = check_answer(r)
        assert reward == pytest.approx(want[response], abs=1e-6)
        assert logs["judge/incomplete"] == 1 and logs["judge/group_size"] == 3 and logs["judge/lone"] == 0
    reward, logs = check_answer(answers[3])  # on its peers' scale: their mean (not its pointwise score)
    assert reward == 0.5 and logs["judge/lone"] == 1 and sum(want.values()) == pytest.approx(1.5)
    assert logs["judge/failures"] == 0 and waited >= 0.5


def test_a_group_without_size_is_each_requests_samples(judge):
    """Batched clients (one request holding a prompt's samples) need no --group_size; a lone sample gets 0.5."""
    app = create_app(judge)
    prompt = templated(judge.tokenizer, "Name a colour.")
    answers = ANSWERS["Name a colour."]
    with live(app) as url:
        body = {"query": [prompt + a + "<|im_end|>" for a in answers], "prompts": [prompt] * 4}
        together = httpx.post(f"{url}/get_reward", json=body, timeout=30).json()
        alone = httpx.post(f"{url}/get_reward", json={"query": [body["query"][0]], "prompts": [prompt]}).json()
    want = want_pairwise(judge, prompt, answers)
    assert together["rewards"] == pytest.approx([want[a] for a in answers], abs=1e-6)
    assert alone["rewards"] == [0.5] and alone["extra_logs"]["judge/lone"] == 1


def raising_for(question):
    def rule(prompt):
        if question in prompt:
            raise RuntimeError("judge down for this prompt")
        return by_quality(prompt)

    return rule


@pytest.mark.parametrize("policy", ["group_mean", "value:-1", "retry"])
def test_a_judge_that_raises_for_one_group_costs_that_group_only(fake_judge, policy):
    judge = fake_judge(rule=raising_for("two plus two"), points=points_by_quality)
    app = create_app(judge, group_size=4, on_failure=policy)
    items = samples(judge.tokenizer)
    with live(app) as url:
        answers = asyncio.run(post_each(url, items))
        health = httpx.get(f"{url}/health").json()
    for (prompt, _, response), r in zip(items, answers):
        if "two plus two" not in prompt:  # the healthy group is untouched
            reward, logs = check_answer(r)
            assert reward == pytest.approx(want_pairwise(judge, prompt, ANSWERS["Name a colour."])[response])
            continue
        if policy == "retry":
            assert r.status_code == 503 and "retry" in r.text
            continue
        reward, logs = check_answer(r)
        assert reward == (0.5 if policy == "group_mean" else -1.0) and logs["judge/failures"] == 1
    assert health["failures"] == 4


def test_a_failed_sample_gets_its_groups_mean(judge):
    """An empty response (the policy stopped at once) has no judgement: its group's mean, counted."""
    prompt = templated(judge.tokenizer, "Name a colour.")
    answers = ANSWERS["Name a colour."][:3]
    items = [(prompt, prompt + a + "<|im_end|>", a) for a in answers] + [(prompt, prompt + "<|im_end|>", "")]
    with live(create_app(judge, group_size=4)) as url:
        got = [check_answer(r) for r in asyncio.run(post_each(url, items))]
    want = want_pairwise(judge, prompt, answers)
    assert [g[0] for g in got[:3]] == pytest.approx([want[a] for a in answers], abs=1e-6)
    assert got[3][0] == pytest.approx(sum(want.values()) / 3) and got[3][1]["judge/failures"] == 1
    assert all(g[1]["judge/failures"] == 0 for g in got[:3])


def test_a_client_that_disconnects_while_its_group_waits(judge):
    """The sample stays a peer of its group; the others get their rewards; nothing is left waiting."""
    prompt = templated(judge.tokenizer, "Name a colour.")
    answers = ANSWERS["Name a colour."]
    items = [(prompt, prompt + a + "<|im_end|>", a) for a in answers]

    async def scenario(url):
        with pytest.raises(httpx.TimeoutException):
            await post_each(url, items[:1], timeout=0.3)  # gives up and closes its connection
        return await post_each(url, items[1:])

    with live(create_app(judge, group_size=4)) as url:
        rest = asyncio.run(scenario(url))
        health = httpx.get(f"{url}/health").json()
    want = want_pairwise(judge, prompt, answers)
    assert [check_answer(r)[0] for r in rest] == pytest.approx([want[a] for a in answers[1:]], abs=1e-6)
    assert health["waiting_in_groups"] == 0 and health["queued_items"] == 0 and health["groups"] == 1


def test_duplicate_samples_are_judged_as_peers(judge):
    prompt = templated(judge.tokenizer, "Name a colour.")
    answers = ["Red.", "Red.", "Dark blue.", "Dark blue."]
    items = [(prompt, prompt + a + "<|im_end|>", a) for a in answers]
    with live(create_app(judge, group_size=4)) as url:
        got = [check_answer(r)[0] for r in asyncio.run(post_each(url, items))]
    want = JudgePairwiseReward(judge)(prompts=[prompt] * 4, completions=answers)
    # Equal up to rounding: samples arrive in any order, and a pair's win is p or 1 - p depending on which came first.
    assert got[0] == pytest.approx(got[1], abs=1e-12) and got[2] == pytest.approx(got[3], abs=1e-12)
    assert got[0] < got[2]
    assert got == pytest.approx(want, abs=1e-6)


def test_more_samples_than_the_group_start_a_new_group(judge):
    prompt = templated(judge.tokenizer, "Name a colour.")
    answers = ANSWERS["Name a colour."]
    items = [(prompt, prompt + a + "<|im_end|>", a) for a in answers[:2] + answers[:2]]
    with live(create_app(judge, group_size=2)) as url:
        got = [check_answer(r) for r in asyncio.run(post_each(url, items))]
        health = httpx.get(f"{url}/health").json()
    want = want_pairwise(judge, prompt, answers[:2])
    assert [g[0] for g in got] == pytest.approx([want[a] for a in answers[:2] * 2], abs=1e-6)
    assert health["groups"] == 2 and all(g[1]["judge/group_size"] == 2 for g in got)


def test_score_reward_failures_get_the_fallback(fake_judge):
    judge = fake_judge(rule=by_quality, points=lambda p: {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0, "5": 0.0})
    app = create_app(judge, reward="score")  # no probability on any rating: every judgement fails
    with live(app) as url:
        r = httpx.post(f"{url}/get_reward", json={"query": ["qa", "qb"], "prompts": ["q", "q"]})
        one = httpx.post(f"{url}/get_reward", json={"query": ["qa"], "prompts": ["q"]})
    assert r.json()["rewards"] == [3.0, 3.0] and r.json()["extra_logs"]["judge/failures"] == 2
    assert one.json()["rewards"] == [3.0]


@pytest.mark.parametrize(
    "options, reason",
    [({"group_size": 0}, "group_size"), ({"group_size": 1}, "group_size"), ({"reward": "score", "group_size": 4},
     "group_size"), ({"on_failure": "zero"}, "on_failure"), ({"on_failure": "value:nan"}, "on_failure"),
     ({"group_timeout": 0}, "group_timeout")],
)  # fmt: skip
def test_bad_group_options_are_refused(judge, options, reason):
    with pytest.raises(ValueError, match=reason):
        create_app(judge, **options)


def test_serve_refuses_group_size_0_before_loading_the_judge(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainers.cli", "serve", "--judge", str(tmp_path / "missing"),
                           "--group_size", "0"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "group_size" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_pairing_and_aggregate_reach_the_groups_reward(judge):
    # Swiss rounds + Bradley-Terry give other numbers than all pairs + mean win: the server's must be the former's.
    app = create_app(judge, group_size=4, group_timeout=30, pairing="swiss", aggregate="bradley_terry")
    items = samples(judge.tokenizer)
    with live(app) as url:
        answers = asyncio.run(post_each(url, items))
    for (prompt, _, response), r in zip(items, answers):
        reward, _ = check_answer(r)
        group = ANSWERS[[q for q in ANSWERS if q in prompt][0]]
        swiss = JudgePairwiseReward(judge, pairing="swiss", aggregate="bradley_terry")
        want = dict(zip(group, swiss(prompts=[prompt] * len(group), completions=group)))
        assert reward == pytest.approx(want[response], abs=1e-6)
        # (at G = 4 Swiss is a round robin: Bradley-Terry (prior 0.03) and mean win differ by 5e-4 and more here)
        assert reward != pytest.approx(want_pairwise(judge, prompt, group)[response], abs=1e-4)


def test_failure_policies_fill_by_value():
    """`group_mean` is the mean of the judged rewards (0.4 here, not the neutral 0.5); `value:X` takes finite X
    only; `retry` leaves the failure for the 503."""
    from trainers.fallback import FailurePolicy

    assert FailurePolicy.parse("group_mean").fill([0.2, None, 0.6], neutral=0.5) == pytest.approx([0.2, 0.4, 0.6])
    assert FailurePolicy.parse("group_mean").fill([None, None], neutral=3.0) == [3.0, 3.0]
    assert FailurePolicy.parse("value:-1").fill([None, 0.3], neutral=0.5) == [-1.0, 0.3]
    assert FailurePolicy.parse("retry").fill([None, 0.3], neutral=0.5) == [None, 0.3]
    for bad in ("value:inf", "value:-inf", "value:nan", "value:x", "mean"):
        with pytest.raises(ValueError, match="on_failure"):
            FailurePolicy.parse(bad)
