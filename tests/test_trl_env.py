"""TRL's environment-owned reward (`trainers.protocols.trl_env`) through TRL 1.16's own code.

A real `GRPOTrainer(environment_factory=...)` (`trl/trainer/grpo_trainer.py`): TRL probes the class, wraps its
async `get_reward` as a reward source named after the class, makes one environment per rollout, calls
`reset(**example)`, runs its tool-calling loop (the policy's `generate` is replaced by a fake that writes a
`submit_answer` tool call in the Qwen3 template's format, then a closing message), awaits `get_reward` on its
event loop, and logs the rewards. Expected rewards are computed by hand: the fake judge puts all its mass on
one rating per answer, so the expected score is that rating r and the reward (r - 1) / 4; against a reference
of quality q_r an answer of quality q gets 0.9 q / (q + q_r) + 0.05 (tests/test_slime.py).
"""

import json
import math
from pathlib import Path

import pytest
import torch
import trl
from conftest import tiny_grpo_config
from datasets import Dataset
from live_server import QUALITY, by_quality
from transformers import AutoTokenizer
from trl import GRPOTrainer

from trainers.protocols.trl_env import judge_environment

ANSWERS = ["Red.", "Dark blue.", "It is green, like grass.", "Yellow, the colour of the sun."]
RATING = {a: min(5, int(QUALITY[a]) + 1) for a in ANSWERS}  # 2, 3, 4, 5


def one_rating(prompt):
    """Pointwise verdict: all mass on the answer's rating (unknown text raises: a failed judgement)."""
    text = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
    return {str(RATING[text]): 1.0}


def trainer_with(env, tiny_model_dir, tmp_path, rows, answers):
    """A GRPOTrainer whose policy, on its first turn, calls `submit_answer` with answers[i] for row i (None: it
    answers without the tool), then closes with a short message."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    args = tiny_grpo_config(tmp_path, max_steps=1, max_completion_length=96, max_tool_calling_iterations=2)
    trainer = GRPOTrainer(model=tiny_model_dir, args=args, train_dataset=Dataset.from_list(rows),
                          environment_factory=env, processing_class=tok)  # fmt: skip

    def generate(input_ids, attention_mask=None, **kwargs):
        out = []
        for i, row in enumerate(input_ids):
            seen = tok.decode(row[attention_mask[i].bool()] if attention_mask is not None else row)
            if "Answer recorded." in seen or answers[i] is None:
                text = "Done."
            else:
                call = {"name": "submit_answer", "arguments": {"answer": answers[i]}}
                text = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
            out.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")])
        width = max(map(len, out))
        new = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in out])
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)

    trainer.model.generate = generate
    return trainer


def logged(trainer, name):
    return list(trainer._logs["rewards"][name])[-4:]


@pytest.fixture
def judge(fake_judge):
    return fake_judge(rule=by_quality, points=one_rating)


def test_grpo_awaits_each_rollouts_judged_score(judge, tiny_model_dir, tmp_path):
    env = judge_environment(judge, name="ColourJudge")
    rows = [{"prompt": [{"role": "user", "content": "Name a colour."}]}] * 4
    trainer = trainer_with(env, tiny_model_dir, tmp_path, rows, ANSWERS)
    trainer.train()
    assert logged(trainer, "ColourJudge") == pytest.approx([(RATING[a] - 1) / 4 for a in ANSWERS], abs=1e-6)
    assert env.failures == 0


def test_grpo_environment_reward_against_references_and_none_without_an_answer(judge, tiny_model_dir, tmp_path):
    """A rollout that never submits gets None (TRL: NaN, left out), counted; the others their reference win."""
    env = judge_environment(judge, reward="reference", reference_column="gold")
    rows = [{"prompt": [{"role": "user", "content": "Name a colour."}], "gold": "Dark blue."}] * 4
    answers = [ANSWERS[0], None, ANSWERS[2], ANSWERS[3]]
    trainer = trainer_with(env, tiny_model_dir, tmp_path, rows, answers)
    trainer.train()
    got = logged(trainer, "JudgeEnvironment")
    q_r = QUALITY["Dark blue."]
    for answer, reward in zip(answers, got):
        if answer is None:
            assert math.isnan(reward)
        else:
            assert reward == pytest.approx(0.9 * QUALITY[answer] / (QUALITY[answer] + q_r) + 0.05, abs=1e-6)
    assert env.failures == 1


def test_judge_environment_rejects_an_unknown_reward(judge):
    with pytest.raises(ValueError, match="reward must be one of score, reference"):
        judge_environment(judge, reward="pairwise")
