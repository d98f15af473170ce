"""TRL's environment-owned reward: an environment whose async `get_reward` asks the judge.

TRL 1.16 (`GRPOTrainer(environment_factory=...)`, `trl/trainer/grpo_trainer.py`) makes one environment per
rollout, calls `reset(**example)` before generation, offers the environment's public methods to the model as
tools, and after the rollout awaits `get_reward()` (no arguments; a float, or `None` for no reward: NaN, left out
of the weighted sum), logged under the environment's class name. `judge_environment(judge)` builds such a class:
the model submits its answer with the `submit_answer` tool, and `get_reward` judges it against the example's
prompt.

- `reward="score"`: the judge's score (`JudgeScoreReward`: anchored by default, docs/injection.md) rescaled to
  [0, 1].
  `reward="reference"`: the answer against the example's `reference_column`, both orders merged,
  P(answer wins) + P(tie) / 2 (the server's `--reward reference`).
- Not pairwise: TRL awaits `get_reward` one rollout after another (`grpo_trainer.py`: `[await e.get_reward() ...
  for e in environments]`; `experimental/async_grpo/async_rollout_worker.py` awaits it as each rollout ends), so
  a rollout waiting there for its peers would wait for ever. Pairwise rewards go through `reward_funcs`
  (`trainers.JudgePairwiseReward` sees the whole group).
- No answer submitted, no usable reference, or a judge failure: `None` (TRL's missing value), counted in the
  class's `failures` and logged.

Example:
```python
>>> from trainers.protocols.trl_env import judge_environment
>>> Env = judge_environment("embedded")  # doctest: +SKIP
>>> trainer = GRPOTrainer(model=..., environment_factory=Env, train_dataset=...)  # doctest: +SKIP

```
"""

from __future__ import annotations

import asyncio
import logging
import threading

from reward.group_judging import against_references
from reward.text import as_text

from ..reward_funcs import JudgeScoreReward

logger = logging.getLogger(__name__)

ENV_REWARDS = ("score", "reference")


class JudgeEnvironment:
    """The environment TRL makes per rollout (build the class with `judge_environment`)."""

    judge = None  # set on the class by `judge_environment`
    reward, scale, reference_column = "score", 5, "reference"
    failures = 0  # rollouts without a reward, over the class's life
    _lock = threading.Lock()  # a judge is not thread-safe; TRL may run get_reward beside other work
    _score = None

    def reset(self, **example) -> None:
        self.prompt = example.get("prompt")
        self.reference = example.get(self.reference_column)
        self.answer = None

    def submit_answer(self, answer: str) -> str:
        """Submit your final answer to the user's request. Call it once, with the complete answer.

        Args:
            answer: The complete final answer.
        """
        self.answer = answer
        return "Answer recorded."

    async def get_reward(self) -> float | None:
        reward = await asyncio.to_thread(self._judged)
        if reward is None:
            type(self).failures += 1
            logger.warning("%s: no reward for this rollout (no answer, no reference, or the judge failed)",
                           type(self).__name__)  # fmt: skip
        return reward

    def _judged(self) -> float | None:
        prompt, answer = as_text(self.prompt), as_text(self.answer)
        if prompt is None or answer is None:
            return None
        cls = type(self)
        with cls._lock:
            if cls.reward == "score":
                (score,) = cls._score(prompts=[prompt], completions=[answer])
                return None if score is None else (score - 1) / (cls.scale - 1)
            if isinstance(cls.judge, str):  # a spec: loaded on first use, in the process that uses it
                from ..judge_args import JudgeArguments

                cls.judge = JudgeArguments(judge=cls.judge).load()
            (win,) = against_references(cls.judge, [prompt], [answer], [self.reference])
            return win


def judge_environment(judge, *, reward: str = "score", scale: int = 5, reference_column: str = "reference",
                      name: str = "JudgeEnvironment") -> type[JudgeEnvironment]:  # fmt: skip
    """A `JudgeEnvironment` class on `judge` (pass the class as TRL's `environment_factory`).

    Args:
        judge: a `reward.Judge`, or a spec for `reward.load_judge` (loaded on first use).
        reward: "score" or "reference" (see the module docstring).
        scale: ratings 1..scale for `score`.
        reference_column: the dataset column holding each example's reference answer (`reference`).
        name: the class name, which TRL logs the reward under.
    """
    if reward not in ENV_REWARDS:
        raise ValueError(f"reward must be one of {', '.join(ENV_REWARDS)}, got {reward!r}")
    score = JudgeScoreReward(judge, scale=scale) if reward == "score" else None
    return type(name, (JudgeEnvironment,), {
        "judge": judge, "_score": score, "reward": reward, "scale": scale, "reference_column": reference_column,
        "failures": 0, "_lock": threading.Lock(),
    })  # fmt: skip
