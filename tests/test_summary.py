"""The end of a run: the summary names each reward's first and last mean, the judge's consistency once each with
what it means, its failures and one group as a ranking; the step lines are short; the plot draws what was logged."""

import json

import pytest

from trainers.monitor import CheckedGroup
from trainers.summary import StepLines, curve_data, plot_curves, ranking, step_line, summarize

HISTORY = [
    {"step": 1, "rewards/pairwise/mean": 0.40, "judge/pairwise/order_consistency": 0.25, "judge/failures": 0.0,
     "judge/non_transitivity": 0.5, "judge/monitor_order_consistency": 1.0, "loss": 0.1},
    {"step": 2, "rewards/pairwise/mean": 0.70, "judge/pairwise/order_consistency": 0.75, "judge/failures": 2.0,
     "judge/non_transitivity": 0.0, "loss": 0.2},
    {"step": 2, "train_runtime": 10.0, "train_loss": 0.15},
]  # fmt: skip


def test_summary_reports_first_and_last_step_and_the_judge():
    text = summarize(HISTORY, {"model": None, "curves": "out/curves.png"})
    lines = text.splitlines()
    assert lines[0] == "trustreward grpo: 2 steps"
    assert "  reward pairwise: mean 0.4000 (step 1) -> 0.7000 (step 2)" in lines
    order = [x for x in lines if x.startswith("  order consistency")]
    # The monitor's numbers differ from the reward's here (it checked other pairs): both shown, each named.
    assert order[0].startswith("  order consistency (pairwise): mean 0.500 over 2 steps, last 0.750: the share of")
    assert order[1].startswith("  order consistency (monitor): mean 1.000 over 1 steps, last 1.000: ")
    assert any(
        x.startswith("  non-transitivity (NTR_3): mean 0.250 over 2 steps, last 0.000: the share of") for x in lines
    )
    assert lines[-2].startswith("  judge failures: 2 (summed over the steps")
    assert lines[-1] == "  curves: out/curves.png"  # outputs that were not written are not listed
    assert not any(line.startswith("  model") for line in lines)


def test_a_number_the_monitor_only_re_read_is_shown_once():
    """The demo's monitor checks every group on the reward's own judgements: its order consistency is the
    reward's, step by step, and the summary (and each step line) says it once, not twice."""
    history = [{"step": s, "rewards/p/mean": 0.5, "judge/order_consistency": v, "judge/monitor_order_consistency": v}
               for s, v in ((1, 0.25), (2, 0.5))]  # fmt: skip
    lines = summarize(history, {}).splitlines()
    assert [x.split(":")[0] for x in lines if "order consistency" in x] == ["  order consistency"]
    assert step_line(history[1], 2, 3) == "step 2/3: p 0.500 | order consistency 0.50"
    history[1]["judge/monitor_order_consistency"] = 0.75  # then they differ: both, named
    assert (
        step_line(history[1], 2)
        == "step 2: p 0.500 | order consistency (judge) 0.50 | order consistency (monitor) 0.75"
    )


def test_step_lines_are_short_and_metrics_jsonl_holds_every_key(tmp_path):
    from transformers import TrainerControl, TrainerState

    logs = {"loss": 0.1, "rewards/judge_pairwise/mean": 0.5, "rewards/judge_pairwise/std": 0.2113,
            "judge/failures": 0.0, "judge/order_consistency": 1 / 3, "judge/non_transitivity": 0.25,
            "judge/latency_s": 3.2, "judge/valid_mass": 0.9, "completions/mean_length": 16.0}  # fmt: skip
    callback, state = StepLines(tmp_path / "run" / "metrics.jsonl"), TrainerState(global_step=1, max_steps=3)
    callback.on_train_begin(None, state, TrainerControl())
    callback.on_log(None, state, TrainerControl(), logs=logs)
    assert (
        step_line(logs, 1, 3)
        == "step 1/3: judge_pairwise 0.500 (std 0.211) | order consistency 0.33 | NTR_3 0.25 | failures 0"
    )
    assert [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, **logs}
    ]
    callback.on_train_begin(None, state, TrainerControl())  # a new run in the same folder starts a new file
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


