"""Rubric rewards read as probabilities: each criterion's choices read exactly at a pre-filled slot, never parsed.

Three modes (`judge_rubrics`, also `Judge.rubric`):
- `"explicit"`: one prompt per criterion (question, answer, then the criterion: every criterion of an answer
  shares the prompt up to the criterion, which the local backend's prefix cache runs once), the criterion's choices
  read exactly (multi-token choices through the label trie like any label set), its value the expected choice rank
  (`reward.rubrics.choice_value`), the reward `reward.rubrics.rubric_value`.
- `"implicit"`: all criteria in one prompt, a 1-10 score read exactly, mapped to [0, 1] as (s - 1) / 9; the
  criteria are listed as given and reversed, both read and their probabilities merged (as a pair's two
  presentation orders are); `RubricScore.order_gap` is how far the two orders' values lie apart.
- `"pairwise"`: per criterion, which of the answer and an anchor answer (the row's entry of `references`, else the
  anchored pointwise reading's `reward.anchored.ANCHOR`) meets it better, both
  presentation orders merged (`reward.scoring.merge_bidirectional`); the reward `reward.rubrics.pairwise_value`
  (0.5: as good as the anchor). Costs two prompts per criterion.

When the reward is `None`: a criterion that failed (the backend raised, the judge put no probability on any
choice) is reported in its `CriterionRead.error` and counted in `RubricScore.failed`, never read as "no"; the
answer's reward is then `None` (a rubric missing one of its criteria would be another rubric), as is a prompt
that does not fit the judge's context (`RubricScore.error`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import defenses
from .anchored import ANCHOR
from .judge import _COUNTERFACTUAL, VERDICTS, _prob
from .rubrics import DEFAULT_CHOICES, Rubric, choice_value, pairwise_value, parse_rubric, rubric_value
from .scoring import merge_bidirectional
from .templates import RUBRIC, RUBRIC_IMPLICIT, RUBRIC_PAIRWISE
from .text import check_texts

RUBRIC_MODES = ("explicit", "implicit", "pairwise")
IMPLICIT_SCALE = 10


@dataclass
class CriterionRead:
    """One criterion of one answer, as the judge read it.

    Attributes:
        text, weight: the criterion's.
        value: its value in [0, 1] (explicit: the expected choice rank; pairwise: P(the answer meets it better than
            the anchor), a tie half); `None` when the read failed.
        probs: choice (explicit) or verdict (pairwise, merged: "a" = the answer) -> probability, renormalised.
        valid_mass: the raw probability the judge put on the allowed choices (pairwise: the two orders' mean).
        valid_mass_exact: `False` where it is a lower bound (a served judge's top-k read).
        entropy: of `probs`, in nats.
        error: why the read failed, else `None`.
    """

    text: str
    weight: float
    value: float | None = None
    probs: dict[str, float] = field(default_factory=dict)
    valid_mass: float = 0.0
    valid_mass_exact: bool = True
    entropy: float | None = None
    error: str | None = None


@dataclass
class RubricScore:
    """The rubric reward of one answer.

    Attributes:
        value: the reward in [0, 1], `None` when it failed (see the module docstring).
        mode: "explicit", "implicit" or "pairwise".
        criteria: one `CriterionRead` per criterion (explicit, pairwise); empty in implicit mode.
        failed: how many criteria failed.
        valid_mass: the mean raw probability on allowed labels over the reads (implicit: over both orders).
        entropy: implicit: of the merged 1-10 distribution; else `None`.
        order_gap: implicit: |value with the criteria as given - value with them reversed|; else `None`.
        error: why the whole answer failed, else `None`.
        truncated: the answer (or the anchor) was cut to fit the judge's context.
    """

    value: float | None
    mode: str
    criteria: list[CriterionRead] = field(default_factory=list)
    failed: int = 0
    valid_mass: float = 0.0
    entropy: float | None = None
    order_gap: float | None = None
    error: str | None = None
    truncated: bool = False


def _entropy(probs: dict) -> float:
    return -sum(p * math.log(p) for p in probs.values() if p > 0)


def _choices_text(choices: Sequence[str]) -> str:
    """The line after a criterion naming its choices; none for the default (no, yes), which the system text names."""
    if tuple(choices) == DEFAULT_CHOICES:
        return ""
    return "\n[Allowed choices, worst to best]\n" + ", ".join(f"[{c}]" for c in choices)


def _criteria_text(rubric: Rubric, reverse: bool) -> str:
    items = list(enumerate(rubric.criteria, 1))
    lines = [f"{n}. (weight {abs(c.weight):g}{', PITFALL' if c.pitfall else ''}) {c.text}" for n, c in items]
    return "\n".join(reversed(lines) if reverse else lines)


def judge_rubrics(judge, prompts, responses, rubrics, *, mode: str = "explicit", references=None) -> list[RubricScore]:
    """Rubric rewards of answers, one `RubricScore` each (see the module docstring).

    Args:
        judge: a `reward.Judge`.
        prompts, responses: the questions and the answers to judge.
        rubrics: one rubric per answer, in any format `reward.rubrics.parse_rubric` reads.
        mode: "explicit", "implicit" or "pairwise".
        references: pairwise mode: the anchor answer of each row (e.g. the dataset's reference answer); a row
            without one (`None`, or no `references` at all) is compared with `reward.anchored.ANCHOR`, the anchored
            pointwise reading's anchor.
    """
    prompts = check_texts("prompts", prompts)
    responses = check_texts("responses", responses, len(prompts))
    if mode not in RUBRIC_MODES:
        raise ValueError(f"mode must be one of {', '.join(RUBRIC_MODES)}; got {mode!r}")
    if isinstance(rubrics, str) or not isinstance(rubrics, Sequence) or len(rubrics) != len(prompts):
        raise ValueError(f"rubrics must be a list of {len(prompts)} rubrics, one per answer")
    parsed = []
    for i, rubric in enumerate(rubrics):
        try:
            parsed.append(parse_rubric(rubric))
        except ValueError as exc:
            raise ValueError(f"rubrics[{i}]: {exc}") from None
    if mode == "pairwise":
        references = [None] * len(prompts) if references is None else list(references)
        if len(references) != len(prompts):
            raise ValueError(f"references has {len(references)} items, expected {len(prompts)}")
        references = check_texts("references", [ANCHOR if r is None else r for r in references])
    if judge.backend.lockstep and any(c.choices != DEFAULT_CHOICES for r in parsed for c in r.criteria):
        # Every rank must make the same backend calls; custom choice sets would split them differently per rank.
        raise ValueError("a sharded (lockstep) judge reads rubrics with the default choices (no, yes) only")
    read = {"explicit": _explicit, "implicit": _implicit, "pairwise": _pairwise}[mode]
    results = read(judge, prompts, responses, parsed, references)
    if judge.injection_check and not getattr(_COUNTERFACTUAL, "active", False):
        results = _check(judge, prompts, responses, parsed, references, mode, results)
    return results


def _explicit(judge, prompts, responses, rubrics, references) -> list[RubricScore]:
    results = [RubricScore(None, "explicit", [CriterionRead(c.text, c.weight) for c in r.criteria]) for r in rubrics]
    jobs: dict[tuple[str, ...], list] = {DEFAULT_CHOICES: []}  # choices -> [(row, criterion, prompt)]
    for i, (question, response, rubric) in enumerate(zip(prompts, responses, rubrics)):
        # One fit per answer (the longest criterion's room), so every criterion's prompt starts the same way.
        longest = max((c.text for c in rubric.criteria), key=len)
        choices = max((_choices_text(c.choices) for c in rubric.criteria), key=len)
        fields = {"question": question, "response": response, "criterion": longest, "choices": choices}
        fitted, results[i].truncated, error = judge._fit(RUBRIC, fields, ("response",), "direct")
        if fitted is None:
            _fail(results[i], error)
            continue
        fitted = judge._defend(RUBRIC, fitted)
        if judge.neutralize and _labels(rubric):  # custom choices: their look-alikes ("Verdict: [good]") too
            fitted["response"] = defenses.neutralize(fitted["response"], RUBRIC, _labels(rubric))
        for j, c in enumerate(rubric.criteria):
            text = {"criterion": judge._clean(c.text), "choices": _choices_text(c.choices)}
            jobs.setdefault(c.choices, []).append((i, j, judge._render(RUBRIC, {**fitted, **text}, defended=True)))
    for choices, items in jobs.items():
        if not items and not judge.backend.lockstep:
            continue
        reads = judge._read([p for _, _, p in items], RUBRIC, list(choices), "direct", "judge rubric")
        for (i, j, _), got in zip(items, reads):
            crit = results[i].criteria[j]
            if isinstance(got, str):
                crit.error = got
                continue
            probs = {c: _prob(got[0][c]) for c in choices}
            crit.valid_mass, crit.valid_mass_exact = sum(probs.values()), judge.backend.exact_reads
            if crit.valid_mass <= 0:
                crit.error = "the judge put no probability on any choice"
                continue
            crit.probs = {c: p / crit.valid_mass for c, p in probs.items()}
            crit.value, crit.entropy = choice_value(probs, choices), _entropy(crit.probs)
    for result, rubric in zip(results, rubrics):
        _finish(result, lambda values, rubric=rubric: rubric_value(rubric, values))
    return results


def _pairwise(judge, prompts, responses, rubrics, references) -> list[RubricScore]:
    results = [RubricScore(None, "pairwise", [CriterionRead(c.text, c.weight) for c in r.criteria]) for r in rubrics]
    items = []  # (row, criterion, prompt with the answer first, prompt with the anchor first)
    for i, (question, response, anchor, rubric) in enumerate(zip(prompts, responses, references, rubrics)):
        texts = [f"Avoids this mistake: {c.text}" if c.pitfall else c.text for c in rubric.criteria]
        fields = {"question": question, "response_a": response, "response_b": anchor, "criterion": max(texts, key=len)}
        fitted, results[i].truncated, error = judge._fit(
            RUBRIC_PAIRWISE, fields, ("response_a", "response_b"), "direct"
        )
        if fitted is None:
            _fail(results[i], error)
            continue
        fitted = judge._defend(RUBRIC_PAIRWISE, fitted)
        swapped = {**fitted, "response_a": fitted["response_b"], "response_b": fitted["response_a"]}
        for j, text in enumerate(texts):
            renders = [judge._render(RUBRIC_PAIRWISE, {**f, "criterion": judge._clean(text)}, defended=True)
                       for f in (fitted, swapped)]  # fmt: skip
            items.append((i, j, *renders))
    flat = [p for item in items for p in item[2:]]
    reads = judge._read(flat, RUBRIC_PAIRWISE, list(VERDICTS), "direct", "judge rubric pairs")
    for k, (i, j, _, _) in enumerate(items):
        crit, first, second = results[i].criteria[j], reads[2 * k], reads[2 * k + 1]
        if isinstance(first, str) or isinstance(second, str):
            crit.error = first if isinstance(first, str) else second
            continue
        orders = [{v: _prob(got[0][v]) for v in VERDICTS} for got in (first, second)]
        crit.valid_mass = sum(sum(o.values()) for o in orders) / 2
        crit.valid_mass_exact = judge.backend.exact_reads
        if min(sum(o.values()) for o in orders) <= 0:
            crit.error = "the judge put no probability on any verdict in one order"
            continue
        p_a, p_b, p_tie = merge_bidirectional(*orders)
        crit.probs = {"a": p_a, "b": p_b, "tie": p_tie}
        crit.value, crit.entropy = p_a + p_tie / 2, _entropy(crit.probs)
    for result, rubric in zip(results, rubrics):
        _finish(result, lambda values, rubric=rubric: pairwise_value(rubric, values))
    return results


def _implicit(judge, prompts, responses, rubrics, references) -> list[RubricScore]:
    results = [RubricScore(None, "implicit") for _ in rubrics]
    labels = [str(s) for s in range(1, IMPLICIT_SCALE + 1)]
    items = []  # (row, prompt with the criteria as given, prompt with them reversed)
    for i, (question, response, rubric) in enumerate(zip(prompts, responses, rubrics)):
        given = _criteria_text(rubric, reverse=False)
        fields = {"question": question, "response": response, "criteria": given}
        fitted, results[i].truncated, error = judge._fit(RUBRIC_IMPLICIT, fields, ("response",), "direct")
        if fitted is None:
            _fail(results[i], error)
            continue
        fitted = judge._defend(RUBRIC_IMPLICIT, fitted)
        reverse = judge._clean(_criteria_text(rubric, reverse=True))
        items.append((i, judge._render(RUBRIC_IMPLICIT, fitted, defended=True),
                      judge._render(RUBRIC_IMPLICIT, {**fitted, "criteria": reverse}, defended=True)))  # fmt: skip
    flat = [p for item in items for p in item[1:]]
    reads = judge._read(flat, RUBRIC_IMPLICIT, labels, "direct", "judge rubric")
    for k, (i, _, _) in enumerate(items):
        result, got = results[i], reads[2 * k : 2 * k + 2]
        errors = [g for g in got if isinstance(g, str)]
        if errors:
            _fail(result, errors[0])
            continue
        orders = [{int(s): _prob(g[0][s]) for s in labels} for g in got]
        masses = [sum(o.values()) for o in orders]
        result.valid_mass = sum(masses) / 2
        if min(masses) <= 0:
            _fail(result, "the judge put no probability on any score in one criterion order")
            continue
        means = [sum(s * p for s, p in o.items()) / m for o, m in zip(orders, masses)]
        merged = {s: (orders[0][s] + orders[1][s]) / sum(masses) for s in orders[0]}
        result.value = (sum(s * p for s, p in merged.items()) - 1) / (IMPLICIT_SCALE - 1)
        result.entropy, result.order_gap = _entropy(merged), abs(means[0] - means[1]) / (IMPLICIT_SCALE - 1)
    return results


def _labels(rubric: Rubric) -> tuple[str, ...]:
    """The rubric's choices other than the default "yes" / "no" (which the defenses match always)."""
    return tuple(sorted({c for crit in rubric.criteria for c in crit.choices} - set(DEFAULT_CHOICES)))


def _fail(result: RubricScore, error: str) -> None:
    result.error = error
    for crit in result.criteria:
        crit.error = error
    result.failed = len(result.criteria)


def _finish(result: RubricScore, formula) -> None:
    """The reward from the criteria's values; `None` (and counted) when any criterion failed."""
    if result.error is not None:
        return
    result.failed = sum(c.error is not None for c in result.criteria)
    masses = [c.valid_mass for c in result.criteria if c.error is None]
    result.valid_mass = sum(masses) / len(masses) if masses else 0.0
    if result.failed == 0:
        result.value = formula([c.value for c in result.criteria])


def _check(judge, prompts, responses, rubrics, references, mode, results) -> list[RubricScore]:
    """The judge's counterfactual injection check (`Judge(injection_check=True)`) for rubrics: an answer holding
    rating-like or judge-addressed text is judged again without it, and keeps the lower reward."""
    template = {"explicit": RUBRIC, "implicit": RUBRIC_IMPLICIT, "pairwise": RUBRIC_PAIRWISE}[mode]
    cleaned = [judge._counterfactual(template, r, _labels(rubric)) for r, rubric in zip(responses, rubrics)]
    redo, call = judge._suspects(template, cleaned, len(responses))
    if not call:
        return results
    _COUNTERFACTUAL.active = True
    try:
        again = judge_rubrics(
            judge,
            [prompts[i] for i in redo],
            [cleaned[i] for i in redo],
            [rubrics[i] for i in redo],
            mode=mode,
            references=None if references is None else [references[i] for i in redo],
        )
    finally:
        _COUNTERFACTUAL.active = False
    per_criterion = {"explicit": 1, "pairwise": 2, "implicit": 0}[mode]
    judge.injection_stats["extra_prompts"] += sum(per_criterion * len(rubrics[i].criteria) or 2 for i in redo)
    for i, alt in zip(redo, again):
        old = results[i]
        if alt.value is not None and (old.value is None or alt.value < old.value):
            alt.truncated = alt.truncated or old.truncated
            results[i] = alt
            judge.injection_stats["lowered"] += 1
    return results
