"""What a run says: one compact line per step while it trains; at the end a summary whose numbers each say what
they mean, a plot of the reward spread and the judge's consistency, and one group shown as a ranking.

TRL's own progress callback prints every log dict; `StepLines` replaces its printing with one short line per step
and writes every logged key to `metrics.jsonl` (and TRL's loggers get them all, as before).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

# The judge's consistency metrics, by the key suffix the rewards and the monitor log: label, what it means.
CONSISTENCY = {
    "order_consistency": ("order consistency", "pairs whose verdict survives swapping the answers (1: no bias)"),
    "conflict_ratio": ("conflict ratio", "pairs whose verdict contradicts the judge's own pointwise scores"),
    "non_transitivity": ("non-transitivity (NTR_3)", "groups' triples the judge ranks in a circle"),
}
SHORT = {"order_consistency": "order consistency", "conflict_ratio": "conflict ratio", "non_transitivity": "NTR_3"}
EMBEDDED_NOTE = (
    'The embedded judge is SmolLM2-135M: in one presentation order it answers "A" 99% of the time, so its order '
    "consistency is low and its merged preferences carry weak signal; the rewards rank completions only faintly. "
    "A stronger judge (`--judge Qwen/Qwen2.5-7B-Instruct`, or one served with `--judge openai:URL`) keeps its verdict "
    "when the answers swap, and its spread then follows answer quality."
)


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
                series.setdefault(key, []).append((int(entry.get("step", 0)), float(value)))
    return series


def _rewards(series) -> dict[str, str]:
    """Reward name -> its `rewards/<name>/mean` key."""
    keys = [k for k in sorted(series) if k.startswith("rewards/") and k.endswith("/mean")]
    return {k[len("rewards/") : -len("/mean")]: k for k in keys}


def _win_rate(values) -> bool:
    # A within-group win rate averages 0.5 whatever the policy writes: its signal is the spread.
    return all(abs(v - 0.5) < 1e-6 for _, v in values)


def consistency_series(series) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Metric suffix -> {source: series}; a source whose values equal an earlier one's at every step (the monitor
    re-reading the reward's own judgements) is left out, so each number is shown once."""
    out = {}
    for suffix in CONSISTENCY:
        kept: dict[str, list[tuple[int, float]]] = {}
        keys = sorted(
            (k for k in series if k.startswith("judge/") and k.endswith(suffix)), key=lambda k: "monitor" in k
        )
        for key in keys:
            values = series[key]
            if any(len(v) == len(values) and all(a == c and abs(b - d) < 1e-6 for (a, b), (c, d) in zip(v, values))
                   for v in kept.values()):  # fmt: skip
                continue
            kept[key[len("judge/") : -len(suffix)].strip("/_") or "judge"] = values
        if kept:
            out[suffix] = kept
    return out


def step_line(logs: dict, step: int, max_steps: int | None = None) -> str | None:
    """The one line a step prints: each reward's mean and spread, the judge's consistency, its failures."""
    series = _series([{**logs, "step": step}])
    parts = []
    for name, key in _rewards(series).items():
        std = series.get(key.removesuffix("/mean") + "/std")
        parts.append(f"{name} {series[key][0][1]:.3f}" + (f" (std {std[0][1]:.3f})" if std else ""))
    for suffix, sources in consistency_series(series).items():
        parts += [
            f"{SHORT[suffix]}{f' ({src})' if len(sources) > 1 else ''} {v[0][1]:.2f}" for src, v in sources.items()
        ]
    failures = [v[0][1] for k, v in series.items() if k.startswith("judge/") and k.endswith("/failures")]
    if failures:
        parts.append(f"failures {sum(failures):g}")
    if not parts:
        return None
    return f"step {step}{f'/{max_steps}' if max_steps else ''}: " + " | ".join(parts)


class StepLines(ProgressCallback):
    """TRL's progress bar, each logged step printed once as a short line (`step_line`); every logged key goes to
    `metrics` (a JSONL file, one line per log, written as the run goes) when given."""

    def __init__(self, metrics: str | Path | None = None):
        super().__init__()
        self.metrics = Path(metrics) if metrics else None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.metrics is not None and state.is_world_process_zero:
            self.metrics.parent.mkdir(parents=True, exist_ok=True)
            self.metrics.write_text("")  # this run's metrics only

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.metrics is not None:
            with self.metrics.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
        line = step_line(logs, state.global_step, state.max_steps)
        if line:
            (self.training_bar.write(line) if self.training_bar is not None else print(line, flush=True))


