"""`JudgeArguments`: every flag that says which judge to load and how, declared once for every command.

`grpo`, `score`, `compare`, `serve`, `audit`, `clean` and `train-rm` all parse this dataclass (next to their own),
so a flag has one name and one default everywhere, and `load()` is the only place a command builds its judge.
Plain dataclass, no TRL: the label-only commands parse it with `trainers.args` and start without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .args import UserError

BACKENDS = ("hf", "deepspeed")  # reward.load.BACKENDS, without importing reward here
EXACT_MODES = ("off", "auto", "full", "logit_bias")  # reward.backends.served_reads.EXACT_MODES, likewise
ENDPOINTS = ("completions", "chat")
SCORE_READINGS = ("anchored", "direct")  # reward.anchored.READINGS, without importing reward here
LOCAL_ONLY = ("judge_device", "judge_dtype", "judge_ds_config", "judge_tp_size")
SERVER_OPTIONS = ("endpoint", "concurrency", "prompts_per_request", "requests_per_second", "timeout", "max_retries",
                  "api_key_env", "exact")  # `OpenAIBackend` options, `judge_` + name here  # fmt: skip


def check_judge_spec(spec: str) -> None:
    """A judge that cannot exist is an error now, not a hub lookup error after the data is read."""
    if spec == "embedded" or spec.startswith("openai:"):
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--judge {spec}: a file, not a model directory")
        return
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise UserError(f"--judge {spec}: no such model directory")


PROGRESS_STEP = 1024  # prompts per backend call of the file commands (the progress bar's step)


@dataclass
class JudgeArguments:
    """Which judge, where it runs and how it is reached. Options of other backends than the chosen one are errors.

    `judge` left unset: `grpo`, `score`, `compare` and `serve` use the embedded judge; `audit`, `clean` and
    `train-rm` use the rows' own labels and probabilities, and judge only when `--judge` names a judge.
    """

    judge: str | None = field(
        default=None,
        metadata={"help": "'embedded', a model directory, a hub id or openai:URL[,URL2...] (default: 'embedded' "
                  "for grpo, score, compare, serve; none for audit, clean, train-rm: the rows' labels)."},
    )  # fmt: skip
    judge_backend: str = field(
        default="hf", metadata={"help": "hf | deepspeed (sharded over the job's ranks: ZeRO-3, or AutoTP)."}
    )
    judge_ds_config: str | None = field(
        default=None,
        metadata={"help": "deepspeed: the judge's ZeRO-3 config (default: reward/backends/judge_zero3.json)."},
    )
    judge_tp_size: int | None = field(default=None, metadata={"help": "deepspeed: AutoTP degree instead of ZeRO-3."})
    judge_device: str | None = field(default=None, metadata={"help": "Judge device (default: CUDA if available)."})
    judge_dtype: str | None = field(
        default=None, metadata={"help": "Judge dtype, e.g. float32 | bfloat16 (default: fp32 on CPU, bf16 on GPU)."}
    )
    judge_max_length: int | None = field(default=None, metadata={"help": "Most tokens in one judge prompt."})
    judge_batch_size: int | None = field(
        default=None,
        metadata={"help": "Most judge prompts per backend call (default: a call whole, batched by the backend's own "
                  "budget; the file commands 1024, the step of their progress bar)."},
    )  # fmt: skip
    judge_injection_check: bool = field(
        default=False, metadata={"help": "Judge suspects of prompt injection again without the suspicious text."}
    )
    judge_score_reading: str = field(
        default="anchored",
        metadata={"help": "Pointwise rewards (score reward, serve --reward score, the score command): anchored (a "
                  "both-order comparison with an anchor answer; 2 prompts per response) | direct (the score slot; "
                  "1 prompt, but a judge copies ratings written in the answer)."},
    )  # fmt: skip
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
    judge_exact: str = field(
        default="off",
        metadata={"help": "openai: label reads beyond the top-k: off | auto (probe the server once) | full | "
                  "logit_bias (docs/served-judges.md)."},
    )  # fmt: skip

    def __post_init__(self):
        # Checked when parsed, before any data is read or model loaded: a typo must fail in a second.
        if self.judge is not None:
            check_judge_spec(self.judge)
        if self.judge_backend not in BACKENDS:
            raise UserError(f"judge_backend must be one of {', '.join(BACKENDS)}, got {self.judge_backend!r}")
        if self.judge_score_reading not in SCORE_READINGS:
            raise UserError(f"judge_score_reading must be one of {', '.join(SCORE_READINGS)}, got "
                            f"{self.judge_score_reading!r}")  # fmt: skip
        if self.judge_exact not in EXACT_MODES:
            raise UserError(f"judge_exact must be one of {', '.join(EXACT_MODES)}, got {self.judge_exact!r}")
        if self.judge_endpoint not in ENDPOINTS:
            raise UserError(f"judge_endpoint must be one of {', '.join(ENDPOINTS)}, got {self.judge_endpoint!r}")
        for name in ("judge_batch_size", "judge_max_length", "judge_tp_size", "judge_concurrency",
                     "judge_prompts_per_request"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{name} must be an integer >= 1, got {value!r}")
        if self.served:
            local = [n for n in LOCAL_ONLY if getattr(self, n) is not None]
            local += ["judge_backend"] if self.judge_backend != "hf" else []
            if local:
                raise UserError(" and ".join(f"{n} does not apply" for n in local)
                                + " to a served judge (openai:...): the server places the model")  # fmt: skip
        elif self.judge_backend != "deepspeed" and (self.judge_ds_config or self.judge_tp_size):
            raise UserError("judge_ds_config and judge_tp_size are options of judge_backend deepspeed")

    @property
    def served(self) -> bool:
        """The judge is an OpenAI-compatible server (`openai:URL`)."""
        return (self.judge or "").startswith("openai:")

    def load(self, default: str | None = "embedded", progress: bool = False):
        """The `reward.Judge` these arguments describe (`default` when `judge` is unset; `None`: no judge)."""
        spec = self.judge or default
        if spec is None:
            return None
        from reward import load_judge

        step = self.judge_batch_size or (PROGRESS_STEP if progress else None)
        options = {"batch_size": step, "injection_check": self.judge_injection_check}
        options["score_reading"] = self.judge_score_reading
        options |= {"max_length": self.judge_max_length, "progress": progress}
        if spec.startswith("openai:"):
            server = {name: getattr(self, f"judge_{name}") for name in SERVER_OPTIONS}
            return load_judge(spec, model=self.judge_model, tokenizer=self.judge_tokenizer, server_options=server,
                              **options)  # fmt: skip
        return load_judge(spec, backend=self.judge_backend, device=self.judge_device, dtype=self.judge_dtype,
                          ds_config=self.judge_ds_config, tp_size=self.judge_tp_size, **options)  # fmt: skip
