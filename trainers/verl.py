"""Judge rewards for verl's reward managers: plain floats, failures under the server's `on_failure` policy.

verl writes each reward into a float tensor and has no "missing" value, so a failed judgement becomes the
policy's stand-in (`trainers.fallback`; counted: a warning per batch, and `judge_failed` per sample with
`details=True`, which verl logs as reward extra info). verl passes no prompt text to reward functions: put the
question into `extra_info[prompt_key]` when preparing the parquet files.

- `compute_score(data_source, solution_str, ground_truth, extra_info)`: one sample (verl 0.9's reward loop,
  which calls it per sample, concurrently; the older `naive` manager). Pointwise with a local judge; with
  `url=` (a `trustreward serve`), the sample goes to `/get_reward`, so a server started with `--group_size N`
  (N = `actor_rollout_ref.rollout.n`) gives pairwise rewards over verl's per-sample calls as for OpenRLHF.
- `compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`: a step's responses together
  (the `batch` manager of verl's older reward managers, `reward_model.reward_manager=batch` up to 0.7),
  grouped by `extra_info[group_key]` (a `uid` copied there; else the prompt, which the n rollouts of a prompt
  share), all groups judged pairwise in one engine call (`reward.group_judging`; or pointwise: `reward="score"`);
  a lone sample gets 0.5 (`NEUTRAL_WIN`, its would-be peers' mean), as on the server.
- Rubric rewards (`compute_score(..., reward="rubric")`): the sample's rubric in `extra_info[rubric_key]` (its JSON
  text, which Parquet keeps as it is, or a list of criteria: `reward.rubrics.parse_rubric`), read by the local
  judge (`Judge.rubric`, `rubric_mode`) or sent to a `trustreward serve --reward rubric` as the sample's `labels`
  entry; pairwise mode compares with `ground_truth` (the anchor answer). A rubric that does not parse raises
  `ValueError` naming the problem (a data error, never a 0); a failed judgement gets the `on_failure` stand-in
  (alone: 0.5, the middle of [0, 1]).

Configure with verl's `reward.custom_reward_function.path=trainers/verl.py`, `.name=compute_score` (or
`compute_score_batch`) and `+reward.custom_reward_function.reward_kwargs.url=...` (`judge`, `on_failure`, ...).

Example:
```python
>>> from trainers.verl import compute_score
>>> compute_score("mt_bench", "Paris.", None, {"question": "Capital of France?"}, judge="embedded")  # doctest: +SKIP
4.1...

```
"""

from __future__ import annotations

import json
import logging
import time
from functools import cache

from reward.group_judging import NEUTRAL_WIN, Group, GroupJudge, against_references, groups_of, neutral

from .fallback import FailurePolicy
from .reward_funcs import JudgeScoreReward

logger = logging.getLogger(__name__)


@cache
def _load(spec: str):
    from .judge_args import JudgeArguments

    return JudgeArguments(judge=spec).load()


def _judge(judge):
    return _load(judge) if isinstance(judge, str) else judge


def _prompt(extra_info, prompt_key: str) -> str:
    if not isinstance(extra_info, dict) or not isinstance(extra_info.get(prompt_key), str):
        raise KeyError(f"verl reward: extra_info[{prompt_key!r}] must hold the question (set it when preparing data)")
    return extra_info[prompt_key]


def _policy(on_failure: str) -> FailurePolicy:
    policy = FailurePolicy.parse(on_failure)
    if policy.kind == "retry":
        raise ValueError("on_failure='retry' needs a client that retries; verl does not: use group_mean or value:X")
    return policy


