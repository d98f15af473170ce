"""`JudgeRewardModel` as TRL >= 1.13's nn.Module reward and through TRL 1.12's own PPO `get_reward`."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import aside
import pytest

from trainers import JudgeScoreReward
from trainers.judge_module import JudgeRewardModel, assistant_marker

ROOT = Path(__file__).resolve().parents[1]


def by_length(prompt):
    """Pointwise: answers of up to 5 characters rate 2, longer ones 4."""
    answer = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
    return {"2": 1.0} if len(answer) <= 5 else {"4": 1.0}


def chats(tokenizer, pairs):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                          tokenize=False) for q, a in pairs]  # fmt: skip


def test_forward_returns_the_judges_scores(fake_judge, tiny_judge):
    tok = tiny_judge.tokenizer
    judge = fake_judge(points=by_length)
    model = JudgeRewardModel(judge, tok)
    assert assistant_marker(tok) == "<|im_start|>assistant\n"
    pairs = [("Name a colour.", "Red."), ("Name a colour.", "It is dark blue.")]
    batch = tok(chats(tok, pairs), return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    logits = model(**batch).logits
    assert logits.shape == (2, 1) and logits[:, 0].tolist() == pytest.approx([2.0, 4.0])
    want = JudgeScoreReward(judge)(prompts=[q for q, _ in pairs], completions=[a for _, a in pairs])
    assert logits[:, 0].tolist() == pytest.approx(want)
    # No assistant turn in the sequence: no response, NaN (never a made-up number).
    plain = tok(["just text"], return_tensors="pt", add_special_tokens=False)
    assert math.isnan(model(**plain).logits[0, 0].item()) and model.failures == 1


def test_grpo_takes_it_as_a_reward_module(tmp_path, tiny_model_dir, fake_judge, tiny_judge):
    from conftest import tiny_grpo_config
    from trl import GRPOTrainer

    from trainers.mt_bench import prompt_dataset

    tok = tiny_judge.tokenizer
    model = JudgeRewardModel(fake_judge(points=by_length), tok)
    config = tiny_grpo_config(tmp_path, max_steps=1, max_completion_length=8)
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[model], reward_processing_classes=[tok], args=config,
                          train_dataset=prompt_dataset("mt_bench", max_prompts=4))  # fmt: skip
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "reward" in h]
    assert log["reward"] in (pytest.approx(2.0), pytest.approx(4.0)) or 2.0 <= log["reward"] <= 4.0


SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from trl.experimental.utils import get_reward
import trl
from reward import load_judge
from trainers import JudgeScoreReward
from trainers.judge_module import JudgeRewardModel
judge = load_judge(sys.argv[2], device="cpu", progress=False)
tok = judge.tokenizer
model = JudgeRewardModel(judge, tok)
pairs = [("Name a colour.", "Red."), ("What is two plus two?", "It is four, I think.")]
pad = tok.pad_token_id
queries = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q, _ in pairs]
queries = [q["input_ids"] if isinstance(q, dict) or hasattr(q, "keys") else q for q in queries]
responses = [tok(a + "<|im_end|>", add_special_tokens=False).input_ids for _, a in pairs]
context = max(map(len, queries))
width = max(map(len, responses))
rows = [[pad] * (context - len(q)) + q + r + [pad] * (width - len(r)) for q, r in zip(queries, responses)]
_, rewards, lengths = get_reward(model, torch.tensor(rows), pad, context)
want = JudgeScoreReward(judge)(prompts=[q for q, _ in pairs], completions=[a for _, a in pairs])
assert [model.split(tok.decode([t for t in r if t != pad])) for r in rows] == pairs
print(json.dumps({"trl": trl.__version__, "rewards": rewards.tolist(), "want": want}))
"""


def test_trl_112_ppo_get_reward(tiny_model_dir):
    TRL_112 = aside.install("trl-1.12.0")  # TRL 1.12's own code, beside (not instead of) the installed TRL
    env = os.environ | {"PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(TRL_112), tiny_model_dir], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trl"] == "1.12.0"
    assert out["rewards"] == pytest.approx(out["want"], abs=1e-5) and all(math.isfinite(r) for r in out["rewards"])
