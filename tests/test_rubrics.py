"""Rubric rewards: formats, the documented formula, failures never read as "no", exact reads, one shared prefix."""

import json
import math

import pytest

from reward import Judge
from reward.anchored import ANCHOR
from reward.backends.hf import HFBackend
from reward.rubric_judging import judge_rubrics
from reward.rubrics import CATEGORY_WEIGHTS, Criterion, Rubric, parse_rubric, rubric_value
from reward.scoring import merge_bidirectional
from tests.conftest import FakeBackend, answer_in_slot
from tests.test_hf_backend import brute_force

PARIS, SEINE, LYON = "States that Paris is the capital", "Mentions the river Seine", "Claims Lyon is the capital"


def criterion_of(prompt: str) -> str:
    return prompt.split("[Criterion]\n", 1)[1].split("\n", 1)[0]


def test_formats_parse_to_the_same_rubric():
    want = Rubric((Criterion(PARIS, 3.0), Criterion(SEINE, 1.0), Criterion(LYON, -2.0)))
    rar = [
        {"title": "Capital", "description": f"Essential Criteria: {PARIS}", "weight": 3},
        {"title": "River", "description": f"Optional Criteria: {SEINE}", "weight": 1},
        {"title": "Wrong city", "description": f"Pitfall Criteria: {LYON}", "weight": 2},  # positive: takes 2 off
    ]
    rlcf = [
        {"requirement": PARIS, "weight": 3},
        {"requirement": SEINE, "weight": 1},
        {"requirement": LYON, "weight": -2},
    ]
    verifiers = [{"criterion": PARIS, "weight": 3, "choices": ["no", "yes"]}, {"text": SEINE},
                 {"text": LYON, "weight": -2}]  # fmt: skip
    for form in (rar, rlcf, verifiers, json.dumps(rlcf), {"criteria": rlcf}, json.dumps({"rubric": rar}), want):
        assert parse_rubric(form) == want
    plain = parse_rubric([PARIS, f"Important Criteria: {SEINE}"])
    assert plain == Rubric((Criterion(PARIS), Criterion(SEINE)))
    by_category = parse_rubric(
        [{"description": f"{name.capitalize()} Criteria: x{name}"} for name in CATEGORY_WEIGHTS]
    )
    assert [c.weight for c in by_category.criteria] == [1.0, 0.7, 0.3, -0.9]
    assert parse_rubric([{"text": "x", "category": "Pitfall"}, "y"]).criteria[0].weight == -0.9


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([], "at least one criterion"),
        ([{"text": LYON, "weight": -1}], "positive weight"),
        ([{"text": PARIS, "weight": 0}], "weight is 0"),
        ([{"text": PARIS, "weight": "heavy"}], "finite number"),
        ([{"weight": 1}], "no criterion text"),
        ([{"text": PARIS, "choices": ["yes", "yes"]}], "distinct"),
        ("not json", "must be JSON"),
        ({"items2": []}, "under one of"),
        ([3], "string or an object"),
    ],
)
def test_bad_rubrics_say_what_is_wrong(bad, says):
    with pytest.raises(ValueError, match=says):
        parse_rubric(bad)


