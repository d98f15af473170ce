"""The `trustreward` console script: `grpo`, `score`, `compare`, `audit` and `clean`."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

USAGE = """usage: trustreward COMMAND [--config FILE.yaml] [--flag value ...]

commands:
  grpo      train a policy with GRPO, the judge as the reward (recipes/grpo/...)
  score     add the judge's pointwise scores to a file (JSONL, Parquet, save_to_disk) of prompt, response rows
  compare   add bidirectional preferences to a file of prompt, response_a, response_b rows
  audit     consistency of a preference file: conflict ratio and non-transitivity (NTR_k), no changes
  clean     drop cyclic or contradictory preference rows, each with its reason, and report before / after
  merge     combine the reports (and rejects, kept rows) of `audit` / `clean --shard I/N` runs into the whole's
  train-rm  train a reward model on preferences: soft (judge probabilities) or hard Bradley-Terry, LoRA
  serve     the judge over HTTP: OpenRLHF's /get_reward, /score, /compare (PPO with OpenRLHF or verl)

`trustreward COMMAND --help` lists a command's flags; `--debug` shows tracebacks of user errors."""


@dataclass
class JudgeFileArguments:
    input: str = field(
        metadata={
            "help": "JSONL, Parquet or a save_to_disk folder: prompt, response (score) or response_a, response_b."
        }
    )
    output: str = field(metadata={"help": "The same rows with the judge's fields; format from the extension."})
    judge: str = field(default="embedded", metadata={"help": "'embedded', a model directory, a hub id or openai:URL."})
    backend: str = field(
        default="hf", metadata={"help": "hf | deepspeed (sharded; under torchrun each rank judges a shard of rows)."}
    )
    device: str | None = field(default=None, metadata={"help": "Judge device (default: CUDA if available)."})
    max_length: int | None = field(default=None, metadata={"help": "Most tokens in one judge prompt."})
    batch_size: int = field(default=16, metadata={"help": "Judge prompts per backend call."})
    scale: int = field(default=5, metadata={"help": "score: ratings 1..scale."})
    method: str | None = field(
        default=None, metadata={"help": "score: trustjudge|mean|geval|argmax; compare: likelihood|ppl|baseline."}
    )
    mode: str = field(default="direct", metadata={"help": "direct | rationale."})
    format: str | None = field(default=None, metadata={"help": "Output format: jsonl | parquet | dataset."})


@dataclass
class ServedJudgeArguments:
    """How to reach a judge served over HTTP (`--judge openai:http://HOST:PORT/v1`); ignored for local judges."""

    judge_model: str | None = field(
        default=None, metadata={"help": "openai: the served model's name (default: the first at /models)."}
    )
    judge_tokenizer: str | None = field(
        default=None, metadata={"help": "openai: its tokenizer: directory, hub id or 'embedded' (default: the name)."}
    )
    judge_endpoint: str = field(default="completions", metadata={"help": "openai: completions | chat."})
    judge_concurrency: int = field(default=8, metadata={"help": "openai: requests in flight at once."})
    judge_prompts_per_request: int = field(
        default=64, metadata={"help": "openai: most prompts per completions request."}
    )
    judge_requests_per_second: float | None = field(default=None, metadata={"help": "openai: client rate limit."})
    judge_timeout: float = field(default=60.0, metadata={"help": "openai: seconds per request."})
    judge_max_retries: int = field(default=4, metadata={"help": "openai: retries with backoff per request."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "openai: environment variable holding the API key."}
    )

    def load_options(self, spec: str) -> dict:
        """`load_judge` keyword arguments for `spec` (none unless it is a served judge)."""
        if not spec.startswith("openai:"):
            return {}
        options = {k.removeprefix("judge_"): v for k, v in asdict(self).items()}
        model, tokenizer = options.pop("model"), options.pop("tokenizer")
        return {"model": model, "tokenizer": tokenizer, "server_options": options}


def _columns(command: str) -> tuple[str, ...]:
    return ("prompt", "response") if command == "score" else ("prompt", "response_a", "response_b")


