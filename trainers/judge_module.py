"""`JudgeRewardModel`: the judge dressed as a reward *model*, for trainers that take an `nn.Module`.

- TRL >= 1.13 GRPO / RLOO: pass it in `reward_funcs` with the policy's tokenizer in `reward_processing_classes`;
  TRL calls `forward(input_ids, attention_mask)` and reads `.logits[:, 0]`.
- TRL <= 1.12 PPO (`trl.experimental.ppo`): its `get_reward` calls `getattr(model, model.base_model_prefix)(...,
  output_hidden_states=True)` then `model.score(hidden_states[-1])` and reads the value at the last response
  token. Here the "backbone" judges the decoded sequences and spreads each reward over the sequence, and
  `score` is the identity.

Sequences are decoded with the policy's tokenizer and split into prompt and response where the chat template
starts the assistant's turn (or by a `split` function you give). A failed judgement is NaN, never a number.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from reward.group_judging import Group, GroupJudge, groups_of

from .reward_funcs import JudgeScoreReward


def assistant_marker(tokenizer) -> str:
    """The text the chat template puts before an assistant reply (e.g. "<|im_start|>assistant\\n")."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: pass split= to find the response")
    turn = [{"role": "user", "content": "\x00"}]
    with_prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError("cannot find the assistant turn's marker in the chat template: pass split=")
    return with_prompt[len(without) :]


def _user_turn(tokenizer) -> tuple[str, str]:
    """The text the chat template puts before and after a user message."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False)
    before, _, after = text.partition("\x00")
    return before, after.strip()


class _Backbone(nn.Module):
    """What TRL <= 1.12's `get_reward` calls: rewards as a [batch, seq, 1] "hidden state"."""

    def __init__(self, owner: JudgeRewardModel):
        super().__init__()
        self._owner = [owner]  # a list: not a submodule (no cycle in the module tree)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        rewards = self._owner[0].rewards(input_ids, attention_mask)
        hidden = rewards[:, None, None].expand(-1, input_ids.shape[1], 1)
        return SimpleNamespace(hidden_states=(hidden,), last_hidden_state=hidden)


class JudgeRewardModel(nn.Module):
    """A reward model whose reward is the judge's: pointwise expected score or pairwise win rate in the batch.

    Args:
        judge: a `reward.Judge`.
        tokenizer: the policy's tokenizer (it decodes the sequences the trainer passes).
        reward: "score" (expected score, 1..scale) or "pairwise" (win probability against the other responses to
            the same prompt in the batch).
        scale: pointwise ratings 1..scale.
        split: `text -> (prompt, response)`; default: at the last assistant-turn marker of the chat template.
    """

    base_model_prefix = "backbone"

    def __init__(self, judge, tokenizer, *, reward: str = "score", scale: int = 5, split=None,
                 name: str = "judge_reward_model"):  # fmt: skip
        super().__init__()
        if reward not in ("score", "pairwise"):
            raise ValueError(f"reward must be 'score' or 'pairwise', got {reward!r}")
        self.tokenizer = tokenizer
        self.judge = judge
        self.reward_fn = JudgeScoreReward(judge, scale=scale) if reward == "score" else None
        self.engine = GroupJudge() if reward == "pairwise" else None
        self.split = split or self._split_at_marker
        self._marker = None if split else assistant_marker(tokenizer)
        self._user = None if split else _user_turn(tokenizer)
        self._specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
        self.backbone = _Backbone(self)
        self.score = nn.Identity()
        self.__name__ = name
        self.config = SimpleNamespace(_name_or_path=name)  # TRL names an nn.Module reward after its config
        self.failures = 0

    def _split_at_marker(self, text: str) -> tuple[str, str]:
        """(the last user turn's text, the assistant's reply after it), both without special tokens."""
        cut = text.rfind(self._marker)
        if cut < 0:
            return "", ""
        prompt, response = text[:cut], text[cut + len(self._marker) :]
        start, end = self._user
        if start in prompt:  # the question: the last user turn
            prompt = prompt[prompt.rfind(start) + len(start) :]
            prompt = prompt[: prompt.find(end)] if end and end in prompt else prompt
        for special in self._specials:  # the judge reads plain text
            prompt, response = prompt.replace(special, " "), response.replace(special, "")
        return prompt.strip(), response.strip()

    @torch.no_grad()
    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One reward per sequence (NaN where the judge failed or no response was found)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        texts = [self.tokenizer.decode(ids[m].tolist(), skip_special_tokens=False) for ids, m in zip(input_ids, mask)]
        prompts, responses = zip(*[self.split(t) for t in texts])
        if self.engine is None:
            values = self.reward_fn(prompts=[p or None for p in prompts], completions=[r or None for r in responses])
        else:  # each prompt's responses in the batch are a group (a lone one, or one without a prompt: NaN)
            members = groups_of(prompts, [r if p and r else None for p, r in zip(prompts, responses)])
            results = self.engine(self.judge, [Group(prompts[m[0]], [responses[i] for i in m]) for m in members])
            values = [None] * len(prompts)
            for m, result in zip(members, results):
                for i, v in zip(m, result.rewards):
                    values[i] = v
        self.failures += sum(v is None for v in values)
        return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32,
                            device=input_ids.device)  # fmt: skip

    def forward(self, input_ids, attention_mask=None, **kwargs) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.rewards(input_ids, attention_mask)[:, None])
