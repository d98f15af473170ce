"""Fake vLLM and SGLang `/v1/completions` servers over a transformers model whose full next-token distribution is
known (float64), for the exact reads of `reward/backends/served_reads.py`.

Followed from source (not run against the real servers):
- vLLM: the request fields of vllm/entrypoints/openai/completion/protocol.py (`prompt` as text, texts or token ids,
  `logprobs`, `logit_bias` {id: bias}, `return_tokens_as_token_ids`); the count check of vllm/sampling_params.py
  (`logprobs` above `--max-logprobs`, 20 by default, is an HTTP 400; -1 = the vocabulary); `--logprobs-mode`:
  "raw_logprobs" (the default) reports log-probs before any logits processor, the logit bias included,
  "processed_logprobs" after them. The legacy response shape (`choices[i].logprobs.top_logprobs[0]` a {text:
  logprob} dict holding the top-k and the sampled token; texts that collide keep one entry, "token_id:N" keys with
  `return_tokens_as_token_ids`). Its prefix cache works on full blocks of 16 tokens.
- SGLang: log-probs after the logit bias (python/sglang/srt/layers/sampler.py adds `logit_bias` to the logits before
  the softmax), the same legacy completions shape; its radix cache reuses any cached prefix, token by token.

Every server counts what it computes: `computed` (prompt tokens not found in its prefix cache) and `prompt_tokens`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler

import torch
from openai_fake import _Server


def fake_served(model, tokenizer, flavor: str = "vllm", max_logprobs: int = 20, logprobs_mode: str = "raw_logprobs"):
    """A fake `flavor` ("vllm" or "sglang") server; `max_logprobs` -1 lists up to the vocabulary (vLLM's
    `--max-logprobs -1`)."""
    lock = threading.Lock()
    block = 16 if flavor == "vllm" else 1
    after_bias = flavor == "sglang" or logprobs_mode == "processed_logprobs"
    cache: set = set()

    def compute(ids: list[int]) -> int:
        """Prompt tokens computed: those after the longest cached prefix of whole blocks; the blocks then cached."""
        hit = 0
        while hit + block <= len(ids) and tuple(ids[: hit + block]) in cache:
            hit += block
        for end in range(block, len(ids) + 1, block):
            cache.add(tuple(ids[:end]))
        return len(ids) - hit

    def logprobs(ids: list[int], bias: dict[int, float]):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        raw = logits.log_softmax(-1)
        for token, b in bias.items():
            logits[token] += b
        return raw, logits.log_softmax(-1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: dict):
            out = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["prompt"]
            prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
            k = body.get("logprobs")
            vocab = len(tokenizer)
            limit = vocab if max_logprobs == -1 else max_logprobs
            if k is not None and (k == -1 and limit < vocab or k > limit):
                message = f"Requested sample logprobs of {k}, which is greater than max allowed: {limit}"
                return self._reply(400, {"object": "error", "message": message, "type": "BadRequestError"})
            k = vocab if k == -1 else k
            bias = {int(t): max(-100.0, min(100.0, float(b))) for t, b in (body.get("logit_bias") or {}).items()}
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choices = []
            for i, p in enumerate(prompts):
                ids = list(p) if isinstance(p, list) else tokenizer(p, add_special_tokens=False).input_ids
                with lock:
                    server.computed += compute(ids)
                    server.prompt_tokens += len(ids)
                    server.prompts.append(len(prompts))
                    raw, processed = logprobs(ids, bias)
                sampled = int(processed.argmax())
                shown = processed if after_bias else raw
                top = shown.topk(k) if k else None
                listed = {}
                for token in ([] if top is None else top.indices.tolist()) + [sampled]:
                    key = f"token_id:{token}" if as_ids else tokenizer.decode([token])
                    listed.setdefault(key, float(shown[token]))  # texts that collide: one entry, as a dict does
                text = tokenizer.decode([sampled])
                lp = {"text_offset": [0], "token_logprobs": [float(shown[sampled])], "tokens": [text],
                      "top_logprobs": [listed]} if k is not None else None  # fmt: skip
                choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": "length"})
            self._reply(200, {"object": "text_completion", "model": "fake", "choices": choices})

    server = _Server(Handler)
    server.computed, server.prompt_tokens, server.prompts = 0, 0, []
    return server


def full_label_logprobs(model, tokenizer, prompt: str, labels: list[str]) -> dict[str, float]:
    """The full-vocabulary value of each label (float64): its tokens' chain and its end mass, as the local backend
    defines them."""
    import math

    from reward.backends.served_reads import label_token_ids, vocab_info

    _, is_end, _, _ = vocab_info(tokenizer)
    ends = torch.tensor(is_end)
    base = tokenizer(prompt, add_special_tokens=False).input_ids
    out = {}
    for label, ids in zip(labels, label_token_ids(tokenizer, prompt, labels, {})):
        total, seq = 0.0, list(base)
        with torch.no_grad():
            for t in ids:
                total += float(model(torch.tensor([seq])).logits[0, -1].double().log_softmax(-1)[t])
                seq.append(t)
            row = model(torch.tensor([seq])).logits[0, -1].double().log_softmax(-1)
        out[label] = total + float(row[ends[: len(row)]].logsumexp(0)) if len(ids) else -math.inf
    return out
