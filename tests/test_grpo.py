"""A real GRPOTrainer / RLOOTrainer .train() with each reward callable: a tiny from-config policy, and a judge that
prefers the longer completion, so the rewards the trainer logged must rank each group's completions by length."""

import pytest
import torch
from conftest import FakeBackend, answer_in_slot
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from reward import Judge
from reward.anchored import ANCHOR
from trainers import AsyncJudgeReward, JudgePairwiseReward, JudgeScoreReward, as_text
from trainers.mt_bench import prompt_dataset
from trainers.summary import StepLines as PrintRewards

RESPONSE = "[The Start of Assistant's Answer]\n"


def longer_wins(prompt):
    a, b = len(answer_in_slot(prompt, "A")), len(answer_in_slot(prompt, "B"))
    if a == b:
        return {"A": 0.2, "B": 0.2, "C": 0.6}
    return {"A": 0.7, "B": 0.2, "C": 0.1} if a > b else {"A": 0.2, "B": 0.7, "C": 0.1}


def longer_shares_more(prompt):
    """A's share of 0.9 is its share of the two lengths (ties 0.1): the anchored score grows with the length, so a
    group's completions of different lengths get different rewards (else GRPO has no advantage to learn from)."""
    a, b = len(answer_in_slot(prompt, "A")), len(answer_in_slot(prompt, "B"))
    return {"A": 0.9 * a / (a + b), "B": 0.9 * b / (a + b), "C": 0.1}


def rating(text: str) -> int:
    return min(5, 1 + len(text) // 8)


def longer_scores_higher(prompt):  # all mass on one rating: the expected score is that rating
    answer = prompt.split(RESPONSE, 1)[1].split("\n[The End of Assistant's Answer]", 1)[0]
    return {str(rating(answer)): 1.0}


def expected_pairwise(group: list[str]) -> list[float]:
    """By hand: against a longer peer 0.25 (0.2 + tie 0.1 / 2), a shorter 0.75, an equal one 0.5."""
    win = {1: 0.75, 0: 0.5, -1: 0.25}
    return [
        sum(win[(len(x) > len(y)) - (len(x) < len(y))] for j, y in enumerate(group) if j != i) / (len(group) - 1)
        for i, x in enumerate(group)
    ]


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
    # the library's defaults; its slot would say rating(c): a score reward reading the slot fails the check below
    rule = longer_wins if kind == "pairwise" else longer_shares_more
    judge = Judge(FakeBackend(tiny_judge.tokenizer, rule, longer_scores_higher), progress=False)
    reward = JudgePairwiseReward(judge) if kind == "pairwise" else JudgeScoreReward(judge, method="mean")
    reward = AsyncJudgeReward(reward) if kind == "score-async" else reward
    args = config_cls(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
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
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    # What the trainer itself recorded for the last step: its 4 completions and the reward of each.
    completions = [as_text(c) for c in list(trainer._logs["completion"])[-4:]]  # (conversational: the text)
    logged = list(trainer._logs["rewards"][reward.__name__])[-4:]
    assert len(completions) == 4 and None not in completions
    if kind == "pairwise":
        assert len({len(c) for c in completions}) > 1, completions  # else the case proves nothing
        assert logged == pytest.approx(expected_pairwise(completions), abs=1e-6)
    else:
        # the default (anchored) reading: 1 + 4 P(win) against reward.anchored.ANCHOR; merged, the response's
        # share is 0.9 len / (len + len(ANCHOR)), the tie 0.1
        want = [1 + 4 * (0.9 * len(c) / (len(c) + len(ANCHOR)) + 0.05) for c in completions]
        assert logged == pytest.approx(want, abs=1e-6)
    # Advantages follow the rewards: the best completion gets the largest.
    advantages = list(trainer._logs["advantages"])[-4:]
    assert advantages.index(max(advantages)) == logged.index(max(logged))
    logs = [h for h in trainer.state.log_history if f"rewards/{reward.__name__}/mean" in h]
    assert len(logs) == 2 and logs[-1][f"rewards/{reward.__name__}/mean"] == pytest.approx(sum(logged) / 4, abs=1e-5)
    assert all(h["judge/failures"] == 0 for h in logs)
    # The policy learned from them: its weights moved.
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no weight changed after 2 steps"
