"""`trustreward audit`, `clean` and `merge`: consistency metrics and cleaning of preference files, at any scale.

Every option is checked before any data is read or any judge loaded. A file larger than `--shard_mb` (or any
file with `--num_proc` > 1) is partitioned by a hash of the prompt into shards on disk, cleaned one shard at a
time (peak memory: the largest shard); `--shard I/N` cleans one partition only, and `merge` combines the shards'
reports and rejects into those of the whole, equal to a one-shot run.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reward.consistency import POLICIES, RELATIONS, audit_graphs
from reward.consistency.clean import clean_parsed
from reward.consistency.graphs import EXACT_MAX_NODES, MAX_EXACT_LIMIT
from reward.consistency.metrics import merge_audits

from ..args import UserError
from ..judge_args import JudgeArguments
from .outputs import OutputSet, check_distinct, check_not_inputs, check_replaceable, file_digest, output_format
from .rejects import merge_reject_files, rejected_chunks, rejected_indices
from .shards import (
    ShardStore,
    Source,
    cpu_count,
    parse_shard_spec,
    write_kept,
)

MAX_K = 8  # C(n, k) subsets per prompt: beyond 8 the NTR tables outgrow memory on 20-candidate prompts


@dataclass
class _FileArguments:
    """What audit and clean share."""

    input: str = field(metadata={"help": "JSONL, Parquet, or a save_to_disk directory of preference rows."})
    report: str = field(metadata={"help": "JSON report to write (last, naming the other outputs)."})
    k: list[int] = field(default_factory=lambda: [3, 4, 5], metadata={"help": "Subset sizes for NTR_k."})
    delta: float = field(default=0.0, metadata={"help": "Conflict ratio: scores closer than this expect a tie."})
    split: str | None = field(default=None, metadata={"help": "Split of a saved DatasetDict."})
    relations: str = field(
        default="both", metadata={"help": "With --judge: labels | judge | both (labels; the judge where none)."}
    )
    shard: str | None = field(
        default=None, metadata={"help": "I/N: only prompt-hash partition I of N (then `trustreward merge`)."}
    )
    num_proc: int = field(default=1, metadata={"help": "Processes cleaning shards in parallel (label-only runs)."})
    shard_mb: float = field(
        default=16,  # a shard's cleaning holds ~10x its size at peak (32: 4x the input's size on noisy data)
        metadata={"help": "Inputs above this many MB are cleaned in prompt-hash shards of about this size."},
    )


@dataclass
class AuditArguments(_FileArguments):
    plots: str | None = field(default=None, metadata={"help": "Write PNG plots of the report into this directory."})
    wandb_project: str | None = field(default=None, metadata={"help": "Log the report to this W&B project."})


@dataclass
class CleanArguments(_FileArguments):
    output: str = field(default="", metadata={"help": "Kept rows; format from the extension (or --format)."})
    rejects: str = field(default="", metadata={"help": "JSONL: each rejected row with its reason and evidence."})
    policy: list[str] = field(
        default_factory=lambda: ["equivalence", "drop-cycles"], metadata={"help": f"Any of {', '.join(POLICIES)}."}
    )
    margin: float = field(default=0.0, metadata={"help": "score-conflict: how far scores may go against a verdict."})
    labels_only: bool = field(default=False, metadata={"help": "Use the rows' labels only (no judge)."})
    exact_max_nodes: int = field(
        default=EXACT_MAX_NODES, metadata={"help": "min-feedback: exact up to this many candidates, greedy beyond."}
    )
    format: str | None = field(default=None, metadata={"help": "Output format: jsonl | parquet | dataset."})


@dataclass
class MergeArguments:
    reports: list[str] = field(metadata={"help": "The reports of `audit` / `clean --shard I/N`, one per shard."})
    report: str = field(metadata={"help": "The merged report."})
    output: str = field(default="", metadata={"help": "clean: the kept rows of the whole input."})
    rejects: str = field(default="", metadata={"help": "clean: every shard's rejects, in row order."})
    input: str | None = field(default=None, metadata={"help": "Where the input is now (default: as in the reports)."})
    format: str | None = field(default=None, metadata={"help": "Output format: jsonl | parquet | dataset."})


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--{name} must be a finite number >= 0, got {value}")


def validate(command: str, args, judge_args: JudgeArguments) -> None:
    """Every option of audit / clean checked, before anything is read or loaded (the judge's: when parsed)."""
    for k in args.k:
        if not 3 <= k <= MAX_K:
            raise UserError(f"--k values must be in 3..{MAX_K}, got {k}")
    _finite("delta", args.delta)
    if args.relations not in RELATIONS:
        raise UserError(f"--relations must be one of {', '.join(RELATIONS)}, got {args.relations!r}")
    if args.num_proc < 1:
        raise UserError(f"--num_proc must be >= 1, got {args.num_proc}")
    if not args.shard_mb > 0:
        raise UserError(f"--shard_mb must be > 0, got {args.shard_mb}")
    shard = parse_shard_spec(args.shard)
    if judge_args.judge:
        if args.num_proc > 1:
            raise UserError("--num_proc > 1 is for label-only runs (each process would load the judge)")
    paths = {"input": args.input, "report": args.report}
    if command == "clean":
        bad = [p for p in args.policy if p not in POLICIES]
        if bad:
            raise UserError(f"--policy {bad[0]!r}: choose from {', '.join(POLICIES)}")
        _finite("margin", args.margin)
        if not 0 <= args.exact_max_nodes <= MAX_EXACT_LIMIT:
            raise UserError(f"--exact_max_nodes must be in 0..{MAX_EXACT_LIMIT}, got {args.exact_max_nodes}")
        if args.labels_only and judge_args.judge:
            raise UserError("--labels_only and --judge exclude each other")
        if not args.rejects:
            raise UserError("clean: --rejects is required")
        if shard and args.output:
            raise UserError("clean --shard: no --output (`trustreward merge` writes the kept rows of all shards)")
        if not shard and not args.output:
            raise UserError("clean: --output is required")
        if args.output:
            check_replaceable("output", args.output, output_format(args.output, args.format) == "dataset")
        check_replaceable("rejects", args.rejects, folder=False)
        if Path(args.rejects).suffix.lower() == ".parquet":
            raise UserError(f"--rejects {args.rejects}: rejects are JSONL")
        paths |= {"output": args.output, "rejects": args.rejects}
    else:
        paths |= {"plots": args.plots}
        if args.wandb_project and importlib.util.find_spec("wandb") is None:
            raise UserError("--wandb_project needs wandb: pip install 'trustreward[wandb]'")
    check_replaceable("report", args.report, folder=False)
    check_distinct(paths)


def _options(command: str, args, judge: str | None) -> dict:
    """What must agree between the shards of one run."""
    options = {"k": list(args.k), "delta": args.delta, "split": args.split, "judge": judge}
    options["relations"] = args.relations if judge else "labels"
    if command == "clean":
        options |= {"policies": [p for p in POLICIES if p in args.policy], "margin": args.margin}
        options |= {"exact_max_nodes": args.exact_max_nodes}
    return options


def _shard_count(source: Source, args, shard) -> int:
    if shard:
        return shard[1]
    size = source.stat()[0]
    n = max(1, math.ceil(size / (args.shard_mb * 2**20)))
    return max(n, args.num_proc) if args.num_proc > 1 else n


def _clean_shard(task):
    """One shard: its rows cleaned (in a worker process for --num_proc); rejects written to `rejects_path`."""
    store, s, policies, judge, options, rejects_path = task
    rows = store.rows(s)
    need_label = judge is None or options["relations"] == "labels"
    parsed = rows.columns(need_label)
    parsed = rows.parsed(need_label) if parsed is None else parsed
    reasons, report = clean_parsed(parsed, len(rows), policies, judge, **options)
    chunks = rejected_chunks(reasons, rows)  # each row spliced in from the input or read there
    if rejects_path is None:
        return report, rows.ids[reasons.rows], None, [text for text, _ in chunks]
    sizes = [np.zeros(0, np.int64)]  # each line's bytes: the merge then copies runs of lines as byte ranges
    with open(rejects_path, "wb") as f:
        for text, lengths in chunks:
            f.write(text)
            sizes.append(lengths)
    return report, rows.ids[reasons.rows], np.concatenate(sizes), None


_EQUAL = ("policies", "relations", "margin", "min_feedback_exact_max_nodes")
_AUDIT_KEYS = tuple(audit_graphs([], (3,)))


def merge_bodies(parts: list[dict]) -> dict:
    """Reports of disjoint shards -> the report of their union: counts added, metrics recomputed from counts."""
    out = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if key in _AUDIT_KEYS:
            continue
        if key in ("before", "after"):
            out[key] = merge_audits(values)
        elif key in _EQUAL:
            if any(v != first for v in values):
                raise UserError(f"shards disagree on {key}: {values}")
            out[key] = first
        elif isinstance(first, int):
            out[key] = sum(values)
        elif isinstance(first, dict):
            keys = sorted({k for v in values for k in v})
            out[key] = {k: sum(v.get(k, 0) for v in values) for k in keys}
        else:
            out[key] = first
    if _AUDIT_KEYS[0] in parts[0]:
        out |= merge_audits([{k: p[k] for k in _AUDIT_KEYS} for p in parts])
    return out


def _audit_layout(body: dict) -> dict:
    """audit reports the input as it is: the metrics of the usable rows, with the counts behind them."""
    drop = ("before", "after", "rows_kept", "rows_rejected", "policies", "margin", "min_feedback_exact_max_nodes")
    rest = {k: v for k, v in body.items() if k not in drop}
    return rest | {"rows_usable": body["rows_kept"], "rows_unusable": body["rows_rejected"]} | body["before"]


def _check_column_types(source: Source) -> None:
    """A JSONL column whose values differ in type is an error: one value of each (column, type) is checked by
    `files.column_problem`, in one pass that holds only those values."""
    from ..files import column_problem

    seen: dict[tuple[str, str], tuple[int, dict]] = {}
    for block in source.blocks():
        for i, row in enumerate(block.dicts()):
            for k, v in row.items():
                seen.setdefault((k, type(v).__name__), (block.first_row + i, {k: v}))
    problem = column_problem([row for _, row in seen.values()], [n for n, _ in seen.values()])
    if problem:
        raise UserError(f"{source.path}: {problem}")


def run(command: str, args, judge_args: JudgeArguments | None = None) -> int:
    """Runs `audit` / `clean` on `args.input`; the judge (`judge_args.judge`) only labels fresh preferences."""
    judge_args = judge_args or JudgeArguments()
    validate(command, args, judge_args)
    source = Source(args.input, args.split)
    shard = parse_shard_spec(args.shard)
    typed_output = command == "clean" and output_format(args.output, args.format) != "jsonl"
    if typed_output and judge_args.judge and source.format == "jsonl":
        _check_column_types(source)  # what Parquet cannot hold fails before the judge loads, not after it judged
    judge = judge_args.load(default=None, progress=True)
    policies = [p for p in POLICIES if p in args.policy] if command == "clean" else []
    options = {"relations": args.relations, "delta": args.delta, "ks": tuple(args.k)}
    if command == "clean":
        options |= {"margin": args.margin, "exact_max_nodes": args.exact_max_nodes}
    paths = {"report": args.report} | (
        {"output": args.output, "rejects": args.rejects} if command == "clean" else {"plots": args.plots}
    )
    with OutputSet(paths) as out:
        n = _shard_count(source, args, shard)
        scratch = out.scratch() if n > 1 and not shard else None
        stat = source.stat()
        store = ShardStore(source, n, scratch, only=shard[0] if shard else None)
        for block in source.blocks():
            store.add(block)
        store.close()
        if source.stat() != stat:
            raise UserError(f"{source.path}: changed while it was being read; nothing written, run again")
        todo = [shard[0]] if shard else list(range(n))
        rejects_files = [scratch / f"rejects-{s}.jsonl" for s in todo] if scratch else [None] * len(todo)
        tasks = [(store, s, policies, judge, options, rf) for s, rf in zip(todo, rejects_files)]
        if args.num_proc > 1 and len(tasks) > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(args.num_proc, len(tasks), cpu_count())) as pool:
                results = pool.map(_clean_shard, tasks, chunksize=1)
        else:
            results = [_clean_shard(t) for t in tasks]
        body = merge_bodies([r[0] for r in results])
        header = {"command": command, "input": str(args.input), "input_fingerprint": source.fingerprint()}
        header |= {"input_rows": store.rows_in, "judge": judge_args.judge}
        header["options"] = _options(command, args, judge_args.judge)
        header |= {"shard": args.shard}
        rows = {}
        if command == "clean":
            if scratch is None:  # one shard, cleaned in this process: its rejects straight into the output
                out.open("rejects").writelines(results[0][3])
                rows["rejects"] = len(results[0][1])
            else:
                indices = [r[1] for r in results]  # each shard's rejected rows, in its file's order
                sizes = [r[2] for r in results]
                rows["rejects"] = merge_reject_files(rejects_files, out.open("rejects"), indices, sizes)
            if not shard:
                mask = _mask(store.rows_in, [r[1] for r in results])
                rows["output"] = write_kept(source, mask, output_format(args.output, args.format), out, "output")
            report = header | body
        else:
            report = header | _audit_layout(body)
        if command == "audit" and (args.plots or args.wandb_project):
            _plots(report, args, out)
        out.commit(report, rows)
    _summary(command, report, args)
    return 0


