"""`trustreward serve --reward rubric`: the rubric in OpenRLHF's `labels`, slime's `label`, NeMo Gym's task field
and verl's `extra_info`; the engine's numbers on every path, a broken rubric a 400 naming the problem.

OpenRLHF's own `SingleTurnAgentExecutor` (installed aside, `tests/aside.py`; the fixture and the fake vLLM engine
come from tests/test_openrlhf.py) posts each sample with its dataset label, as `openrlhf/utils/agent.py` does."""

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from live_server import finite, live
from test_openrlhf import FakeEngine, agent, experience_info  # noqa: F401  (the fixture installs OpenRLHF)
from test_server_groups import LOG_KEYS, templated

from trainers.server import ServeArguments, create_app

COLOUR = [  # RaR's format: the weights follow the categories (1.0, 0.3, the pitfall -0.9)
    {"title": "Names a colour", "description": "Essential Criteria: Names a colour"},
    {"title": "Says what has it", "description": "Optional Criteria: Says what has that colour"},
    {"title": "Pitfall Criteria: Names a number instead", "description": "Pitfall Criteria: Names a number"},
]
SUM = [{"requirement": "Gives the sum 4", "weight": 80}, {"requirement": "Shows the working", "weight": 20}]
ANSWERS = {"Name a colour.": ["Red.", "Blue, like the sky."], "What is two plus two?": ["Four.", "It is 4."]}
RUBRICS = {"Name a colour.": COLOUR, "What is two plus two?": SUM}


def answer_of(prompt: str) -> str:
    return prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]


def criterion_of(prompt: str) -> str:
    return prompt.split("[Criterion]\n", 1)[1].split("\n", 1)[0]


def planted(prompt):
    """P(yes) from the answer's and the criterion's lengths: a different value per (answer, criterion)."""
    p = ((3 * len(answer_of(prompt)) + len(criterion_of(prompt))) % 10 + 0.5) / 11
    return {"no": 1 - p, "yes": p}


def anchored(prompt):
    """Pairwise rubric reads: the longer answer meets every criterion better."""
    a, b = (prompt.split(f"[The Start of Assistant {w}'s Answer]\n", 1)[1].split("\n[The End")[0] for w in "AB")
    return {"A": 0.6, "B": 0.2, "C": 0.2} if len(a) > len(b) else {"A": 0.2, "B": 0.6, "C": 0.2}


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=anchored, points=planted)


def test_openrlhf_executor_gets_the_engines_rubric_rewards(agent, judge):  # noqa: F811
    """OpenRLHF's client, the rubric as each sample's label (JSON text, as a --label_key column holds it). Fails a
    server that reads another sample's rubric, ignores the weights, or answers anything but the engine's number."""
    tok = judge.tokenizer
    prompts = {q: templated(tok, q) for q in ANSWERS}
    engine = FakeEngine(tok, {tuple(tok(prompts[q], add_special_tokens=False)["input_ids"]): list(a)
                              for q, a in ANSWERS.items()})  # fmt: skip
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    order = [q for _ in range(2) for q in ANSWERS]  # both prompts' samples interleaved, concurrently
    with live(create_app(judge, reward="rubric")) as url:
        executor = agent.SingleTurnAgentExecutor(f"{url}/get_reward")

        async def run():
            return await asyncio.gather(*[executor.execute(prompts[q], json.dumps(RUBRICS[q]), params, 512, tok,
                                                           engine) for q in order])  # fmt: skip

        outputs = asyncio.run(run())
    answered = {q: iter(a) for q, a in ANSWERS.items()}
    rows = [(q, next(answered[q])) for q in order]  # the fake engine answers each prompt's samples in order
    want = judge.rubric([prompts[q] for q, _ in rows], [a for _, a in rows], [RUBRICS[q] for q, _ in rows])
    assert None not in [w.value for w in want] and len({w.value for w in want}) == 4  # the case proves something
    for out, w in zip(outputs, want):
        (reward,) = out["reward"]
        assert reward == pytest.approx(w.value, abs=1e-12)
        assert set(out["extra_logs"]) == LOG_KEYS and out["extra_logs"]["judge/failures"] == 0
        assert experience_info(out)["reward"].shape == (1, 1)


def post(url, labels, path="/get_reward", prompt="Capital of France?", response="Paris."):
    body = {"query": [prompt + response] * len(labels), "prompts": [prompt] * len(labels), "labels": labels}
    return httpx.post(f"{url}{path}", json=body, timeout=30)


@pytest.mark.parametrize(
    "labels, status, says",
    [
        (['[{"text": "Names Paris", "weight": "heavy"}]'], 400, "labels[0]: not a rubric: rubric item 0: criterion "
         "'Names Paris': weight must be a finite number"),
        (['["Names Paris"]', "Names Paris"], 400, "labels[1]: a rubric given as text must be JSON"),
        (["[]"], 400, "labels[0]: not a rubric: a rubric needs at least one criterion"),
        ([None], 400, "reads each sample's rubric from its labels entry"),
        ([[{"text": "Names Lyon", "weight": -1}]], 400, "only pitfalls given"),
    ],
)  # fmt: skip
def test_a_broken_rubric_is_a_400_naming_the_problem_never_a_reward(judge, labels, status, says):
    with live(create_app(judge, reward="rubric")) as url:
        r = post(url, labels)
        health = httpx.get(f"{url}/health").json()
    assert r.status_code == status and says in r.json()["detail"], r.text
    assert judge.backend.prompts == [] and health["failures"] == 0  # refused before anything was judged