def judge_rows(judge, command: str, rows: list[dict], options: dict, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """The judge's fields for each row of a `score` / `compare` file (rows without usable text get `judge_error`).

    `shard=(rank, world)`: judge only this rank's contiguous share of the rows and gather the rest from the other
    ranks (rank 0 gets every row's fields, the others an empty list).
    """
    from .reward_funcs import as_text

    columns = _columns(command)
    texts = [[as_text(row.get(c)) for c in columns] for row in rows]
    ok = [i for i, t in enumerate(texts) if None not in t]
    rank, world = shard
    mine = ok[rank * len(ok) // world : (rank + 1) * len(ok) // world]
    columns_of_mine = [list(c) for c in zip(*[texts[i] for i in mine])] or [[] for _ in columns]
    results = (judge.score if command == "score" else judge.compare)(*columns_of_mine, **options)
    if world > 1:  # rank 0 gathers every shard, rows in their input order
        import torch.distributed as dist

        shards = [None] * world if rank == 0 else None
        dist.gather_object(results, shards, dst=0)
        if rank != 0:
            return []
        results = [r for part in shards for r in part]
    fields: list[dict] = [{"judge_error": f"missing or empty text in {', '.join(columns)}"} for _ in rows]
    for i, result in zip(ok, results):
        out = asdict(result)
        if command == "score":
            out = {
                "score": out.pop("expected"),
                "score_probs": {str(k): v for k, v in out.pop("probs").items()},
                "score_argmax": out.pop("argmax"),
                **out,
            }
        out["judge_error"] = out.pop("error")
        fields[i] = out
    return fields


def _validate_judge_file(command: str, args: JudgeFileArguments) -> None:
    from reward.scoring import PREFERENCE_METHODS, SCORE_METHODS

    from .args import UserError
    from .audit_clean import check_judge_spec
    from .outputs import check_distinct, check_replaceable, output_format

    methods = SCORE_METHODS if command == "score" else PREFERENCE_METHODS
    if args.method is not None and args.method not in methods:
        raise UserError(f"--method for {command} must be one of {', '.join(methods)}, got {args.method!r}")
    if command == "score" and not 2 <= args.scale <= 100:
        raise UserError(f"--scale must be in 2..100, got {args.scale}")
    if args.mode not in ("direct", "rationale"):
        raise UserError(f"--mode must be direct or rationale, got {args.mode!r}")
    if args.backend not in ("hf", "deepspeed"):
        raise UserError(f"--backend must be hf or deepspeed, got {args.backend!r}")
    if args.batch_size < 1 or (args.max_length is not None and args.max_length < 1):
        raise UserError("--batch_size and --max_length must be >= 1")
    check_judge_spec(args.judge)
    check_replaceable("output", args.output, output_format(args.output, args.format) == "dataset")
    check_distinct({"input": args.input, "output": args.output})


def _judge_file(command: str, args: JudgeFileArguments, served: ServedJudgeArguments) -> int:
    from .args import UserError
    from .outputs import OutputSet, output_format
    from .shards import Source, write_rows

    _validate_judge_file(command, args)
    source = Source(args.input)  # before the judge loads: a missing file is an error in a second
    rows = source.all_rows()
    if not rows:
        raise UserError(f"{args.input}: no rows")
    from reward import load_judge

    judge = load_judge(
        args.judge, backend=args.backend, device=args.device, max_length=args.max_length, batch_size=args.batch_size,
        **served.load_options(args.judge),
    )  # fmt: skip
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


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "grpo":
        from .grpo import main as grpo_main

        grpo_main(rest)
        return 0
    if command == "serve":
        from .server import main as serve_main

        return serve_main(rest)
    if command == "train-rm":
        from .train_rm import main as rm_main

        rm_main(rest)
        return 0
    from .args import parse

    if command in ("score", "compare"):
        args, served = parse(f"trustreward {command}", (JudgeFileArguments, ServedJudgeArguments), rest)
        return _judge_file(command, args, served)
    from .audit_clean import AuditArguments, CleanArguments, MergeArguments, merge, run

    if command == "merge":
        (args,) = parse("trustreward merge", (MergeArguments,), rest)
        return merge(args)
    dataclass_type = AuditArguments if command == "audit" else CleanArguments
    args, served = parse(f"trustreward {command}", (dataclass_type, ServedJudgeArguments), rest)
    return run(command, args, served)


COMMANDS = ("grpo", "score", "compare", "audit", "clean", "merge", "train-rm", "serve")


def main(argv: list[str] | None = None) -> int:
    """Runs a command; a user error (bad option, unreadable input, unsafe paths) is one line on stderr and exit 2.

    `--debug` anywhere on the command line shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trustreward: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from .args import UserError

    try:
        return _dispatch(command, rest)
    except (UserError, OSError, UnicodeError) as exc:
        if debug:
            raise
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        print(f"trustreward {command}: error: {message} (--debug for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
