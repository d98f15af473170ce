"""slime's remote reward (THUDM/slime, `slime/rollout/rm_hub/__init__.py`): `POST /remote_rm`.

slime's `--rm-type remote_rm --rm-url URL` posts each sample to the URL as it is:
`{"prompt": sample.prompt, "response": sample.response, "label": sample.label}` (`remote_rm`), and makes the
JSON body of the answer the sample's reward (`sample.reward = await resp.json()`). So the answer here is a bare
JSON number, never an object and never `null` (slime has no missing value: leave `--reward-key` unset).

- Without `--group-rm`, each sample is posted when its generation ends; with `--group-rm`, slime gathers a
  prompt's group and posts all its samples at once (`batched_async_rm`: one `remote_rm` per sample, together).
  Either way a pairwise reward needs `--group_size` = slime's `--n-samples-per-prompt`: the samples of a prompt
  are held until the group is complete (or `--group_timeout` passed) and judged together.
- `label`: the reference answer under `--reward reference`, the rubric (a list of criteria or its JSON text)
  under `--reward rubric` (one that is not a rubric answers 400), ignored otherwise.
- A failed judgement answers the `--on_failure` stand-in (counted in `/health`'s `failures`); under
  `--on_failure retry` it answers 503 and slime retries (10 tries, exponential backoff, 120 s per try).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from .samples import Samples


class SlimeSample(BaseModel):
    """The body `remote_rm` posts (other keys a fork adds are ignored)."""

    prompt: str | list[dict[str, Any]]
    response: str
    label: Any = None


def add_slime_routes(app, samples: Samples, dependencies: list, responses: dict) -> None:
    @app.post("/remote_rm", responses=responses, dependencies=dependencies)
    async def remote_rm(body: SlimeSample, request: Request) -> float:
        """slime's `remote_rm`: one sample in, its reward out as a bare JSON number."""
        (outcome,) = await samples.judge(request, [body.prompt], [body.response], [body.label], field="label")
        if outcome.reward is None:  # on_failure="retry"
            raise HTTPException(503, "the judge failed on this sample; retry")
        return outcome.reward