def _mask(rows_in: int, index_lists):
    mask = np.zeros(rows_in, dtype=bool)
    for idx in index_lists:
        mask[np.asarray(idx, dtype=np.int64)] = True
    return mask


def _plots(report: dict, args, out) -> None:
    import tempfile

    from .report import log_report, plot_report

    folder = out.folder("plots") if args.plots else Path(tempfile.mkdtemp())
    plots = plot_report(report, folder)
    if args.wandb_project:
        print(f"audit: logged to W&B ({log_report(report, plots, args.wandb_project)})", file=sys.stderr)


def _summary(command: str, report: dict, args) -> None:
    metrics = report if command == "audit" else report["before"]
    ntr = ", ".join(f"NTR_{k}={v if v is None else round(v, 4)}" for k, v in metrics["non_transitivity"].items())
    cr = metrics["conflict_ratio"]
    where = f" (shard {args.shard})" if getattr(args, "shard", None) else ""
    print(
        f"{command}{where}: {report['rows_in']} rows, CR={cr if cr is None else round(cr, 4)}, {ntr}", file=sys.stderr
    )
    if command == "clean":
        counts = f"kept {report['rows_kept']}, rejected {report['rows_rejected']} {report['rejected_by_reason']}"
        outputs = ", ".join(p for p in (args.output, args.rejects, args.report) if p)
        print(f"clean: {counts} -> {outputs}", file=sys.stderr)


