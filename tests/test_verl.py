"""trainers.verl under verl 0.9.1's own reward managers (CPU).

verl is installed beside the environment with the import closure of its reward managers (`tests/aside.py`: ray,
tensordict, pyvers, omegaconf, codetiming, aiohttp and what they import) and its managers are called on a small
`DataProto` built as verl's trainer builds one: left-padded prompts, right-padded responses, the n rollouts of a
prompt next to each other, the question in `extra_info`.
"""

import asyncio
import sys
from functools import partial

import aside
import pytest
import torch
from live_server import by_quality, finite, live, points_by_quality
from test_server_groups import ANSWERS, raising_for

from trainers import JudgePairwiseReward, JudgeScoreReward
from trainers.server import create_app
from trainers.verl import compute_score, compute_score_batch


@pytest.fixture(scope="module")
def verl():
    VERL = aside.install("verl-0.9.1")
    sys.path.insert(0, str(VERL))
    try:
        try:
            import verl
            from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager as LoopManager
            from verl.workers.reward_manager.batch import BatchRewardManager
            from verl.workers.reward_manager.naive import NaiveRewardManager
        except ModuleNotFoundError as error:
            aside.missing("verl-0.9.1", error)

        assert verl.__version__ == "0.9.1"
        yield BatchRewardManager, NaiveRewardManager, verl.DataProto, LoopManager
    finally:
        sys.path.remove(str(VERL))


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=points_by_quality)


def batch(DataProto, tok, n=4):
    """Two prompts x n rollouts, as verl's trainer lays them out (left-padded prompts, right-padded responses)."""
    import numpy as np

    rows = [(q, a) for q, answers in ANSWERS.items() for a in answers[:n]]
    pad = tok.pad_token_id
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for q, _ in rows]  # fmt: skip
    responses = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, a in rows]
    p_len, r_len = max(map(len, prompts)), max(map(len, responses)) + 2
    prompt_ids = torch.tensor([[pad] * (p_len - len(p)) + p for p in prompts])
    response_ids = torch.tensor([r + [pad] * (r_len - len(r)) for r in responses])
    mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (r_len - len(r))
                         for p, r in zip(prompts, responses)])  # fmt: skip
    uids = [f"uid-{i // n}" for i in range(len(rows))]
    non_tensors = {
        "data_source": np.array(["mt_bench"] * len(rows), dtype=object),
        "reward_model": np.array([{"ground_truth": None} for _ in rows], dtype=object),
        "extra_info": np.array([{"question": q} for q, _ in rows], dtype=object),
        "uid": np.array(uids, dtype=object),
    }
    tensors = {"prompts": prompt_ids, "responses": response_ids, "attention_mask": mask,
               "input_ids": torch.cat([prompt_ids, response_ids], 1)}  # fmt: skip
    lengths = [len(r) for r in responses]
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors), rows, lengths


def rewards_of(tensor, lengths):
    """verl puts each reward on the response's last valid token."""
    assert tensor.dtype == torch.float32
    return [tensor[i, n - 1].item() for i, n in enumerate(lengths)]


def test_batch_manager_gets_each_groups_pairwise_rewards(verl, judge):
    BatchRewardManager, _, DataProto, _ = verl
    data, rows, lengths = batch(DataProto, judge.tokenizer)
    manager = BatchRewardManager(
        judge.tokenizer, num_examine=0, compute_score=partial(compute_score_batch, judge=judge)
    )
    got = rewards_of(manager(data), lengths)
    want = []
    for q, answers in ANSWERS.items():
        want += JudgePairwiseReward(judge)(prompts=[q] * 4, completions=answers)
    assert got == pytest.approx(want, abs=1e-6) and len(set(got)) == 8


def test_batch_manager_a_failing_group_gets_the_fallback(verl, fake_judge):
    BatchRewardManager, _, DataProto, _ = verl
    judge = fake_judge(rule=raising_for("two plus two"), points=points_by_quality)
    data, rows, lengths = batch(DataProto, judge.tokenizer)
    scorer = partial(compute_score_batch, judge=judge, details=True)
    out = BatchRewardManager(judge.tokenizer, num_examine=0, compute_score=scorer)(data, return_dict=True)
    got = rewards_of(out["reward_tensor"], lengths)
    want = JudgePairwiseReward(judge)(prompts=["Name a colour."] * 4, completions=ANSWERS["Name a colour."])
    assert got[:4] == pytest.approx(want, abs=1e-6) and got[4:] == [0.5] * 4
    assert out["reward_extra_info"]["judge_failed"] == [0.0] * 4 + [1.0] * 4
    value = partial(compute_score_batch, judge=judge, on_failure="value:-1")
    assert rewards_of(BatchRewardManager(judge.tokenizer, 0, compute_score=value)(data), lengths)[4:] == [-1.0] * 4


