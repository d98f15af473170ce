"""The `trustreward` console script: parses the command name and hands the rest to that command's module."""

from __future__ import annotations

import sys

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
    from .judge_args import JudgeArguments

    if command in ("score", "compare"):
        from .judge_file import JudgeFileArguments, judge_file

        args, judge_args = parse(f"trustreward {command}", (JudgeFileArguments, JudgeArguments), rest)
        return judge_file(command, args, judge_args)
    from .data.audit_clean import AuditArguments, CleanArguments, MergeArguments, merge, run

    if command == "merge":
        (args,) = parse("trustreward merge", (MergeArguments,), rest)
        return merge(args)
    dataclass_type = AuditArguments if command == "audit" else CleanArguments
    args, judge_args = parse(f"trustreward {command}", (dataclass_type, JudgeArguments), rest)
    return run(command, args, judge_args)


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
