"""What a finished run says: one line per logged step while it trains, a short summary and a PNG at the end.

TRL's own progress callback prints every log dict as a second, longer line; `StepLines` replaces its printing so
each step shows once, with the rewards and judge metrics only (a rubric reward's per-criterion metrics are left to
the loggers).
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

# The judge's consistency metrics worth a line in the summary, by the key suffix the monitor and rewards log.
CONSISTENCY = {
    "order_consistency": "order consistency",
    "conflict_ratio": "conflict ratio",
    "non_transitivity": "non-transitivity (NTR_3)",
}


class StepLines(ProgressCallback):
    """TRL's progress bar, with each logged step printed once as `step N: {rewards and judge metrics}`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: round(v, 4) for k, v in logs.items()
                 if k.startswith(("reward", "judge/")) and "/criterion/" not in k and _finite(v)}  # fmt: skip
        if shown:
            line = f"step {state.global_step}: {shown}"
            (self.training_bar.write(line) if self.training_bar is not None else print(line, flush=True))


def _finite(v) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)


def _series(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Every numeric metric of the training steps (not the final `train_runtime` entry), as (step, value) lists."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        if "train_runtime" in entry:
            continue
        for key, value in entry.items():
            if key != "step" and _finite(value):
                series.setdefault(key, []).append((entry.get("step", 0), float(value)))
    return series


def summarize(log_history: list[dict], outputs: dict[str, str | None]) -> str:
    """A short text summary of a GRPO run from `trainer.state.log_history`.

    Example:
        >>> history = [{"step": 1, "rewards/score/mean": 3.1, "rewards/score/std": 0.4, "judge/failures": 0.0},
        ...            {"step": 2, "rewards/score/mean": 3.4, "rewards/score/std": 0.3, "judge/failures": 1.0}]
        >>> print(summarize(history, {"curves": "runs/x/curves.png"}))
        trustreward grpo: 2 steps
          reward score: mean 3.1000 (step 1) -> 3.4000 (step 2), std 0.4000 -> 0.3000
          judge failures: 1 (summed over the steps)
          curves: runs/x/curves.png
    """
    series = _series(log_history)
    steps = max((s for values in series.values() for s, _ in values), default=0)
    lines = [f"trustreward grpo: {steps} steps"]
    for key in sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean")):
        (s0, v0), (s1, v1) = series[key][0], series[key][-1]
        name = key[len("rewards/") : -len("/mean")]
        line = f"  reward {name}: mean {v0:.4f} (step {s0}) -> {v1:.4f} (step {s1})"
        spread = series.get(key.removesuffix("/mean") + "/std")
        if spread:
            line += f", std {spread[0][1]:.4f} -> {spread[-1][1]:.4f}"
        if all(abs(v - 0.5) < 1e-6 for _, v in series[key]):
            # A within-group win rate averages 0.5 whatever the policy writes: its signal is the spread.
            line += " (a win rate within each group: its mean is 0.5 by construction, the spread ranks completions)"
        lines.append(line)
    for suffix, name in CONSISTENCY.items():
        for key in sorted(k for k in series if k.startswith("judge/") and k.endswith(suffix)):
            values = [v for _, v in series[key]]
            where = key[len("judge/") : -len(suffix)].strip("/_")  # judge/pairwise/..., judge/monitor_...
            lines.append(f"  {name}{f' ({where})' if where else ''}: mean {sum(values) / len(values):.3f} over "
                         f"{len(values)} steps, last {values[-1]:.3f}")  # fmt: skip
    failures = sum(v for k in series if k.startswith("judge/") and k.endswith("/failures") for _, v in series[k])
    lines.append(f"  judge failures: {failures:g} (summed over the steps)")
    lines += [f"  {name}: {path}" for name, path in outputs.items() if path]
    return "\n".join(lines)


def plot_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """A PNG of the reward means and the judge's consistency metrics per step; `None` if nothing was logged."""
    series = _series(log_history)
    rewards = {k[len("rewards/") : -len("/mean")]: v for k, v in series.items()
               if k.startswith("rewards/") and k.endswith("/mean")}  # fmt: skip
    consistency = {k[len("judge/") :]: v for k, v in series.items()
                   if k.startswith("judge/") and k.endswith(tuple(CONSISTENCY))}  # fmt: skip
    if not rewards and not consistency:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, curves, title in ((axes[0], rewards, "reward mean"), (axes[1], consistency, "judge consistency")):
        for name, values in curves.items():
            ax.plot([s for s, _ in values], [v for _, v in values], marker="o", label=name)
        ax.set_xlabel("step")
        ax.set_title(title)
        if curves:
            ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