def test_curves_png_is_written_and_draws_what_was_logged(tmp_path):
    path = plot_curves(HISTORY, tmp_path / "run" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = curve_data(HISTORY)
    assert data["reward mean"] == {"pairwise": [(1, 0.4), (2, 0.7)]}  # a moving reward: its mean
    assert data["order consistency"] == {"pairwise": [(1, 0.25), (2, 0.75)], "monitor": [(1, 1.0)]}
    assert data["non-transitivity (NTR_3)"] == {"judge": [(1, 0.5), (2, 0.0)]}
    assert plot_curves([{"step": 1, "loss": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_win_rate_is_plotted_by_its_spread_on_integer_steps():
    """The issue's plot: a 0.5 mean on a 1e-8 axis with ticks at steps 1.25, 1.75. Now the spread, on whole steps,
    and a consistency share on a [0, 1] axis of its own."""
    from trainers.summary import _figure

    history = [{"step": s, "rewards/pairwise/mean": 0.5, "rewards/pairwise/std": std, "judge/non_transitivity": ntr}
               for s, std, ntr in ((1, 0.02, 0.5), (2, 0.05, 0.25))]  # fmt: skip
    data = curve_data(history)
    assert list(data) == ["reward spread (std)", "non-transitivity (NTR_3)"]  # no flat 0.5 mean
    fig = _figure(data)
    for ax, curves in zip(fig.axes, data.values()):
        assert [list(zip(*line.get_data())) for line in ax.get_lines()] == list(curves.values())
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(t == int(t) for t in ticks), ticks
    assert fig.axes[1].get_ylim() == (-0.02, 1.02)
    one_step = _figure(curve_data(history[:1]))  # the README's test run: one step, still whole-step ticks
    ticks = [t for t in one_step.axes[0].get_xticks() if 0.5 <= t <= 1.5]
    assert ticks == [1.0], ticks


def test_a_pairwise_reward_is_summarised_by_its_spread():
    """A within-group win rate always averages 0.5: the summary says so and shows the spread that moves."""
    history = [{"step": 1, "rewards/pairwise/mean": 0.5, "rewards/pairwise/std": 0.02},
               {"step": 2, "rewards/pairwise/mean": 0.5, "rewards/pairwise/std": 0.05}]  # fmt: skip
    (line,) = [x for x in summarize(history, {}).splitlines() if x.startswith("  reward pairwise")]
    assert line.startswith("  reward pairwise: mean 0.5000 (step 1) -> 0.5000 (step 2), std 0.0200 -> 0.0500 ")
    assert "0.5 by construction" in line
    moving = [history[0], {**history[1], "rewards/pairwise/mean": 0.6}]  # Bradley-Terry rewards may move
    assert "by construction" not in summarize(moving, {})


def test_one_group_is_shown_as_the_judge_ranked_it():
    group = CheckedGroup(2, "What is 2+2?", ["five", "It is 4.", "4", "fish"],
                         {"judge_pairwise": [0.2, 0.9, 0.6, 0.3]},
                         [(0, 1, 0.1, True), (1, 2, 0.8, True), (0, 3, 0.4, False), (2, 3, 0.3, True)])  # fmt: skip
    lines = ranking(group)
    assert lines[0] == '  one group of step 3, ranked by judge_pairwise (what the judge preferred): "What is 2+2?"'
    assert lines[1:5] == [
        '    #1 0.900  "It is 4."',
        '    #2 0.600  "4"',
        '    #3 0.300  "fish"',
        '    #4 0.200  "five"',
    ]
    # Each consistent pair names its winner first, with the merged probability it won by; the flip is left out.
    assert lines[5] == "    order-consistent pairs: 3 of 4: #1 > #4 (0.90), #1 > #2 (0.80), #3 > #2 (0.70)"
    text = summarize([{"step": 3, "rewards/judge_pairwise/mean": 0.5}], {}, group=group, judge="embedded")
    assert "\n".join(lines) in text and "SmolLM2-135M" in text
    assert "SmolLM2" not in summarize([{"step": 3, "rewards/judge_pairwise/mean": 0.5}], {}, judge="Qwen/x")


@pytest.mark.parametrize("width", [10])
def test_long_completions_are_cut_in_the_ranking(width):
    group = CheckedGroup(0, "q", ["a" * 50], {"r": [None]}, [])
    assert ranking(group, width) == []  # nothing judged: no ranking
    group = CheckedGroup(0, "q", ["a" * 50], {"r": [0.5]}, [])
    assert ranking(group, width)[1] == '    #1 0.500  "aaaaaaa..."'