def test_naive_manager_per_sample_pointwise(verl, judge):
    _, NaiveRewardManager, DataProto, _ = verl
    data, rows, lengths = batch(DataProto, judge.tokenizer, n=2)
    manager = NaiveRewardManager(judge.tokenizer, num_examine=0, compute_score=partial(compute_score, judge=judge))
    got = rewards_of(manager(data), lengths)
    want = JudgeScoreReward(judge)(prompts=[q for q, _ in rows], completions=[a for _, a in rows])
    assert got == pytest.approx(want, abs=1e-6) and finite(got)


def test_reward_loop_per_sample_calls_get_pairwise_rewards_from_a_grouping_server(verl, judge):
    """verl 0.9's reward loop judges one sample per `run_single`, concurrently: with `url=` and a server holding
    groups of n, each sample gets its group's pairwise reward."""
    from omegaconf import OmegaConf

    *_, DataProto, LoopManager = verl
    data, rows, lengths = batch(DataProto, judge.tokenizer)
    with live(create_app(judge, group_size=4)) as url:

        async def each():
            manager = LoopManager(OmegaConf.create({}), judge.tokenizer, partial(compute_score, url=url))
            return await asyncio.gather(*[manager.run_single(data[i : i + 1]) for i in range(len(data))])

        got = [out["reward_score"] for out in asyncio.run(each())]
    want = []
    for q, answers in ANSWERS.items():
        want += JudgePairwiseReward(judge)(prompts=[q] * 4, completions=answers)
    assert got == pytest.approx(want, abs=1e-6) and len(set(got)) == 8


def test_failures_are_numbers_and_bad_options_are_refused(judge, fake_judge):
    broken = fake_judge(rule=by_quality, points=lambda p: {str(k): 0.0 for k in range(1, 6)})
    assert compute_score("s", "Red.", None, {"question": "Name a colour."}, judge=broken) == 3.0
    out = compute_score("s", "Red.", None, {"question": "Name a colour."}, judge=broken, on_failure="value:0.25",
                        details=True)  # fmt: skip
    assert out == {"score": 0.25, "judge_failed": 1.0}
    assert compute_score("s", "Red.", None, {"question": "q"}, url="http://127.0.0.1:9", retries=0) == 3.0
    with pytest.raises(ValueError, match="retry"):
        compute_score("s", "Red.", None, {"question": "q"}, judge=judge, on_failure="retry")
    with pytest.raises(KeyError, match="question"):
        compute_score("s", "Red.", None, {}, judge=judge)


def test_batch_rewards_group_by_the_uid_in_extra_info(judge):
    """verl's trainer gives each rollout group a `uid`; copied into `extra_info`, it splits two groups of the same
    prompt (here two groups of 2 "Name a colour." rollouts), where grouping by the prompt would judge all 4."""
    answers = ANSWERS["Name a colour."]
    infos = [{"question": "Name a colour.", "uid": uid} for uid in ("u0", "u1", "u0", "u1")]
    got = compute_score_batch(["s"] * 4, answers, None, infos, judge=judge)
    first = JudgePairwiseReward(judge)(prompts=["Name a colour."] * 2, completions=[answers[0], answers[2]])
    second = JudgePairwiseReward(judge)(prompts=["Name a colour."] * 2, completions=[answers[1], answers[3]])
    assert got == pytest.approx([first[0], second[0], first[1], second[1]], abs=1e-9)
    together = JudgePairwiseReward(judge)(prompts=["Name a colour."] * 4, completions=answers)
    assert got != pytest.approx(together, abs=1e-3)  # the two readings differ on this judge
    # Another key named by `group_key`; without it in extra_info, the prompt groups.
    keyed = [{"question": "Name a colour.", "rollout": uid} for uid in ("u0", "u1", "u0", "u1")]
    assert compute_score_batch(["s"] * 4, answers, None, keyed, judge=judge, group_key="rollout") == got
    assert compute_score_batch(["s"] * 4, answers, None, keyed, judge=judge) == pytest.approx(together, abs=1e-9)


@pytest.mark.parametrize("scale", [5, 10])
def test_a_lone_sample_gets_its_peers_mean_at_any_scale(judge, scale):
    """No peer: 0.5, the mean reward of any group judged in pairs (#28: on its peers' scale, not its pointwise score
    rescaled), locally and on the server, whatever the pointwise scale; counted as lone."""
    import httpx

    (score,) = JudgeScoreReward(judge, scale=scale)(prompts=["Name a colour."], completions=["Red."])
    assert abs((score - 1) / (scale - 1) - 0.5) > 0.05  # the old reading would give another value here
    info = {"question": "Name a colour.", "uid": "only"}
    assert compute_score_batch(["s"], ["Red."], None, [info], judge=judge, scale=scale) == [0.5]
    prompt = judge.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], tokenize=False, add_generation_prompt=True
    )
    with live(create_app(judge, scale=scale)) as url:
        body = {"query": [prompt + "Red." + judge.tokenizer.eos_token], "prompts": [prompt], "labels": [None]}
        out = httpx.post(f"{url}/get_reward", json=body, timeout=30).json()
    assert out["rewards"] == [0.5]
    assert out["extra_logs"]["judge/lone"] == 1