def test_formula_weights_pitfalls_and_clipping():
    rubric = parse_rubric([{"text": "a", "weight": 3}, {"text": "b", "weight": 1}, {"text": "c", "weight": -2}])
    # (3 * 1 + 1 * 0 - 2 * 0.5) / (3 + 1): a pitfall's sign flipped gives 1.0, dropped weights 0.25, dividing by
    # all |w| 0.333.
    assert rubric_value(rubric, [1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert rubric_value(rubric, [0.5, 1.0, 0.0]) == pytest.approx(2.5 / 4)
    assert rubric_value(rubric, [0.0, 0.0, 1.0]) == 0.0  # clipped, not negative
    assert rubric_value(rubric, [1.0, 1.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="3 criteria"):
        rubric_value(rubric, [1.0, 1.0])


RUBRIC = [{"text": PARIS, "weight": 3}, {"text": SEINE, "weight": 1}, {"text": LYON, "weight": -2}]
# raw P(no), P(yes) per criterion: the values are 0.75, 0.25 and 0.5
READS = {PARIS: {"no": 0.2, "yes": 0.6}, SEINE: {"no": 0.3, "yes": 0.1}, LYON: {"no": 0.2, "yes": 0.2}}


def test_explicit_reads_each_criterion_and_applies_the_formula(fake_judge):
    judge = fake_judge(points=lambda p: READS[criterion_of(p)])
    (got,) = judge.rubric(["Capital of France?"], ["Paris."], [RUBRIC])
    assert [c.value for c in got.criteria] == pytest.approx([0.75, 0.25, 0.5])
    assert [c.valid_mass for c in got.criteria] == pytest.approx([0.8, 0.4, 0.4])
    assert got.criteria[0].probs == pytest.approx({"no": 0.25, "yes": 0.75})
    assert got.criteria[0].entropy == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert got.value == pytest.approx((3 * 0.75 + 0.25 - 2 * 0.5) / 4)
    assert (got.failed, got.error, got.mode) == (0, None, "explicit")
    prompts = judge.backend.prompts
    assert len(prompts) == 3 and all(p.endswith("Verdict: [") for p in prompts)
    assert not any("[Allowed choices" in p for p in prompts)  # the default choices: named once, in the system text


def test_custom_choices_are_ranked_worst_to_best(fake_judge):
    reads = {"poor": 0.1, "fair": 0.1, "good": 0.2, "no": 0.5, "yes": 0.5}
    judge = fake_judge(points=reads)
    rubric = [{"text": PARIS, "choices": ["poor", "fair", "good"]}, {"text": SEINE}]
    (got,) = judge.rubric(["Capital of France?"], ["Paris."], [rubric])
    assert [c.value for c in got.criteria] == pytest.approx([(0.1 * 0.5 + 0.2) / 0.4, 0.5])
    assert (
        "[poor], [fair], [good]" in judge.backend.prompts[-1] or "[poor], [fair], [good]" in judge.backend.prompts[0]
    )


def test_a_failed_criterion_is_reported_never_read_as_no(fake_judge):
    class Failing(FakeBackend):
        def label_logprobs(self, prompts, labels):
            if any(SEINE in p for p in prompts):
                raise RuntimeError("judge down")
            return super().label_logprobs(prompts, labels)

    judge = Judge(Failing(fake_judge().tokenizer, points=lambda p: READS[criterion_of(p)]), progress=False)
    got = judge.rubric(["Capital?", "Capital?"], ["Paris.", "Lyon."], [RUBRIC, RUBRIC[:1]])
    assert got[0].value is None and got[0].failed == 1
    assert got[0].criteria[1].error == "RuntimeError: judge down" and got[0].criteria[1].value is None
    assert got[0].criteria[0].value == pytest.approx(0.75)  # the others are kept, and the next answer is judged
    assert got[1].value == pytest.approx(0.75) and got[1].failed == 0
    no_mass = fake_judge(points={"no": 0.0, "yes": 0.0}).rubric(["Capital?"], ["Paris."], [[PARIS]])[0]
    assert no_mass.value is None and no_mass.criteria[0].error == "the judge put no probability on any choice"


def test_implicit_merges_both_criterion_orders(fake_judge):
    given, reverse = {"8": 0.4, "4": 0.4}, {"6": 0.2, "10": 0.2}  # means 6 and 8, masses 0.8 and 0.4
    judge = fake_judge(points=lambda p: given if "[Rubric]\n1. " in p else reverse)
    (got,) = judge.rubric(["Capital of France?"], ["Paris."], [RUBRIC], mode="implicit")
    # raw probabilities summed, then renormalised (as both orders of a pair are): mean 20/3, not the orders' 7
    assert got.value == pytest.approx((20 / 3 - 1) / 9)
    assert got.order_gap == pytest.approx(2 / 9) and got.valid_mass == pytest.approx(0.6)
    first, second = judge.backend.prompts
    assert "1. (weight 3) " + PARIS in first and first.index(PARIS) < first.index(LYON)
    assert "3. (weight 2, PITFALL) " + LYON in second and second.index(LYON) < second.index(PARIS)


def test_pairwise_compares_with_the_anchor_in_both_orders(fake_judge):
    def rule(prompt):
        better = "A" if "Paris" in answer_in_slot(prompt, "A") else "B"
        bias = 0.2 if better == "A" else 0.0  # a position bias the merge must cancel
        return {better: 0.5 + bias, "AB".replace(better, ""): 0.3 - bias, "C": 0.2}

    judge = fake_judge(rule=rule)
    (got,) = judge.rubric(["Capital?"], ["Paris."], [RUBRIC], mode="pairwise", references=["Lyon."])
    p_a, _, p_tie = merge_bidirectional({"A": 0.7, "B": 0.1, "C": 0.2}, {"A": 0.3, "B": 0.5, "C": 0.2})
    assert [c.value for c in got.criteria] == pytest.approx([p_a + p_tie / 2] * 3)
    assert got.value == pytest.approx(p_a + p_tie / 2)
    assert sum(f"Avoids this mistake: {LYON}" in p for p in judge.backend.prompts) == 2
    # No anchor given (for a row, or at all): the anchored pointwise reading's anchor, in both positions.
    judge.backend.prompts.clear()
    judge.rubric(
        ["Capital?", "Capital?"], ["Paris.", "Lyon."], [RUBRIC] * 2, mode="pairwise", references=["Lyon.", None]
    )
    judge.rubric(["Capital?"], ["Paris."], [RUBRIC], mode="pairwise")
    shown = [answer_in_slot(p, "A") for p in judge.backend.prompts] + [
        answer_in_slot(p, "B") for p in judge.backend.prompts
    ]
    assert shown.count(ANCHOR) == 2 * 2 * len(RUBRIC) and shown.count("Lyon.") == 2 * len(RUBRIC) + 2 * len(RUBRIC)


class Recording(HFBackend):
    seen: list

    def label_logprobs(self, prompts, labels):
        self.__dict__.setdefault("seen", []).extend(prompts)
        return super().label_logprobs(prompts, labels)


def test_explicit_read_equals_one_forward_per_choice(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    backend = Recording(model, tokenizer, prefix_cache=True, min_prefix=8)
    judge = Judge(backend, progress=False)
    rubric = [{"text": "It is four", "choices": ["bad", "good", "excellent"]}, {"text": "Paris is in France"}]
    (got,) = judge.rubric(["What is two plus two?"], ["It is four. The quick brown fox."], [rubric])
    for crit in got.criteria:
        prompt = next(p for p in backend.seen if f"[Criterion]\n{crit.text}\n" in p)
        raw = {c: math.exp(brute_force(model, tokenizer, prompt, c)) for c in crit.probs}
        assert crit.valid_mass == pytest.approx(sum(raw.values()), abs=1e-5)
        assert crit.probs == pytest.approx({c: p / sum(raw.values()) for c, p in raw.items()}, abs=1e-5)


def test_explicit_read_of_a_float64_judge_equals_one_float64_forward_per_choice_to_1e10(tiny_model_dir):
    # In fp32 both ways round differently (1e-5 apart on the embedded judge's ~450-token prompts); in fp64 any gap
    # left is the algorithm's: prefix cache levels, left padding (answers of different lengths), the trie's 4D mask
    # and positions, multi-token choices, our head's sliced read. An fp32 step in the read would show as ~1e-7.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).double()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = Recording(model, tokenizer, prefix_cache=True, min_prefix=8)
    rubric = [{"text": "It is four", "choices": ["bad", "good", "excellent"]}, {"text": "Paris is in France"}]
    answers = ["It is four. The quick brown fox.", "Four, since two and two make four, as everyone learns early."]
    got = Judge(backend, progress=False).rubric(["What is two plus two?"] * 2, answers, [rubric] * 2)
    assert backend._own_head() is not None  # the sliced read of our head, as on a CPU
    for result, answer in zip(got, answers):
        for crit in result.criteria:
            prompt = next(p for p in backend.seen if f"[Criterion]\n{crit.text}\n" in p and answer in p)
            raw = {c: math.exp(brute_force(model, tokenizer, prompt, c)) for c in crit.probs}
            assert crit.valid_mass == pytest.approx(sum(raw.values()), rel=0, abs=1e-10)
            assert crit.probs == pytest.approx({c: p / sum(raw.values()) for c, p in raw.items()}, rel=0, abs=1e-10)


def test_an_answers_criteria_share_one_prefix_run_once(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    criteria = [f"The answer mentions item {n} of the list" for n in range(8)]
    answer = "The quick brown fox jumps over the lazy dog. " * 60  # long: cut once, the same cut for every criterion
    runs = {}
    for cache in (True, False):
        backend = Recording(model, tokenizer, prefix_cache=cache, max_length=512)
        (got,) = Judge(backend, progress=False).rubric(["What is two plus two?"], [answer], [criteria])
        assert got.value is not None and got.truncated
        runs[cache] = backend.forward_tokens
    recorded = backend.seen
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in recorded]
    assert len({p.split("[Criterion]")[0] for p in recorded}) == 1  # one fit: the same prompt up to the criterion
    common = min(next((k for k, (a, b) in enumerate(zip(ids[0], i)) if a != b), len(i)) for i in ids[1:])
    suffix = max(len(i) - common for i in ids)
    assert runs[False] >= 8 * common  # without the cache: the prefix once per criterion
    assert runs[True] <= common + 8 * suffix  # with it: once per answer, each criterion a short suffix
    assert runs[False] > 4 * runs[True]  # 8 criteria: 8 x the prompt against the prompt and 8 short suffixes


def test_judge_rubrics_checks_its_arguments(fake_judge):
    judge = fake_judge(points={"no": 0.5, "yes": 0.5})
    with pytest.raises(ValueError, match="mode must be one of"):
        judge_rubrics(judge, ["q"], ["a"], [[PARIS]], mode="likert")
    with pytest.raises(ValueError, match="one per answer"):
        judge.rubric(["q", "q"], ["a", "b"], [[PARIS]])
    with pytest.raises(ValueError, match=r"rubrics\[0\]: a rubric needs"):
        judge.rubric(["q"], ["a"], [[]])
