"""A real GRPOTrainer / RLOOTrainer .train() with each reward callable, tiny from-config policy and judge."""

import math

import pytest
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from trainers import AsyncJudgeReward, JudgePairwiseReward, JudgeScoreReward
from trainers.data import prompt_dataset
from trainers.summary import StepLines as PrintRewards


@pytest.mark.parametrize(
    "kind, trainer_cls, config_cls",
    [
        ("score", GRPOTrainer, GRPOConfig),
        ("pairwise", GRPOTrainer, GRPOConfig),
        ("pairwise", RLOOTrainer, RLOOConfig),
        ("score-async", GRPOTrainer, GRPOConfig),  # TRL awaits it on its event loop
    ],
    ids=["grpo-score", "grpo-pairwise", "rloo-pairwise", "grpo-score-async"],
)
def test_trains_with_judge_reward(tmp_path, tiny_model_dir, tiny_judge, kind, trainer_cls, config_cls):
    seen = []

    class Spy(JudgePairwiseReward if kind == "pairwise" else JudgeScoreReward):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            seen.append(out)
            return out

    reward = AsyncJudgeReward(Spy(tiny_judge)) if kind == "score-async" else Spy(tiny_judge)
    args = config_cls(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        learning_rate=1e-5,
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = trainer_cls(
        model=tiny_model_dir,
        reward_funcs=[reward],
        args=args,
        train_dataset=prompt_dataset("mt_bench", max_prompts=8),
        callbacks=[PrintRewards()],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if f"rewards/{reward.__name__}/mean" in h]
    assert len(logs) == 2 and len(seen) == 2
    for log, rewards in zip(logs, seen):
        values = [r for r in rewards if r is not None]
        assert len(values) == 4  # one group of 4 completions per step, every one judged
        assert log[f"rewards/{reward.__name__}/mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)
        assert log["judge/failures"] == 0
        if kind == "pairwise":
            # Within a complete group, win probabilities (ties half) sum to n/2: the mean is exactly 0.5.
            assert log[f"rewards/{reward.__name__}/mean"] == pytest.approx(0.5, abs=1e-6)
            assert 0 <= log["judge/order_consistency"] <= 1
        else:
            assert all(1 <= v <= 5 for v in values) and not math.isnan(log["judge/entropy"])
