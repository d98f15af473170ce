"""NeMo Gym's resources-server verify, in the `genrm_compare` cohort shape: `POST /verify`.

Follows nemo-gym 0.7.0: `nemo_gym/base_resources_server.py` (`BaseVerifyRequest`, `BaseVerifyResponse`) and
`resources_servers/genrm_compare/app.py` (`GenRMCompareVerifyRequest` / `Response`, `_input_to_conversation_history`,
`utils.extract_from_response_obj`). NeMo Gym's agent (`responses_api_agents/simple_agent/app.py`) posts one rollout
per request: its run request (`responses_create_params`, plus `_ng_task_index`, `_ng_rollout_index`,
`_ng_group_id`, `_ng_group_attempt`, other task fields) with `response`, the policy's Responses API object. The
answer is the request echoed with `reward` and NeMo Gym's failure fields (`mask_sample`, `failure_kind`,
`failure_reason`).

- The prompt is `responses_create_params.input` (a string, or messages whose text parts are joined); the judged
  answer is the `output_text` of the response's `message` items (reasoning items are not judged), as in
  `genrm_compare`.
- Cohorts: like `genrm_compare` with `num_rollouts_per_prompt = N`, a prompt's rollouts are held and compared
  pairwise once N arrived: serve with `--group_size N`. Rollouts are grouped by prompt text (the server's prompt
  groups); the `_ng_*` coordinates are echoed, not used for grouping, and a `principle` is echoed, not judged
  (the judge's own template decides). Unlike `genrm_compare`, a cohort that does
  not fill within `--group_timeout` is judged with the rollouts that arrived (`judge_incomplete` = 1) instead of
  failing, and a lone rollout gets its pointwise score in [0, 1] (`judge_lone` = 1).
- `POST /compare` also takes `genrm_compare`'s batch body (`conversation_history`, `response_objs`, as
  `comparison_strategies.GenRMStrategy` posts it) and answers `rewards` (request order) and `metrics`; the
  server's `trustreward compare` rows keep working on the same path.
- `/seed_session`, `/close_session` (no per-rollout state) and `/aggregate_metrics` (mean rewards, masked
  rollouts left out) answer as `SimpleResourcesServer` does: `simple_agent` seeds a session before every rollout.
- Rewards are trustreward's, in [0, 1] (pairwise: the mean win rate against the cohort), not GenRM's 1-5 scores.
- `--reward reference` compares each rollout with the task's `expected_answer` (the field NeMo Gym's
  `math_with_judge` and `equivalence_llm_judge` carry); a rollout without one is a failure.
- `--reward rubric` reads the task's `rubric` field (a list of criteria or its JSON text, as a task JSONL row
  carries it and the agent echoes it); a missing or broken rubric answers 400 naming the problem.
- A failed judgement is NeMo Gym's masked failure, with the fields of its judge failsafe (`nemo_gym/judge.py`):
  HTTP 200, `mask_sample: true`, `failure_kind: "judge_failed"`, `failure_reason`, `instance_config.mask_sample`,
  `_ng_failure_class`; `reward` is the `--on_failure` stand-in (a number: NeMo Gym's `reward` is required, and its
  failsafe's 0.0 would be a real reward to a caller that ignores the mask). Under `--on_failure retry` the answer
  is 503, as `genrm_compare` answers a failed cohort.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict

from .samples import Samples


class GenRMCompareRequest(BaseModel):
    """`genrm_compare`'s batch request (`POST /compare`, as `GenRMStrategy.compare` posts it)."""

    model_config = ConfigDict(extra="forbid")
    conversation_history: list[dict[str, str]]
    response_objs: list[dict[str, Any]]
    principle: str | None = None


class VerifyRequest(BaseModel):
    """`GenRMCompareVerifyRequest`'s wire shape: the fields read here; everything else is kept and echoed."""

    model_config = ConfigDict(extra="allow")
    responses_create_params: dict[str, Any]
    response: dict[str, Any]


def conversation(input_messages) -> list[dict[str, str]]:
    """The prompt as chat messages (`genrm_compare`'s `_input_to_conversation_history`).

    Example:
    ```python
    >>> conversation("Hi")
    [{'role': 'user', 'content': 'Hi'}]
    >>> conversation([{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    [{'role': 'user', 'content': 'Hi'}]

    ```
    """
    if isinstance(input_messages, str):
        return [{"role": "user", "content": input_messages}]
    out = []
    for item in input_messages or []:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue
        content = item.get("content") or ""
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if isinstance(part, dict)
                     and part.get("type") in ("input_text", "output_text")]  # fmt: skip
            content = "".join(texts)
        out.append({"role": item.get("role", "user"), "content": str(content)})
    return out


def output_text(response: dict) -> str:
    """The final answer of a Responses API object: its message items' `output_text` parts, reasoning left out.

    Example:
    ```python
    >>> output_text({"output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
    ...     {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]}]})
    'Paris.'

    ```
    """
    parts = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list):
            for part in item["content"]:
                if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    parts.append(part["text"])
    return "".join(parts)