def summarize(log_history: list[dict], outputs: dict[str, str | None], group=None, judge: str | None = None) -> str:
    """A short text summary of a GRPO run from `trainer.state.log_history`: each number once, with its meaning.

    `group` (a `trainers.monitor.CheckedGroup`) is shown as a ranking; `judge="embedded"` adds a line on what the
    embedded judge can and cannot tell.

    Example:
        >>> history = [{"step": 1, "rewards/score/mean": 3.1, "rewards/score/std": 0.4, "judge/failures": 0.0},
        ...            {"step": 2, "rewards/score/mean": 3.4, "rewards/score/std": 0.3, "judge/failures": 1.0}]
        >>> print(summarize(history, {"curves": "runs/x/curves.png"}))
        trustreward grpo: 2 steps
          reward score: mean 3.1000 (step 1) -> 3.4000 (step 2), std 0.4000 -> 0.3000
          judge failures: 1 (summed over the steps; a failed judgement is no reward, never a 0)
          curves: runs/x/curves.png
    """
    series = _series(log_history)
    steps = max((s for values in series.values() for s, _ in values), default=0)
    lines = [f"trustreward grpo: {steps} steps"]
    for name, key in _rewards(series).items():
        (s0, v0), (s1, v1) = series[key][0], series[key][-1]
        line = f"  reward {name}: mean {v0:.4f} (step {s0}) -> {v1:.4f} (step {s1})"
        spread = series.get(key.removesuffix("/mean") + "/std")
        if spread:
            line += f", std {spread[0][1]:.4f} -> {spread[-1][1]:.4f}"
        if _win_rate(series[key]):
            line += " (a win rate within each group: its mean is 0.5 by construction, the spread ranks completions)"
        lines.append(line)
    for suffix, sources in consistency_series(series).items():
        label, meaning = CONSISTENCY[suffix]
        for src, values in sources.items():
            mean = sum(v for _, v in values) / len(values)
            where = f" ({src})" if len(sources) > 1 else ""
            lines.append(f"  {label}{where}: mean {mean:.3f} over {len(values)} steps, last {values[-1][1]:.3f}: "
                         f"the share of {meaning}")  # fmt: skip
    failures = sum(v for k in series if k.startswith("judge/") and k.endswith("/failures") for _, v in series[k])
    lines.append(f"  judge failures: {failures:g} (summed over the steps; a failed judgement is no reward, never a 0)")
    if group is not None:
        lines += ranking(group)
    if judge == "embedded":
        lines.append(f"  {EMBEDDED_NOTE}")
    lines += [f"  {name}: {path}" for name, path in outputs.items() if path]
    return "\n".join(lines)


def ranking(group, width: int = 70) -> list[str]:
    """A checked group as the judge ranked it: completions by reward, then the order-consistent pairs."""
    name = next((n for n, r in group.rewards.items() if any(v is not None for v in r)), None)
    if name is None:
        return []
    rewards = group.rewards[name]
    order = sorted(range(len(group.answers)), key=lambda i: -(rewards[i] if rewards[i] is not None else -math.inf))
    rank = {i: k + 1 for k, i in enumerate(order)}

    def cut(text):
        text = " ".join(str(text).split())
        return json.dumps(text if len(text) <= width else text[: width - 3] + "...", ensure_ascii=False)

    # The monitor records the trainer's global_step while the step runs: the logged step is one more.
    head = f"  one group of step {group.step + 1}, ranked by {name} (what the judge preferred): {cut(group.question)}"
    lines = [head]
    for i in order:
        value = "  none" if rewards[i] is None else f"{rewards[i]:.3f}"
        lines.append(f"    #{rank[i]} {value}  {cut(group.answers[i])}")
    kept = [(i, j, w) if w >= 0.5 else (j, i, 1 - w) for i, j, w, ok in group.pairs if ok]
    shown = ", ".join(f"#{rank[i]} > #{rank[j]} ({w:.2f})" for i, j, w in sorted(kept, key=lambda p: rank[p[0]]))
    lines.append(f"    order-consistent pairs: {len(kept)} of {len(group.pairs)}{': ' + shown if kept else ''}")
    return lines


def curve_data(log_history: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What `plot_curves` draws, panel title -> {curve: [(step, value)]}: each reward's spread (and its mean when
    it moves: a win rate's is 0.5 by construction), then each consistency metric on its own axis."""
    series = _series(log_history)
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, key in _rewards(series).items():
        if (std := key.removesuffix("/mean") + "/std") in series:
            panels.setdefault("reward spread (std)", {})[name] = series[std]
        if not _win_rate(series[key]):
            panels.setdefault("reward mean", {})[name] = series[key]
    for suffix, sources in consistency_series(series).items():
        panels[CONSISTENCY[suffix][0]] = sources
    return panels


def plot_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """A PNG of `curve_data`, one panel each, integer steps; `None` if nothing was logged."""
    panels = curve_data(log_history)
    if not panels:
        return None
    import matplotlib.pyplot as plt

    fig = _figure(panels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _figure(panels):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    steps = sorted({s for curves in panels.values() for values in curves.values() for s, _ in values})
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for name, values in curves.items():
            ax.plot([s for s, _ in values], [v for _, v in values], marker="o", label=name)
        if title in (label for label, _ in CONSISTENCY.values()):
            ax.set_ylim(-0.02, 1.02)  # shares in [0, 1]: noise does not fill the axis
        elif title.startswith("reward spread"):
            ax.set_ylim(bottom=0)  # a spread from 0: a small one looks small
        # Whole steps only: a 1-step axis would otherwise be ticked 0.96, 0.98, ...
        ax.set_xlim(steps[0] - 0.5, steps[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        if len(curves) > 1 or title.startswith("reward"):  # one unnamed source needs no legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
