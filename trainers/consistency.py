"""`trustreward audit` and `trustreward clean`: consistency metrics and cleaning of preference files."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from reward.consistency import POLICIES, clean_dataset
from reward.consistency.graphs import EXACT_MAX_NODES

from .data import atomic_path, read_rows, row_format, write_jsonl, write_rows
from .monitor import require_wandb


@dataclass
class _FileArguments:
    """What audit and clean share."""

    input: str = field(metadata={"help": "JSONL, Parquet, or a save_to_disk directory of preference rows."})
    report: str = field(metadata={"help": "JSON report to write."})
    k: list[int] = field(default_factory=lambda: [3, 4, 5], metadata={"help": "Subset sizes for NTR_k."})
    delta: float = field(default=0.0, metadata={"help": "Conflict ratio: scores closer than this expect a tie."})
    split: str | None = field(default=None, metadata={"help": "Split of a saved DatasetDict."})
    judge: str | None = field(
        default=None, metadata={"help": "Judge ('embedded', a directory, a hub id, openai:URL) for fresh preferences."}
    )
    relations: str = field(
        default="both", metadata={"help": "With --judge: labels | judge | both (labels; the judge where none)."}
    )
    device: str | None = field(default=None, metadata={"help": "Judge device (default: CUDA if available)."})
    max_length: int | None = field(default=None, metadata={"help": "Most tokens in one judge prompt."})
    batch_size: int = field(default=16, metadata={"help": "Judge prompts per backend call."})


@dataclass
class AuditArguments(_FileArguments):
    plots: str | None = field(default=None, metadata={"help": "Write PNG plots of the report into this directory."})
    wandb_project: str | None = field(default=None, metadata={"help": "Log the report to this W&B project."})


@dataclass
class CleanArguments(_FileArguments):
    output: str = field(default="", metadata={"help": "Kept rows, in the input's format."})
    rejects: str = field(default="", metadata={"help": "JSONL: each rejected row with its reason and evidence."})
    policy: list[str] = field(
        default_factory=lambda: ["equivalence", "drop-cycles"], metadata={"help": f"Any of {', '.join(POLICIES)}."}
    )
    margin: float = field(default=0.0, metadata={"help": "score-conflict: how far scores may go against a verdict."})
    labels_only: bool = field(default=False, metadata={"help": "Use the rows' labels only (no judge)."})
    exact_max_nodes: int = field(
        default=EXACT_MAX_NODES, metadata={"help": "min-feedback: exact up to this many candidates, greedy beyond."}
    )


def run(command: str, args: AuditArguments | CleanArguments, served=None) -> int:
    if command == "clean":
        if not args.output or not args.rejects:
            raise SystemExit("clean: --output and --rejects are required")
        if args.labels_only and args.judge:
            raise SystemExit("clean: --labels_only and --judge exclude each other")
    if command == "audit" and args.wandb_project:
        require_wandb(["wandb"])  # before any work
    judge = None
    if args.judge:
        from reward import load_judge

        judge = load_judge(args.judge, device=args.device, max_length=args.max_length, batch_size=args.batch_size,
                           **(served.load_options(args.judge) if served else {}))  # fmt: skip
    data, split = read_rows(args.input, args.split)
    policies = args.policy if command == "clean" else []
    options = {"margin": args.margin, "exact_max_nodes": args.exact_max_nodes} if command == "clean" else {}
    kept, rejected, report = clean_dataset(
        data, policies, judge=judge, relations=args.relations, delta=args.delta, ks=tuple(args.k), **options
    )
    report = {"input": args.input, "judge": args.judge} | report
    if command == "audit":  # nothing changes: the metrics of the usable rows, with the counts behind them
        before = report.pop("before")
        for key in ("after", "rows_kept", "rows_rejected", "policies", "margin", "min_feedback_exact_max_nodes"):
            report.pop(key, None)
        report = report | {"rows_usable": len(kept), "rows_unusable": len(rejected)} | before
    else:
        write_rows(args.output, kept, row_format(args.input), split)
        write_jsonl(args.rejects, rejected)
    with atomic_path(args.report) as tmp:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if command == "audit" and (args.plots or args.wandb_project):
        import tempfile

        from .report import log_report, plot_report

        with tempfile.TemporaryDirectory() as scratch:
            plots = plot_report(report, args.plots or scratch)
            if args.wandb_project:
                print(f"audit: logged to W&B ({log_report(report, plots, args.wandb_project)})", file=sys.stderr)
    metrics = report if command == "audit" else report["before"]
    ntr = ", ".join(f"NTR_{k}={v if v is None else round(v, 4)}" for k, v in metrics["non_transitivity"].items())
    cr = metrics["conflict_ratio"]
    print(f"{command}: {report['rows_in']} rows, CR={cr if cr is None else round(cr, 4)}, {ntr}", file=sys.stderr)
    if command == "clean":
        counts = f"kept {report['rows_kept']}, rejected {report['rows_rejected']} {report['rejected_by_reason']}"
        print(f"clean: {counts} -> {args.output}, {args.rejects}, {args.report}", file=sys.stderr)
    return 0
