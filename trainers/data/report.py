"""Renders an audit report: PNG plots of its distributions and metrics, and the whole of it to a W&B run."""

from __future__ import annotations

import json
from pathlib import Path

SIGNS = ["+", "0", "-"]


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Writes the plots a report has data for; returns their paths.

    `scores.png` (pointwise score distribution), `entropy.png` (entropy of the pairwise probabilities),
    `categories.png` (CR and NTR_k per category), `agreement.png` (relation the scores expect vs the pairwise one).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for key, name, label in (("score_histogram", "scores.png", "pointwise score"),
                             ("entropy_histogram", "entropy.png", "entropy of p_a, p_b, p_tie (nats)")):  # fmt: skip
        hist = report.get(key)
        if hist:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            edges = hist["edges"]
            ax.bar(edges[:-1], hist["counts"], width=[b - a for a, b in zip(edges, edges[1:])], align="edge")
            ax.set_xlabel(label)
            ax.set_ylabel("count")
            save(fig, name)

    cats = sorted(
        set(report.get("conflict_ratio_by_category", {})) | set(report.get("non_transitivity_by_category", {}))
    )
    if cats:
        series = {"CR": [report["conflict_ratio_by_category"].get(c, {}).get("ratio") for c in cats]}
        for k in report.get("non_transitivity", {}):
            series[f"NTR_{k}"] = [report["non_transitivity_by_category"].get(c, {}).get(k) for c in cats]
        fig, ax = plt.subplots(figsize=(max(6, len(cats) * 0.9), 3.5))
        width = 0.8 / len(series)
        for n, (name, values) in enumerate(series.items()):
            ax.bar([i + n * width for i in range(len(cats))], [v or 0 for v in values], width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title("per category (no bar: no data)")
        ax.legend()
        save(fig, "categories.png")

    agreement = report.get("agreement")
    if agreement and any(any(row) for row in agreement):
        fig, ax = plt.subplots(figsize=(4, 3.5))
        ax.imshow(agreement, cmap="Blues")
        top = max(max(row) for row in agreement)
        for i, row in enumerate(agreement):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
        ax.set_xticks(range(3), SIGNS)
        ax.set_yticks(range(3), SIGNS)
        ax.set_xlabel("pairwise relation")
        ax.set_ylabel("relation the scores expect")
        save(fig, "agreement.png")
    return written


def log_report(report: dict, plots: list[Path], project: str) -> str:
    """Logs a report to a new W&B run (job type `audit`): headline numbers as summary, plots as images, the full
    report as a file. Honours `WANDB_MODE` (offline works). Returns the run's directory."""
    import wandb

    run = wandb.init(project=project, job_type="audit", config={"input": report.get("input")})
    try:
        summary = {"conflict_ratio": report.get("conflict_ratio")}
        summary |= {f"non_transitivity/{k}": v for k, v in report.get("non_transitivity", {}).items()}
        summary |= {k: report[k] for k in ("rows_in", "rows_usable", "prompts", "pairs") if k in report}
        run.log({k: v for k, v in summary.items() if v is not None} | {p.stem: wandb.Image(str(p)) for p in plots})
        path = Path(run.dir) / "audit_report.json"
        path.write_text(json.dumps(report, indent=2))
        run.save(str(path), base_path=run.dir)
        return run.dir
    finally:
        run.finish()