def _check_reject_files(names: list[str], parts: list[dict]) -> None:
    """Each shard's reject file is its own and holds what its report recorded (bytes, rows, hash), or no merge."""
    seen = {}
    for name, part in zip(names, parts):
        recorded = (part.get("outputs") or {}).get("rejects")
        if not isinstance(recorded, dict) or "path" not in recorded:
            raise UserError(f"{name}: records no rejects file: not the report of a `clean --shard` run")
        path = Path(recorded["path"])
        real = path.resolve()
        if real in seen:
            raise UserError(f"{seen[real]} and {name} both wrote their rejects to {path}: the later run replaced "
                            "the earlier one's; run the shards again, each with its own --rejects")  # fmt: skip
        seen[real] = name
        if not path.is_file():
            raise UserError(f"{path} (the rejects of {name}): no such file")
        rows = recorded.get("rows")
        problem = None
        if path.stat().st_size != recorded.get("bytes"):
            problem = f"{path.stat().st_size} bytes, its report recorded {recorded.get('bytes')}"
        elif recorded.get("blake2b") and file_digest(path) != recorded["blake2b"]:
            problem = "its content differs from what its report recorded (blake2b)"
        elif rows is None or rows != part.get("rows_rejected"):
            problem = f"its report records {rows} reject rows but {part.get('rows_rejected')} rows rejected"
        if problem:
            raise UserError(f"{path} (the rejects of {name}) changed after its run: {problem}; run that shard again")