async def genrm_compare(samples: Samples, body: GenRMCompareRequest, request: Request) -> dict[str, Any]:
    """`genrm_compare`'s batch `/compare`: the responses judged now as one pairwise group (whatever `--reward`),
    `{"rewards": [...], "comparison_results": None, "metrics": {...}}` (rewards in the request's order)."""
    if not body.response_objs:  # as genrm_compare: nothing to compare, an empty list
        return {"rewards": [], "comparison_results": None, "metrics": None}
    responses = [output_text(r) for r in body.response_objs]
    outcomes = await samples.judge_group(request, body.conversation_history, responses)
    if any(o.reward is None for o in outcomes):  # on_failure="retry": genrm_compare answers 503 too
        raise HTTPException(503, "the judge failed on this group; retry")
    first = outcomes[0]
    metrics = {"judge/failures": float(sum(o.failed for o in outcomes)), "judge/lone": float(first.lone),
               "judge/compared_pairs": float(first.compared_pairs),
               "judge/consistent_pairs": float(first.consistent_pairs)}  # fmt: skip
    return {"rewards": [o.reward for o in outcomes], "comparison_results": None, "metrics": metrics}


def aggregate(verify_responses: list[dict]) -> dict[str, Any]:
    """`/aggregate_metrics` (an `AggregateMetrics`): mean rewards overall and per task over the rollouts that are
    not masked (NeMo Gym leaves masked failures out of reward metrics), and how many rollouts were masked.

    Example:
    ```python
    >>> rows = [{"_ng_task_index": 0, "reward": 0.2}, {"_ng_task_index": 0, "reward": 0.6},
    ...         {"_ng_task_index": 1, "reward": 0.5, "mask_sample": True}]
    >>> aggregate(rows)["agent_metrics"]
    {'mean/reward': 0.4, 'num_rollouts': 3, 'num_masked': 1}

    ```
    """
    kept = [r for r in verify_responses if not r.get("mask_sample")]
    tasks: dict[Any, list[float]] = {}
    for r in kept:
        tasks.setdefault(r.get("_ng_task_index"), []).append(float(r["reward"]))
    mean = sum(float(r["reward"]) for r in kept) / len(kept) if kept else None
    overall = {"mean/reward": mean, "num_rollouts": len(verify_responses),
               "num_masked": len(verify_responses) - len(kept)}  # fmt: skip
    per_task = [{"_ng_task_index": t, "mean/reward": sum(v) / len(v), "num_rollouts": len(v)}
                for t, v in tasks.items()]  # fmt: skip
    return {"group_level_metrics": per_task, "agent_metrics": overall, "key_metrics": {"mean/reward": mean}}


def add_nemo_gym_routes(app, samples: Samples, dependencies: list, responses: dict) -> None:
    @app.post("/seed_session", responses=responses, dependencies=dependencies)
    async def seed_session(body: dict[str, Any]) -> dict[str, Any]:
        """No per-rollout state: `simple_agent` seeds before every rollout (`{}` back), an environment server with
        a `resources_session_id` (echoed back), as `SimpleResourcesServer.seed_session` answers."""
        session = body.get("resources_session_id")
        return {"resources_session_id": session} if isinstance(session, str) and session else {}

    @app.post("/close_session", responses=responses, dependencies=dependencies)
    async def close_session(body: dict[str, Any]) -> dict[str, Any]:
        """Nothing to release (`SimpleResourcesServer.close_resources_session`)."""
        return {"resources_session_id": body.get("resources_session_id")}

    @app.post("/aggregate_metrics", responses=responses, dependencies=dependencies)
    async def aggregate_metrics(body: dict[str, Any]) -> dict[str, Any]:
        """The collector's metrics over its verify responses (see `aggregate`)."""
        rows = body.get("verify_responses")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "reward" in r for r in rows):
            raise HTTPException(422, "verify_responses must be a list of verify responses, each with a reward")
        return aggregate(rows)

    @app.post("/verify", responses=responses, dependencies=dependencies)
    async def verify(body: VerifyRequest, request: Request) -> dict[str, Any]:
        """NeMo Gym's `/verify`: one rollout in, the request echoed with its `reward` (see the module docstring)."""
        prompt = conversation(body.responses_create_params.get("input"))
        extra, field = body.model_extra or {}, "rubric" if samples.reward == "rubric" else "expected_answer"
        # --reward reference: the task's reference answer; --reward rubric: the task's rubric
        (outcome,) = await samples.judge(request, [prompt], [output_text(body.response)], [extra.get(field)], field)
        if outcome.reward is None:  # on_failure="retry"
            raise HTTPException(503, "the judge failed on this rollout; retry")
        answer = body.model_dump() | {
            "reward": outcome.reward,
            "mask_sample": outcome.failed,
            "failure_kind": None,
            "failure_reason": None,
            "judge_group_size": float(outcome.group_size),
            "judge_lone": float(outcome.lone),
            "judge_incomplete": float(outcome.incomplete),
        }
        if outcome.failed:  # the fields of NeMo Gym's own judge failsafe (nemo_gym/judge.py: judge_failsafe)
            reason = "the judge gave no judgement; reward is the server's on_failure stand-in"
            config = answer.get("instance_config")
            answer |= {"failure_kind": "judge_failed", "failure_reason": reason,
                       "instance_config": {**(config if isinstance(config, dict) else {}), "mask_sample": True},
                       "_ng_failure_class": "judge_failed", "_ng_failure_judge_error": reason}  # fmt: skip
        return answer