def _post(url: str, prompts: list[str], responses: list[str], labels: list, timeout: float, tries: int) -> list[float]:
    """`/get_reward` of a trustreward server, retried on 503 (queue full, or its own on_failure=retry). `labels`:
    verl's ground truths (a server with `--reward reference` compares each sample with its own)."""
    import httpx

    labels = [g if isinstance(g, str) else None for g in labels]  # JSON-safe (verl may hold arrays or dicts)
    body = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts, "labels": labels}
    for attempt in range(tries):
        try:
            r = httpx.post(f"{url.rstrip('/')}/get_reward", json=body, timeout=timeout)
            if r.status_code != 503:
                r.raise_for_status()
                return r.json()["rewards"]
        except httpx.TransportError as exc:
            logger.warning("verl reward: %s (try %d of %d)", exc, attempt + 1, tries)
        if attempt + 1 < tries:
            time.sleep(min(8.0, 0.5 * 2**attempt))
    raise RuntimeError(f"verl reward: {url} did not answer after {tries} tries")


def compute_score(
    data_source,
    solution_str: str,
    ground_truth=None,
    extra_info=None,
    *,
    judge="embedded",
    url: str | None = None,
    reward: str = "score",
    scale: int = 5,
    prompt_key: str = "question",
    on_failure: str = "group_mean",
    details: bool = False,
    timeout: float = 300.0,
    retries: int = 4,
    rubric_key: str = "rubric",
    rubric_mode: str = "explicit",
    **_,
) -> float | dict:
    """One sample's reward: the judge's score (1..scale; `JudgeScoreReward`: anchored unless the judge was loaded with
    `score_reading="direct"`); with `reward="reference"`, P(the sample beats `ground_truth`, a reference answer) +
    P(tie) / 2, both orders merged; with `reward="rubric"`, its rubric reward on [0, 1] against
    `extra_info[rubric_key]` (module docstring); with `url`, the reward server's answer (`ground_truth`, or the
    rubric, sent as the sample's `labels` entry).

    A failure gets `on_failure`'s stand-in (alone, `group_mean` is the scale's midpoint, 0.5 for `reference`);
    `details=True` returns `{"score": reward, "judge_failed": 0.0 | 1.0}` (verl logs the extra keys).
    """
    if reward not in ("score", "reference", "rubric"):
        raise ValueError(f"compute_score: reward must be 'score', 'reference' or 'rubric', got {reward!r}")
    policy = _policy(on_failure)
    prompt = _prompt(extra_info, prompt_key)
    value = None
    if reward == "rubric":
        rubric, label = _rubric(extra_info, rubric_key, rubric_mode, ground_truth)
        if url is None:
            references = [ground_truth] if rubric_mode == "pairwise" else None
            try:
                (result,) = _judge(judge).rubric([prompt], [solution_str], [rubric], mode=rubric_mode,
                                                 references=references)  # fmt: skip
                value = result.value
            except Exception as exc:  # a broken judge costs this sample's reward (the stand-in), counted
                logger.warning("verl reward: rubric judgement failed: %s", exc)
        else:
            ground_truth = label  # the server reads the rubric (and the anchor) from the labels entry
    if url is not None:
        try:
            (value,) = _post(url, [prompt], [solution_str], [ground_truth], timeout, retries + 1)
        except Exception as exc:
            logger.warning("verl reward: server failed: %s", exc)
    elif reward == "rubric":
        pass  # judged above
    elif reward == "reference":
        (value,) = against_references(_judge(judge), [prompt], [solution_str], [ground_truth])
    else:
        (value,) = JudgeScoreReward(_judge(judge), scale=scale)(prompts=[prompt], completions=[solution_str])
    failed = value is None
    (reward,) = policy.fill([value], neutral(reward, scale))
    if failed:
        logger.warning("verl reward: a failed judgement got %s", reward)
    return {"score": reward, "judge_failed": float(failed)} if details else reward