def merge(args: MergeArguments) -> int:
    """`trustreward merge`: the shards' reports (and rejects, kept rows) -> those of the whole input."""
    import json

    parts = []
    for path in args.reports:
        try:
            parts.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"{path}: not a readable report ({type(exc).__name__}: {exc})") from None
        if not isinstance(parts[-1], dict):
            raise UserError(f"{path}: not a readable report (not a JSON object)")
    first = parts[0]
    specs = [p.get("shard") for p in parts]
    if any(s is None for s in specs):
        raise UserError(f"{args.reports[specs.index(None)]}: not a shard's report (no --shard)")
    shards = [parse_shard_spec(s) for s in specs]
    n = shards[0][1]
    for key in ("command", "input_fingerprint", "input_rows", "options", "judge"):
        for path, p in zip(args.reports, parts):
            if p.get(key) != first.get(key):
                raise UserError(f"{path} and {args.reports[0]} differ in {key}: shards of different runs")
    if any(m != n for _, m in shards) or sorted(i for i, _ in shards) != list(range(n)):
        raise UserError(f"need each shard 0..{n - 1} of {n} exactly once, got {', '.join(specs)}")
    command = first["command"]
    if command == "clean" and not (args.output and args.rejects):
        raise UserError("merge of clean shards: --output and --rejects are required")
    if command == "audit" and (args.output or args.rejects):
        raise UserError("merge of audit shards: only --report")
    input_path = args.input or first["input"]
    paths = {"report": args.report, "output": args.output, "rejects": args.rejects}
    check_distinct(paths | {"input": input_path})
    reads = {f"the report {p}": p for p in args.reports}
    if command == "clean":
        reads |= {f"the rejects of {r}": p["outputs"]["rejects"]["path"] for r, p in zip(args.reports, parts)}
    check_not_inputs(paths, reads)
    if command == "clean":
        _check_reject_files(args.reports, parts)
    if args.output:
        check_replaceable("output", args.output, output_format(args.output, args.format) == "dataset")
    for name in ("report", "rejects"):
        check_replaceable(name, paths[name], folder=False)
    header = {k: first[k] for k in ("command", "input", "input_fingerprint", "input_rows", "judge", "options")}
    header["shard"] = None
    skip = set(header) | {"outputs"}
    report = header | merge_bodies([{k: v for k, v in p.items() if k not in skip} for p in parts])
    if report.get("rows_in") != first["input_rows"]:
        raise UserError(f"the shards hold {report.get('rows_in')} rows, the input {first['input_rows']}")
    rows = {}
    with OutputSet({k: v for k, v in paths.items() if v}) as out:
        if command == "clean":
            rejects = [p["outputs"]["rejects"]["path"] for p in parts]
            source = Source(input_path, first["options"]["split"])
            mask = rejected_indices(rejects, first["input_rows"])
            if int(mask.sum()) != report["rows_rejected"]:  # two shards rejected the same row: not disjoint parts
                raise UserError(f"the shards' reject files name {int(mask.sum())} distinct rows, their reports "
                                f"{report['rows_rejected']}: not the rejects of disjoint shards")  # fmt: skip
            rows["rejects"] = merge_reject_files(rejects, out.open("rejects"))
            source.digest = first["input_fingerprint"]["blake2b"]
            rows["output"] = write_kept(source, mask, output_format(args.output, args.format), out, "output")
        out.commit(report, rows)
    print(f"merge: {len(parts)} shards, {report['rows_in']} rows -> {', '.join(v for v in paths.values() if v)}",
          file=sys.stderr)  # fmt: skip
    return 0
