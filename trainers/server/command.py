"""`trustreward serve`'s flags and entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from .app import create_app, limit_problems, option_problems


@dataclass
class ServeArguments:
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (loopback unless told otherwise)."})
    port: int = field(default=8000, metadata={"help": "Port."})
    reward: str = field(
        default="pairwise",
        metadata={"help": "/get_reward: pairwise (within a group) | score | reference (each sample vs its labels) | "
                  "rubric (each sample against the rubric in its labels entry, JSON text)."},
    )  # fmt: skip
    rubric_mode: str = field(
        default="explicit",
        metadata={"help": "rubric: explicit (each criterion read, weighted) | implicit (one 1-10 score given all "
                  "criteria) | pairwise (each criterion against the label's 'reference' answer)."},
    )  # fmt: skip
    scale: int = field(default=5, metadata={"help": "Pointwise ratings 1..scale."})
    pairing: str = field(default="all", metadata={"help": "pairwise: all | adaptive | circular | swiss (per group)."})
    aggregate: str | None = field(
        default=None,
        metadata={"help": "pairwise: mean_win | bradley_terry | cycle_free (default: bradley_terry for swiss and "
                  "circular, mean_win for the rest)."},
    )  # fmt: skip
    group_size: int | None = field(
        default=None,
        metadata={"help": "pairwise: hold a prompt's samples until N arrived (per-sample clients: OpenRLHF's "
                  "n_samples_per_prompt, verl's rollout.n); default: each request's samples are the group."},
    )  # fmt: skip
    group_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a group waits for its samples; then judged with what arrived."}
    )
    on_failure: str = field(
        default="group_mean",
        metadata={"help": "A failed judgement's reward: group_mean | value:X | retry (503, the client retries)."},
    )
    max_batch: int = field(default=64, metadata={"help": "Most items judged in one call across requests."})
    max_wait_s: float = field(default=0.02, metadata={"help": "How long a request waits for others to batch with."})
    max_queue: int = field(default=4096, metadata={"help": "Items queued at most; beyond, 503."})
    max_request_items: int = field(default=1024, metadata={"help": "Items in one request at most; beyond, 413."})
    deadline_s: float = field(
        default=150.0,
        metadata={"help": "Every /get_reward is answered within this many seconds (below OpenRLHF's 180 s client "
                  "timeout); samples not judged by then get the on_failure stand-in, counted as failures and late."},
    )  # fmt: skip
    max_held_bytes: int = field(
        default=256 << 20, metadata={"help": "Bytes of samples held in groups at most; beyond, 503."}
    )
    allowed_hosts: str | None = field(
        default=None,
        metadata={"help": "Comma-separated Host names to answer ('*': any); default: loopback names when bound "
                  "to loopback, else any."},
    )  # fmt: skip
    token_env: str | None = field(default=None, metadata={"help": "Env variable with a bearer token to require."})
    header_timeout_s: float = field(
        default=10.0, metadata={"help": "Seconds a connection may take to send a request's headers; then closed."}
    )

    def __post_init__(self):  # when parsed, before the judge loads: a bad flag is one line and exit 2
        from ..args import UserError

        problems = option_problems(self.reward, self.group_size, self.group_timeout, self.on_failure, self.deadline_s,
                                   self.rubric_mode)  # fmt: skip
        problems += limit_problems(self.scale, self.pairing, self.aggregate, self.max_batch, self.max_wait_s,
                                   self.max_queue, self.max_request_items)  # fmt: skip
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port!r}")
        if not 0 < self.header_timeout_s < float("inf"):
            problems.append(f"header_timeout_s must be positive seconds, got {self.header_timeout_s!r}")
        if problems:
            raise UserError("; ".join(problems))


LOOPBACK = ["127.0.0.1", "localhost", "[::1]", "::1"]


def hosts_for(bind: str, allowed: str | None) -> list[str] | None:
    """The Host names to answer: the flag's, else loopback names on a loopback bind (None: any)."""
    if allowed:
        return [h.strip() for h in allowed.split(",") if h.strip()]
    return LOOPBACK if bind in ("127.0.0.1", "localhost", "::1") else None


def main(argv: list[str]) -> int:
    import asyncio
    import os

    import uvicorn
    from trl import TrlParser

    from ..judge_args import JudgeArguments
    from .guard import header_timeout_protocol

    args, judge_args = TrlParser((ServeArguments, JudgeArguments)).parse_args_and_config(args=argv)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise SystemExit(f"serve: --token_env {args.token_env} is not set")
    judge = judge_args.load()
    app = create_app(judge, reward=args.reward, scale=args.scale, pairing=args.pairing, aggregate=args.aggregate,
                     group_size=args.group_size,
                     group_timeout=args.group_timeout, on_failure=args.on_failure, max_batch=args.max_batch,
                     max_wait_s=args.max_wait_s, max_queue=args.max_queue, max_request_items=args.max_request_items,
                     deadline_s=args.deadline_s, max_held_bytes=args.max_held_bytes, token=token,
                     allowed_hosts=hosts_for(args.host, args.allowed_hosts), rubric_mode=args.rubric_mode)  # fmt: skip
    _more_files()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5,
                            http=header_timeout_protocol(args.header_timeout_s))  # fmt: skip

    class Server(uvicorn.Server):
        """SIGINT / SIGTERM: stop accepting, answer samples held in groups 503 at once, give requests in flight
        5 s, then stop judging (the call in flight ends)."""

        async def serve(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            self.loop.call_soon_threadsafe(app.state.groups.refuse_held)
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


def _more_files() -> None:
    """The open-file limit raised to its hard limit: each connection holds a descriptor (the soft limit is often
    1,024)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
