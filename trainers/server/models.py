"""The reward server's request and response bodies (pydantic: the OpenAPI schema documents them)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


def _documented(**schema):
    """A constraint the handlers enforce (400 with the reason), shown in the OpenAPI schema for client generators."""
    return Field(json_schema_extra=schema)


class RewardRequest(BaseModel):
    """OpenRLHF's remote reward request: `query` = prompt + response (chat template applied), `prompts` the prompt."""

    model_config = ConfigDict(extra="forbid")
    query: Annotated[list[str], _documented(minItems=1)]
    prompts: Annotated[list[str], _documented(minItems=1)]
    labels: list[Any] | None = None


class RewardResponse(BaseModel):
    """One number per query (`scores` repeats `rewards`, as OpenRLHF reads either); `extra_logs`: always the same
    keys, each a finite float."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, float]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = "user"
    content: str


# plain text or a conversation, as in `trustreward score` files
Text = Annotated[str, _documented(minLength=1)] | Message | Annotated[list[Message], _documented(minItems=1)]


class ScoreRow(BaseModel):
    model_config = ConfigDict(extra="allow")  # other columns (ids, ...) come back untouched
    prompt: Text
    response: Text


class CompareRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: Text
    response_a: Text
    response_b: Text


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Annotated[list[ScoreRow], _documented(minItems=1)]


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Annotated[list[CompareRow], _documented(minItems=1)]


class RowsResponse(BaseModel):
    """The rows sent, with the judge's fields added (`score`, `p_a`, ..., `judge_error`)."""

    rows: list[dict[str, Any]]


class Health(BaseModel):
    """The server's counters since it started; `degraded` says how groups fell short."""

    status: str
    queued_items: int
    waiting_in_groups: int
    held_bytes: int
    requests: int
    items: int
    judge_calls: int
    groups: int
    failures: int
    lone: int
    incomplete: int
    late: int
    retries_joined: int
    rejected_full: int
    rejected_large: int
    abandoned_items: int
    degraded: dict[str, int]


ERRORS = {
    400: {
        "description": "Mismatched or empty lists, empty text, a label that is not a rubric (reward rubric), or a "
        "Host that is not allowed."
    },
    401: {"description": "Missing or wrong bearer token (`WWW-Authenticate: Bearer`)."},
    413: {"description": "A body over the limit, or more items than one request may hold."},
    422: {"description": "Wrong types, unknown fields, NaN / Infinity, or lone surrogates."},
    503: {"description": "The queue is full, the server is shutting down, or on_failure=retry: retry later."},
}