def test_a_failed_criterion_gets_the_stand_in_counted(fake_judge):
    """A criterion the judge puts no mass on: no reward, so the `on_failure` stand-in (alone: 0.5, the middle of
    [0, 1]; or value:X), counted; never the reward with that criterion read as "no"."""

    def blind_on_working(prompt):
        return {"no": 0.0, "yes": 0.0} if criterion_of(prompt) == "Shows the working" else planted(prompt)

    judge = fake_judge(points=blind_on_working)
    for policy, stand_in in (("group_mean", 0.5), ("value:-1", -1.0)):
        with live(create_app(judge, reward="rubric", on_failure=policy)) as url:
            body = post(url, [json.dumps(SUM), json.dumps(SUM[:1])]).json()
            assert httpx.get(f"{url}/health").json()["failures"] == 1
        (alone,) = [r.value for r in judge.rubric(["Capital of France?"], ["Paris."], [SUM[:1]])]
        # the failed sample's group (its prompt, in this request) has one judged peer: group_mean is that peer
        want = alone if policy == "group_mean" else stand_in
        assert body["rewards"] == pytest.approx([want, alone]) and body["extra_logs"]["judge/failures"] == 1
    with live(create_app(judge, reward="rubric")) as url:
        body = post(url, [json.dumps(SUM)]).json()
    assert body["rewards"] == [0.5] and body["extra_logs"]["judge/failures"] == 1


def test_pairwise_rubric_mode_takes_the_anchor_from_the_label(judge):
    label = {"criteria": SUM, "reference": "It is four, because two and two make four."}
    with live(create_app(judge, reward="rubric", rubric_mode="pairwise")) as url:
        body = post(url, [json.dumps(label)]).json()
        missing = post(url, [json.dumps(SUM)]).json()
        broken = post(url, [json.dumps({"criteria": SUM, "reference": ""})])
    (want,) = judge.rubric(["Capital of France?"], ["Paris."], [SUM], mode="pairwise", references=[label["reference"]])
    assert body["rewards"] == [pytest.approx(want.value)] and want.value == pytest.approx(0.2 + 0.2 / 2)
    (default,) = judge.rubric(["Capital of France?"], ["Paris."], [SUM], mode="pairwise")  # reward.anchored.ANCHOR
    assert missing["rewards"] == [pytest.approx(default.value)] and missing["extra_logs"]["judge/failures"] == 0
    assert broken.status_code == 400 and "under 'reference' must be a non-empty text" in broken.json()["detail"]


def test_slime_and_nemo_gym_routes_read_the_rubric(judge):
    """slime's `remote_rm` body (`label` = the rubric) and a NeMo Gym task's `rubric` field."""
    prompt, response = "Name a colour.", "Blue, like the sky."
    (want,) = judge.rubric([prompt], [response], [COLOUR])
    message = {"type": "message", "content": [{"type": "output_text", "text": response}]}
    verify = {"responses_create_params": {"input": prompt}, "rubric": COLOUR, "response": {"output": [message]}}
    with live(create_app(judge, reward="rubric")) as url:
        slime = httpx.post(f"{url}/remote_rm", json={"prompt": prompt, "response": response, "label": COLOUR})
        bad = httpx.post(f"{url}/remote_rm", json={"prompt": prompt, "response": response, "label": "Names Paris"})
        nemo = httpx.post(f"{url}/verify", json=verify, timeout=30)
        nemo_bad = httpx.post(f"{url}/verify", json={**verify, "rubric": []}, timeout=30)
    assert slime.json() == pytest.approx(want.value) and nemo.json()["reward"] == pytest.approx(want.value)
    assert nemo.json()["mask_sample"] is False and nemo.json()["rubric"] == COLOUR  # the task's fields echoed
    assert bad.status_code == 400 and bad.json()["detail"].startswith("label: a rubric given as text must be JSON")
    assert nemo_bad.status_code == 400 and nemo_bad.json()["detail"].startswith("rubric: not a rubric")


def test_verl_compute_score_reads_extra_info_locally_and_through_the_server(judge):
    from trainers.verl import compute_score

    info = {"question": "What is two plus two?", "rubric": json.dumps(SUM)}
    (want,) = judge.rubric([info["question"]], ["It is 4."], [SUM])
    local = compute_score("mt_bench", "It is 4.", None, info, judge=judge, reward="rubric")
    with live(create_app(judge, reward="rubric")) as url:
        served = compute_score("mt_bench", "It is 4.", None, info, url=url, reward="rubric")
    assert local == pytest.approx(want.value, abs=1e-12) and served == pytest.approx(want.value, abs=1e-12)
    anchor = "Four."
    (pair,) = judge.rubric([info["question"]], ["It is 4."], [SUM], mode="pairwise", references=[anchor])
    with live(create_app(judge, reward="rubric", rubric_mode="pairwise")) as url:
        served = compute_score("mt_bench", "It is 4.", anchor, info, url=url, reward="rubric", rubric_mode="pairwise")
    assert served == pytest.approx(pair.value) and pair.value == pytest.approx(0.6 + 0.2 / 2)
    with pytest.raises(ValueError, match=r"extra_info\['rubric'\] is not a rubric: a rubric needs at least one"):
        compute_score("mt_bench", "It is 4.", None, {**info, "rubric": "[]"}, judge=judge, reward="rubric")


def test_serve_checks_the_rubric_mode_when_parsed():
    from trainers.args import UserError

    with pytest.raises(UserError, match="rubric_mode must be one of explicit, implicit, pairwise"):
        ServeArguments(reward="rubric", rubric_mode="likert")
    assert ServeArguments(reward="rubric").rubric_mode == "explicit"
    assert finite([0.5])
