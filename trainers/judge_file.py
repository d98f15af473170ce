"""`trustreward score` and `compare`: a file of rows in, the same rows with the judge's fields out.

`score --rubric_column C`: each row judged against the rubric in its column C (`Judge.rubric`, `--rubric_mode`)
instead of a 1..scale score: `rubric_reward` (on [0, 1], `None` when it failed), `rubric_criteria` (per criterion:
`text`, `weight`, `value`, `valid_mass`, `entropy`, `error`), `rubric_failed`, `rubric_valid_mass`,
`rubric_entropy` and `rubric_order_gap` (implicit), `truncated`, `judge_error`. A row whose rubric does not parse
is not judged: its `judge_error` says why, and the other rows are judged and written as usual. Pairwise, a row's
anchor answer is its `--reference_column` text, else `reward.anchored.ANCHOR`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from .judge_args import JudgeArguments


@dataclass
class JudgeFileArguments:
    input: str = field(
        metadata={
            "help": "JSONL, Parquet or a save_to_disk folder: prompt, response (score) or response_a, response_b."
        }
    )
    output: str = field(metadata={"help": "The same rows with the judge's fields; format from the extension."})
    scale: int = field(default=5, metadata={"help": "score: ratings 1..scale."})
    method: str | None = field(
        default=None, metadata={"help": "score: trustjudge|mean|geval|argmax; compare: likelihood|ppl|baseline."}
    )
    mode: str = field(default="direct", metadata={"help": "direct | rationale."})
    rubric_column: str | None = field(
        default=None,
        metadata={"help": "score: judge each row against the rubric in this column (a list of criteria or its JSON "
                  "text): its rubric reward and per-criterion values instead of a 1..scale score."},
    )  # fmt: skip
    rubric_mode: str = field(
        default="explicit",
        metadata={"help": "rubric: explicit (each criterion read, weighted) | implicit (one 1-10 score given all "
                  "criteria) | pairwise (each criterion against --reference_column's answer)."},
    )  # fmt: skip
    reference_column: str | None = field(
        default=None, metadata={"help": "rubric_mode pairwise: the column holding each row's anchor answer."}
    )
    format: str | None = field(default=None, metadata={"help": "Output format: jsonl | parquet | dataset."})


def _columns(command: str) -> tuple[str, ...]:
    return ("prompt", "response") if command == "score" else ("prompt", "response_a", "response_b")


def judge_rows(judge, command: str, rows: list[dict], options: dict, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """The judge's fields for each row of a `score` / `compare` file (rows without usable text get `judge_error`).

    `score` reads the judge as its `score_reading` says (`reward.anchored.reward_scores`); with the anchored
    reading a row's `reference` text, where it has one, is its anchor.

    `shard=(rank, world)`: judge only this rank's contiguous share of the rows and gather the rest from the other
    ranks (rank 0 gets every row's fields, the others an empty list).
    """
    from reward.text import as_text, lone_surrogate

    columns = _columns(command)
    texts = [[as_text(row.get(c)) for c in columns] for row in rows]
    broken = {i for i, t in enumerate(texts) if any(lone_surrogate(x) for x in t)}  # no tokenizer takes these
    ok = [i for i, t in enumerate(texts) if None not in t and i not in broken]
    rank, world = shard
    mine = ok[rank * len(ok) // world : (rank + 1) * len(ok) // world]
    columns_of_mine = [list(c) for c in zip(*[texts[i] for i in mine])] or [[] for _ in columns]
    if command == "score":  # the reward reading the judge was loaded with; a row's `reference` is its anchor
        from reward.anchored import reward_scores

        anchors = [as_text(rows[i].get("reference")) for i in mine]
        results = reward_scores(judge, *columns_of_mine, anchors, **options)
    else:
        results = judge.compare(*columns_of_mine, **options)
    results = _gathered(results, shard)
    if results is None:
        return []
    fields: list[dict] = [{"judge_error": f"missing or empty text in {', '.join(columns)}"} for _ in rows]
    for i in broken:
        fields[i] = {"judge_error": f"a lone surrogate (a broken character, e.g. a cut emoji) in {', '.join(columns)}"}
    for i, result in zip(ok, results):
        out = asdict(result)
        if command == "score":
            out = {
                "score": out.pop("expected"),
                "score_probs": {str(k): v for k, v in out.pop("probs").items()},
                "score_argmax": out.pop("argmax"),
                "score_reading": judge.score_reading,
                "score_anchor": out.pop("anchor"),  # the comparison an anchored score was read from
                **out,
            }
        out["judge_error"] = out.pop("error")
        fields[i] = out
    return fields


def _gathered(results: list, shard: tuple[int, int]) -> list | None:
    """Every shard's results on rank 0, rows in their input order (`None` on the other ranks)."""
    rank, world = shard
    if world == 1:
        return results
    import torch.distributed as dist

    shards = [None] * world if rank == 0 else None
    dist.gather_object(results, shards, dst=0)
    return [r for part in shards for r in part] if rank == 0 else None


def rubric_rows(judge, rows: list[dict], column: str, mode: str, reference_column: str | None = None,
                shard: tuple[int, int] = (0, 1)) -> list[dict]:  # fmt: skip
    """The rubric fields of each row (module docstring); `shard` as in `judge_rows`."""
    from reward.rubrics import parse_rubric
    from reward.text import as_text, lone_surrogate

    fields, jobs = [], []  # jobs: (row, prompt, response, rubric, anchor)
    for i, row in enumerate(rows):
        texts = [as_text(row.get(c)) for c in ("prompt", "response")]
        anchor = as_text(row.get(reference_column)) if mode == "pairwise" and reference_column else None
        error = None
        if None in texts or any(lone_surrogate(t) for t in texts):
            error = "missing, empty or broken text in prompt, response"
        elif anchor is not None and lone_surrogate(anchor):
            error = f"rubric_mode pairwise: broken text in {reference_column!r}"
        else:
            try:
                jobs.append((i, *texts, parse_rubric(row.get(column)), anchor))
            except (ValueError, TypeError) as exc:
                error = f"{column!r} is not a rubric: {exc}"
        fields.append(_rubric_fields(None, error))
    rank, world = shard
    mine = jobs[rank * len(jobs) // world : (rank + 1) * len(jobs) // world]
    references = [j[4] for j in mine] if mode == "pairwise" else None
    results = judge.rubric([j[1] for j in mine], [j[2] for j in mine], [j[3] for j in mine], mode=mode,
                           references=references) if mine or judge.backend.lockstep else []  # fmt: skip
    results = _gathered(results, shard)
    if results is None:
        return []
    for job, result in zip(jobs, results):
        fields[job[0]] = _rubric_fields(result, result.error)
    return fields


def _rubric_fields(result, error: str | None) -> dict:
    """One row's rubric fields: the same keys whether it was judged or not (Parquet wants one schema). A reward
    that is `None` because criteria failed says so in `judge_error` too."""
    out = {"rubric_reward": None, "rubric_criteria": [], "rubric_failed": None, "rubric_valid_mass": None,
           "rubric_entropy": None, "rubric_order_gap": None, "truncated": False, "judge_error": error}  # fmt: skip
    if result is None:
        return out
    keys = ("text", "weight", "value", "valid_mass", "entropy", "error")
    if error is None and result.value is None:
        first = next(c.error for c in result.criteria if c.error is not None)
        error = f"{result.failed} of {len(result.criteria)} criteria failed (first: {first})"
    return out | {"rubric_reward": result.value, "rubric_criteria": [{k: getattr(c, k) for k in keys}
                                                                     for c in result.criteria],
                  "rubric_failed": result.failed, "rubric_valid_mass": result.valid_mass,
                  "rubric_entropy": result.entropy, "rubric_order_gap": result.order_gap,
                  "truncated": result.truncated, "judge_error": error}  # fmt: skip


def _validate_judge_file(command: str, args: JudgeFileArguments) -> None:
    from reward.scoring import PREFERENCE_METHODS, SCORE_METHODS

    from .args import UserError
    from .data.outputs import check_distinct, check_replaceable, output_format

    methods = SCORE_METHODS if command == "score" else PREFERENCE_METHODS
    if args.method is not None and args.method not in methods:
        raise UserError(f"--method for {command} must be one of {', '.join(methods)}, got {args.method!r}")
    if command == "score" and not 2 <= args.scale <= 100:
        raise UserError(f"--scale must be in 2..100, got {args.scale}")
    if args.mode not in ("direct", "rationale"):
        raise UserError(f"--mode must be direct or rationale, got {args.mode!r}")
    _validate_rubric(command, args)
    check_replaceable("output", args.output, output_format(args.output, args.format) == "dataset")
    check_distinct({"input": args.input, "output": args.output})


def _validate_rubric(command: str, args: JudgeFileArguments) -> None:
    from reward.rubric_judging import RUBRIC_MODES

    from .args import UserError

    if args.rubric_mode not in RUBRIC_MODES:
        raise UserError(f"--rubric_mode must be one of {', '.join(RUBRIC_MODES)}, got {args.rubric_mode!r}")
    if args.rubric_column is None:
        if args.reference_column is not None or args.rubric_mode != "explicit":
            raise UserError("--rubric_mode and --reference_column are options of --rubric_column (score)")
        return
    if command != "score":
        raise UserError("--rubric_column is an option of score")
    if args.method is not None or args.scale != 5 or args.mode != "direct":
        raise UserError("--method, --scale and --mode do not apply to a rubric reward (--rubric_mode does)")
    if args.reference_column is not None and args.rubric_mode != "pairwise":
        raise UserError("--reference_column (the anchor answer) goes with --rubric_mode pairwise only")


def judge_file(command: str, args: JudgeFileArguments, judge_args: JudgeArguments) -> int:
    """Runs `score` / `compare` on `args.input` (under torchrun with `judge_backend deepspeed`: every rank judges
    a share of the rows, rank 0 writes)."""
    from .args import UserError
    from .data.outputs import OutputSet, output_format
    from .data.shards import Source, write_rows
    from .files import column_problem

    _validate_judge_file(command, args)
    source = Source(args.input)  # before the judge loads: a missing file is an error in a second
    rows = source.all_rows()
    if not rows:
        raise UserError(f"{args.input}: no rows")
    if output_format(args.output, args.format) != "jsonl":  # what Parquet cannot hold fails now, not after judging
        problem = column_problem(rows)
        if problem:
            raise UserError(f"{args.input}: {problem}")
    if args.rubric_column is not None and not any(args.rubric_column in row for row in rows):
        raise UserError(f"{args.input}: no row has the column {args.rubric_column!r} (--rubric_column)")
    judge = judge_args.load(progress=True)
    options = {"mode": args.mode} | ({"method": args.method} if args.method else {})
    if command == "score":
        options["scale"] = args.scale
    rank, world = _rank_world()
    if args.rubric_column is not None:
        fields = rubric_rows(judge, rows, args.rubric_column, args.rubric_mode, args.reference_column, (rank, world))
    else:
        fields = judge_rows(judge, command, rows, options, (rank, world))
    if rank != 0:  # rank 0 writes
        return 0
    with OutputSet({"output": args.output}) as out:
        write_rows([{**row, **extra} for row, extra in zip(rows, fields)], output_format(args.output, args.format),
                   out, "output")  # fmt: skip
        out.commit()
    failed = sum(x["judge_error"] is not None for x in fields)
    print(
        f"{command}: {len(rows) - failed} of {len(rows)} rows judged, {failed} failed -> {args.output}",
        file=sys.stderr,
    )
    return 0


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size when a process group is up (a sharded judge starts one), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
