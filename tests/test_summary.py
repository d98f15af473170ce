"""The end of a run: the summary names each reward's first and last mean, the judge's consistency and failures."""

from trainers.summary import plot_curves, summarize

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
    assert "  order consistency (pairwise): mean 0.500 over 2 steps, last 0.750" in lines
    assert "  non-transitivity (NTR_3): mean 0.250 over 2 steps, last 0.000" in lines
    assert "  order consistency (monitor): mean 1.000 over 1 steps, last 1.000" in lines
    assert "  judge failures: 2 (summed over the steps)" in lines
    assert lines[-1] == "  curves: out/curves.png"  # outputs that were not written are not listed
    assert not any(line.startswith("  model") for line in lines)


def test_curves_png_is_written(tmp_path):
    path = plot_curves(HISTORY, tmp_path / "run" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([{"step": 1, "loss": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_pairwise_reward_is_summarised_by_its_spread():
    """A within-group win rate always averages 0.5: the summary says so and shows the spread that moves."""
    history = [{"step": 1, "rewards/pairwise/mean": 0.5, "rewards/pairwise/std": 0.02},
               {"step": 2, "rewards/pairwise/mean": 0.5, "rewards/pairwise/std": 0.05}]  # fmt: skip
    (line,) = [x for x in summarize(history, {}).splitlines() if x.startswith("  reward pairwise")]
    assert line.startswith("  reward pairwise: mean 0.5000 (step 1) -> 0.5000 (step 2), std 0.0200 -> 0.0500 ")
    assert "0.5 by construction" in line
    moving = [history[0], {**history[1], "rewards/pairwise/mean": 0.6}]  # Bradley-Terry rewards may move
    assert "by construction" not in summarize(moving, {})