def _rubric(extra_info, rubric_key: str, mode: str, anchor) -> tuple:
    """The sample's parsed rubric, and the JSON text a `--reward rubric` server reads it from (pairwise: with the
    anchor answer under "reference"); `ValueError` naming the problem when there is none or it does not parse."""
    from reward.rubric_judging import RUBRIC_MODES
    from reward.rubrics import parse_rubric
    from reward.scoring import check_choice

    check_choice("rubric_mode", mode, RUBRIC_MODES)
    value = extra_info.get(rubric_key) if isinstance(extra_info, dict) else None
    value = value.tolist() if hasattr(value, "tolist") else value  # a list column read back from Parquet (numpy)
    if value is None:
        raise KeyError(f"verl reward: extra_info[{rubric_key!r}] must hold the sample's rubric (reward='rubric')")
    try:
        rubric = parse_rubric(value)
    except ValueError as exc:
        raise ValueError(f"verl reward: extra_info[{rubric_key!r}] is not a rubric: {exc}") from None
    if mode == "pairwise" and not (isinstance(anchor, str) and anchor.strip()):
        raise ValueError(
            "verl reward: rubric_mode='pairwise' compares with ground_truth: it must be the anchor answer"
        )
    criteria = json.loads(value) if isinstance(value, str) else value
    if mode == "pairwise":  # the criteria beside the anchor, in one object (criteria given wrapped stay wrapped)
        criteria = (dict(criteria) if isinstance(criteria, dict) else {"criteria": criteria}) | {"reference": anchor}
    return rubric, json.dumps(criteria)


def compute_score_batch(
    data_sources,
    solution_strs,
    ground_truths=None,
    extra_infos=None,
    *,
    judge="embedded",
    url: str | None = None,
    reward: str = "pairwise",
    scale: int = 5,
    prompt_key: str = "question",
    group_key: str = "uid",
    on_failure: str = "group_mean",
    details: bool = False,
    timeout: float = 300.0,
    retries: int = 4,
    **_,
) -> list[float] | list[dict]:
    """A step's rewards, grouped by `extra_info[group_key]` (else the prompt); see the module docstring."""
    if reward not in ("pairwise", "score"):
        raise ValueError(f"reward must be 'pairwise' or 'score', got {reward!r}")
    policy = _policy(on_failure)
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    prompts = [_prompt(e, prompt_key) for e in extra_infos]
    keys = [str(e.get(group_key, prompts[i])) for i, e in enumerate(extra_infos)]
    groups = groups_of(keys, range(len(solution_strs)))  # every sample, usable or not (an unusable one fails)
    labels = [None if ground_truths is None else ground_truths[i] for i in range(len(solution_strs))]
    raw = _rewards(judge, url, reward, scale, groups, prompts, list(solution_strs), labels, timeout, retries + 1)
    rewards: list = [None] * len(solution_strs)
    failed = 0
    for members, mine in zip(groups, raw):
        failed += sum(r is None for r in mine)
        for i, value, r in zip(members, mine, policy.fill(mine, neutral(reward, scale))):
            rewards[i] = {"score": r, "judge_failed": float(value is None)} if details else r
    if failed:
        logger.warning("verl reward: %d of %d judgements failed (on_failure=%s)", failed, len(rewards), on_failure)
    return rewards


def _rewards(judge, url, reward, scale, groups, prompts, responses, labels, timeout, tries) -> list[list]:
    """Each group's raw rewards (`None` = failed): through the server one request per group (a server without
    --group_size takes one request's samples of a prompt as a group), else every group in one engine call
    (pairwise; a lone sample gets `NEUTRAL_WIN`, its would-be peers' mean) or one pointwise call."""
    if url is not None:
        out = []
        for m in groups:
            try:
                out.append(_post(url, [prompts[i] for i in m], [responses[i] for i in m], [labels[i] for i in m],
                                 timeout, tries))  # fmt: skip
            except Exception as exc:  # one group's failure costs that group, counted
                logger.warning("verl reward: group judgement failed: %s", exc)
                out.append([None] * len(m))
        return out
    if reward == "score":
        flat = [i for m in groups for i in m]
        scores = JudgeScoreReward(_judge(judge), scale=scale)(prompts=[prompts[i] for i in flat],
                                                              completions=[responses[i] for i in flat])  # fmt: skip
        it = iter(scores)
        return [[next(it) for _ in m] for m in groups]
    results = PAIRWISE(_judge(judge), [Group(prompts[m[0]], [responses[i] for i in m]) for m in groups])
    return [[NEUTRAL_WIN] if r.lone else r.rewards for r in results]


PAIRWISE = GroupJudge()  # verl's pairwise reward: all pairs, mean_win (its random stream is unused)
