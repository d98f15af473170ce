"""`trustreward score` and `compare`: a file of rows in, the same rows with the judge's fields out."""

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
    if world > 1:  # rank 0 gathers every shard, rows in their input order
        import torch.distributed as dist

        shards = [None] * world if rank == 0 else None
        dist.gather_object(results, shards, dst=0)
        if rank != 0:
            return []
        results = [r for part in shards for r in part]
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


def _validate_judge_file(command: str, args: JudgeFileArguments) -> None:
    from reward.scoring import PREFERENCE_METHODS, SCORE_METHODS

    from .args import UserError
    from .outputs import check_distinct, check_replaceable, output_format

    methods = SCORE_METHODS if command == "score" else PREFERENCE_METHODS
    if args.method is not None and args.method not in methods:
        raise UserError(f"--method for {command} must be one of {', '.join(methods)}, got {args.method!r}")
    if command == "score" and not 2 <= args.scale <= 100:
        raise UserError(f"--scale must be in 2..100, got {args.scale}")
    if args.mode not in ("direct", "rationale"):
        raise UserError(f"--mode must be direct or rationale, got {args.mode!r}")
    check_replaceable("output", args.output, output_format(args.output, args.format) == "dataset")
    check_distinct({"input": args.input, "output": args.output})


def judge_file(command: str, args: JudgeFileArguments, judge_args: JudgeArguments) -> int:
    """Runs `score` / `compare` on `args.input` (under torchrun with `judge_backend deepspeed`: every rank judges
    a share of the rows, rank 0 writes)."""
    from .args import UserError
    from .files import column_problem
    from .outputs import OutputSet, output_format
    from .shards import Source, write_rows

    _validate_judge_file(command, args)
    source = Source(args.input)  # before the judge loads: a missing file is an error in a second
    rows = source.all_rows()
    if not rows:
        raise UserError(f"{args.input}: no rows")
    if output_format(args.output, args.format) != "jsonl":  # what Parquet cannot hold fails now, not after judging
        problem = column_problem(rows)
        if problem:
            raise UserError(f"{args.input}: {problem}")
    judge = judge_args.load(progress=True)
    options = {"mode": args.mode} | ({"method": args.method} if args.method else {})
    if command == "score":
        options["scale"] = args.scale
    rank, world = _rank_world()
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
