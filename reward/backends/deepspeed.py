"""A judge sharded with DeepSpeed: ZeRO-3 inference (each rank holds 1/N of the weights) or AutoTP.

Under ZeRO-3 every forward gathers each layer's weights from all ranks, so all ranks must run the same number of
forwards, or the job hangs. Each call therefore plans its micro-batches first, agrees on the largest count
across ranks (one all-reduce), and pads with dummy forwards; a rank with nothing to judge still takes part.
`Judge` asks `agree` for its number of backend calls too, and lets errors through (a failing rank must stop the
others, not leave them waiting). The prefix cache is off: its number of forwards depends on the data.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import torch

from .hf import HFBackend, _pick_device, _pick_dtype

DEFAULT_CONFIG = Path(__file__).with_name("judge_zero3.json")  # package data: a wheel install has it too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Joins the job's process group (torchrun / accelerate / deepspeed launchers), or makes a 1-process one."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a plain `python` process: a group of one
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})  # fmt: skip
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))  # AutoTP
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def zero3_config(config: str | Path | dict | None, dtype: torch.dtype) -> dict:
    """The judge's ZeRO-3 inference config: ours (`judge_zero3.json` here) or the user's, checked, no optimizer."""
    if config is None:
        config = DEFAULT_CONFIG
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    config = json.loads(json.dumps(config))  # a copy
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ValueError(f"a sharded judge needs a ZeRO stage 3 config, got stage {stage!r}")
    for key in ("optimizer", "scheduler"):  # inference: nothing to optimise
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    config["bf16"] = {"enabled": dtype == torch.bfloat16}
    config["fp16"] = {"enabled": dtype == torch.float16}
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    return config


class DeepSpeedBackend(HFBackend):
    """`HFBackend` on a DeepSpeed-sharded model, in lockstep across ranks. Build it with `from_pretrained`."""

    lockstep = True

    def __init__(self, model, tokenizer, *, keep=(), **kwargs):
        super().__init__(model, tokenizer, prefix_cache=False, **kwargs)
        self._keep = keep  # objects that must outlive loading (the DeepSpeed engine, HfDeepSpeedConfig)

    @classmethod
    def from_pretrained(cls, path: str, *, device=None, dtype=None, adapter: str | None = None, config=None,
                        tp_size: int | None = None, **kwargs) -> DeepSpeedBackend:  # fmt: skip
        """Loads a causal LM sharded over the job's ranks.

        Args:
            config: ZeRO-3 config (dict or JSON path; default `judge_zero3.json` here); `offload_param` in it
                moves the shards to CPU or NVMe.
            tp_size: use DeepSpeed AutoTP with this many ranks per model instead of ZeRO-3 (every rank of a
                tensor-parallel group must judge the same batch).
        """
        import deepspeed
        import torch.distributed as dist
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        dtype = _pick_dtype(dtype, _pick_device(device))
        model_config = AutoConfig.from_pretrained(path)
        if tp_size is not None:  # checked before anything heavy happens
            text = model_config.get_text_config()
            heads = (text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
            if tp_size < 1 or any(h % tp_size for h in heads):
                raise ValueError(f"tp_size={tp_size} must divide the attention heads {heads}")
        else:
            config = zero3_config(config, dtype)
        init_distributed()
        world = dist.get_world_size()
        if tp_size is not None and world % tp_size:
            raise ValueError(f"tp_size={tp_size} does not divide the world size {world}")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tp_size is not None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
            engine = deepspeed.init_inference(model, tensor_parallel={"tp_size": tp_size}, dtype=dtype,
                                              replace_with_kernel_inject=False)  # fmt: skip
            return cls(engine.module, tokenizer, keep=(engine,), **kwargs)
        if adapter:
            raise ValueError("a LoRA adapter cannot be merged into a ZeRO-3 shard: merge it first and save the model")
        import transformers.integrations.deepspeed as hf_deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        # While it lives, from_pretrained builds the model under zero.Init: each rank materialises its shard only.
        # transformers keeps one global (weak) reference to it; restore the job's own (e.g. accelerate's ZeRO-3
        # config for the policy) afterwards, so that other models load as the job intends.
        previous = hf_deepspeed._hf_deepspeed_config_weak_ref
        hf_config = HfDeepSpeedConfig(config)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        finally:
            hf_deepspeed._hf_deepspeed_config_weak_ref = previous
        del hf_config
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return cls(engine.module, tokenizer, keep=(engine,), **kwargs)

    # -- lockstep ------------------------------------------------------------------------------------------------

    def agree(self, count: int, error: str | None = None) -> int:
        """The largest `count` over all ranks; raises on every rank if any rank reports an error."""
        import torch.distributed as dist

        flags = torch.tensor([count, int(error is not None)], dtype=torch.long, device=self._comm_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1]:
            raise RuntimeError(error or "another rank of the sharded judge failed (see its log)")
        return int(flags[0])

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _dummy(self) -> None:
        """The same forwards as one real micro-batch (prompt, then label step) on one token: keeps ranks in step."""
        token = self.tokenizer.eos_token_id or 0
        self._trie_logprobs([[token]], ((token,),))

    @torch.no_grad()  # not inference_mode: ZeRO-3's hooks swap parameter data in and out around each layer
    def label_logprobs(self, prompts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        error, plan = None, []
        try:
            encoded = [self._encode(p) for p in prompts]
            too_long = [i for i, ids in enumerate(encoded) if len(ids) + 8 > self.max_length]
            if too_long:
                raise ValueError(f"prompts {too_long[:5]} exceed the judge's max_length={self.max_length}")
            by_labels: dict[tuple, list[int]] = {}
            for i, p in enumerate(prompts):
                by_labels.setdefault(tuple(self._label_tokens(p, labels)), []).append(i)
            for label_ids, members in by_labels.items():
                for batch in self._batches([len(encoded[i]) for i in members]):
                    plan.append(([members[b] for b in batch], label_ids))
        except Exception as exc:  # agreed on below, so that every rank raises instead of waiting
            error = f"{type(exc).__name__}: {exc}"
        steps = self.agree(len(plan), error)
        results: list[dict[str, float]] = [{} for _ in prompts]
        for step in range(steps):
            if step < len(plan):
                rows, label_ids = plan[step]
                for i, lp in zip(rows, self._trie_logprobs([encoded[i] for i in rows], label_ids)):
                    results[i] = dict(zip(labels, lp))
            else:
                self._dummy()
        return results

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]):
        # `synced_gpus` keeps every rank stepping until all are done; the number of calls is agreed first.
        encoded = [self._encode(p) for p in prompts]
        batches = self._batches([len(ids) + max_new_tokens for ids in encoded])
        results = [("", 0.0, 0)] * len(prompts)
        token = self.tokenizer.eos_token_id or 0
        for step in range(self.agree(len(batches))):
            rows = batches[step] if step < len(batches) else []
            out = self._generate_batch([encoded[i] for i in rows] or [[token]], max_new_tokens, stop, synced_gpus=True)
            for i, r in zip(rows, out):
                results[i] = r
        return results
