"""Local transformers backend: exact label probabilities from one prompt forward plus one tree-attention step.

The labels of a scale form a token trie (on digit-split tokenizers "47" is "4" -> "7"). We run the prompt once,
keep its KV cache, and feed every trie node as one extra token in a single forward: each node attends to the
prompt and to its own ancestors only (a 4D mask), at the position it would have in a plain sequence. That gives
P(next token | prompt, path) for all paths at once, so a 1-100 distribution costs one prompt forward and one
100-token step instead of 100 full forwards, and it is exact (tests compare it with the brute force).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _common(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common start of a and b, counted up to `limit`."""
    n = min(len(a), len(b), limit)
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pick_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # fp32 on CPU (bf16 matmuls are slow there); bf16 on GPU.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class HFBackend:
    """Runs a transformers causal LM as a judge.

    Args:
        model: a causal LM (`AutoModelForCausalLM`), already on its device.
        tokenizer: its tokenizer.
        max_length: the most tokens a judge prompt may hold (defaults to the model's context, at most 8192).
        max_batch_tokens: padded tokens per forward; prompts are sorted by length and packed up to this budget.
        prefix_cache: run token prefixes shared by several prompts once and reuse their KV cache (a radix tree:
            the template's instructions, then each question, then a pairwise prompt's first answer). Default: on
            for a CPU, where compute is the cost (2.85x faster, `bench/bench_prefix_cache.py`), off on a GPU, where
            its many small forwards cost more than the compute they save (H100, 2026-11-27, `launch/gpu_check.py`:
            8.1 vs 34.1 items/s at 135M parameters, 14.0 vs 21.2 at 1.1B, fp32).
        min_prefix: shortest shared stretch (tokens) worth a cache level.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int | None = None,
        max_batch_tokens: int = 8192,
        prefix_cache: bool | None = None,
        min_prefix: int = 32,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        context = getattr(model.config, "max_position_embeddings", None) or 8192
        self.max_length = int(max_length or min(context, 8192))
        self.max_batch_tokens = max_batch_tokens
        self.device = next(model.parameters()).device
        self.prefix_cache = self.device.type == "cpu" if prefix_cache is None else prefix_cache
        self.min_prefix = min_prefix
        self.forward_tokens = 0  # prompt tokens (padding included) label_logprobs ran through the model
        self._label_cache: dict[tuple[str, tuple[str, ...]], list[tuple[int, ...]]] = {}
        self._end_ids: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, path: str, *, device=None, dtype=None, adapter: str | None = None, **kwargs) -> HFBackend:
        """Loads a model directory or hub id (optionally with a PEFT LoRA adapter merged in)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # sdpa and eager both take our 4D tree mask; flash-attention kernels do not.
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_pick_dtype(dtype, device), attn_implementation="sdpa"
        )
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        return cls(model.to(device), tokenizer, **kwargs)

    # -- label probabilities -------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _label_tokens(self, prompt: str, labels: Sequence[str]) -> list[tuple[int, ...]]:
        """Tokenises each label as it follows the prompt's slot (tokenisation depends on what comes before)."""
        tail = prompt[-48:]
        key = (tail, tuple(labels))
        if key not in self._label_cache:
            base = self._encode(tail)
            out = []
            for label in labels:
                ids = self._encode(tail + label)
                if ids[: len(base)] != base or len(ids) == len(base):
                    raise ValueError(
                        f"label {label!r} merges with the end of the slot {tail[-12:]!r} into one token; "
                        "end the template's slot where a token ends (e.g. with '[')"
                    )
                out.append(tuple(ids[len(base) :]))
            self._label_cache[key] = out
        return self._label_cache[key]

    def _ends(self) -> torch.Tensor:
        """Ids of the tokens that end a label: their text does not start with a letter or a digit."""
        if self._end_ids is None:
            vocab = self.model.config.get_text_config().vocab_size  # (a ZeRO-3 shard's weight has no shape)
            texts = self.tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(self.tokenizer)))))
            mask = torch.ones(vocab, dtype=torch.bool)
            for i, tok in enumerate(texts):
                text = self.tokenizer.convert_tokens_to_string([tok]) if tok is not None else ""
                if text[:1].isalnum():
                    mask[i] = False
            self._end_ids = mask.nonzero().squeeze(-1).to(self.device)  # indices: selecting by mask syncs a GPU
        return self._end_ids

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, grouped so that rows x longest row stays within the token budget.

        On a CPU a row shorter than 90% of its batch's longest starts a new batch: padding is compute thrown away,
        and a batch of one is as fast per token as a big one. Not on a GPU, where each forward's fixed cost (tens of
        ms of launches and host work for a small judge) outweighs the padding.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, current = [], []
        ragged = 0.9 if self.device.type == "cpu" else 0.0
        for i in order:
            longest = lengths[current[0]] if current else 0
            if current and ((len(current) + 1) * longest > self.max_batch_tokens or lengths[i] < ragged * longest):
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    @torch.inference_mode()
    def label_logprobs(self, prompts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        encoded = [self._encode(p) for p in prompts]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) + 8 > self.max_length]
        if too_long:
            raise ValueError(f"prompts {too_long[:5]} exceed the judge's max_length={self.max_length}")
        results: list[dict[str, float]] = [{} for _ in prompts]
        # Prompts of one template share their label tokenisation; group in case custom slots differ.
        by_labels: dict[tuple, list[int]] = {}
        for i in range(len(prompts)):
            by_labels.setdefault(tuple(self._label_tokens(prompts[i], labels)), []).append(i)
        for label_ids, members in by_labels.items():
            for i, lp in self._shared(encoded, members, label_ids, 0, None):
                results[i] = dict(zip(labels, lp))
        return results

    def _shared(self, encoded, members, label_ids, start: int, prefix_kv):
        """Label log-probs of `members`, whose first `start` tokens are in `prefix_kv`: runs of members sharing a
        further stretch of >= min_prefix tokens get that stretch run once (a deeper cache level), the rest are
        run in length-sorted micro-batches on top of the current prefix. Yields (index, log-probs)."""
        leaves = members
        if self.prefix_cache and len(members) > 1:
            leaves = []
            for run in self._runs(encoded, members, start):
                if len(run) == 1:
                    leaves += run
                    continue
                shared = min(len(encoded[i]) for i in run) - 1  # every row keeps >= 1 token of its own
                first = encoded[run[0]]
                for i in run[1:]:
                    shared = min(shared, _common(first, encoded[i], shared))
                kv = self._extend(first[start:shared], prefix_kv)
                yield from self._shared(encoded, run, label_ids, shared, kv)
        for batch in self._batches([len(encoded[i]) - start for i in leaves]):
            rows = [leaves[b] for b in batch]
            yield from zip(rows, self._trie_logprobs([encoded[i][start:] for i in rows], label_ids, prefix_kv))

    def _runs(self, encoded, members, start: int) -> list[list[int]]:
        """Members in token order, split where neighbours share fewer than min_prefix tokens past `start`."""
        order = sorted(members, key=lambda i: encoded[i][start:])
        runs = [[order[0]]]
        for prev, i in zip(order, order[1:]):
            if _common(encoded[prev], encoded[i], start + self.min_prefix) >= start + self.min_prefix:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _extend(self, tokens: list[int], prefix_kv):
        """The KV cache of the current prefix plus `tokens` (one row)."""
        from transformers import DynamicCache

        past = 0 if prefix_kv is None else prefix_kv[0][0].shape[-2]
        cache = DynamicCache(ddp_cache_data=prefix_kv, config=self.model.config) if prefix_kv else None
        ids = torch.tensor([tokens], device=self.device)
        positions = torch.arange(past, past + len(tokens), device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        self.forward_tokens += len(tokens)
        return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _trie_logprobs(
        self, rows: list[list[int]], label_ids: tuple[tuple[int, ...], ...], prefix_kv=None
    ) -> list[list[float]]:
        nodes = sorted({ids[:k] for ids in label_ids for k in range(1, len(ids) + 1)}, key=lambda p: (len(p), p))
        index = {path: q for q, path in enumerate(nodes)}
        n_nodes = len(nodes)
        # ancestor[q, r]: node q may attend to node r (r is a prefix of q, q itself included). Built on the CPU and
        # copied once: one small write per entry would be one kernel launch each on a GPU.
        ancestor = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
        for path, q in index.items():
            for k in range(1, len(path) + 1):
                ancestor[q, index[path[:k]]] = True
        ancestor = ancestor.to(self.device)
        depth = torch.tensor([len(p) - 1 for p in nodes], device=self.device)
        tokens = torch.tensor([p[-1] for p in nodes], device=self.device)

        ids, mask = self._pad_left(rows)
        batch, cache, past = len(rows), None, 0
        if prefix_kv is not None:  # the shared prefix, then each row's own tokens (left-padded between the two)
            from transformers import DynamicCache

            past = prefix_kv[0][0].shape[-2]
            expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix_kv]
            cache = DynamicCache(ddp_cache_data=expanded, config=self.model.config)
        positions = past + (mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones(batch, past, dtype=mask.dtype, device=self.device), mask], dim=-1)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        self.forward_tokens += int(ids.numel())  # prompt tokens, padding included (not the label step)
        root = out.logits[:, -1].float().log_softmax(-1)  # [B, V]

        tree_mask = torch.cat(
            [
                mask.bool()[:, None, None, :].expand(batch, 1, n_nodes, -1),
                ancestor[None, None].expand(batch, 1, -1, -1),
            ],
            dim=-1,
        )
        if self.model.config._attn_implementation == "eager":  # eager adds the mask to the scores
            additive = torch.zeros(tree_mask.shape, dtype=self.model.dtype, device=self.device)
            tree_mask = additive.masked_fill(~tree_mask, torch.finfo(self.model.dtype).min)
        step = self.model(
            input_ids=tokens[None].expand(batch, -1),
            attention_mask=tree_mask,
            position_ids=mask.sum(-1, keepdim=True) + depth[None],
            cache=out.past_key_values,
        )
        node_lp = step.logits.float().log_softmax(-1)  # [B, Q, V]
        end_lp = node_lp.index_select(-1, self._ends()).logsumexp(-1)  # [B, Q]: log P(label complete | path)

        # log P(label) = root's first token + each later token given its path + the end; summed as tensors and
        # read back once (a read per label would wait on the GPU each time).
        first, last = [ids[0] for ids in label_ids], [index[ids] for ids in label_ids]
        lp = root[:, first] + end_lp[:, last]  # [B, L]
        steps = [(j, index[ids[:k]], ids[k]) for j, ids in enumerate(label_ids) for k in range(1, len(ids))]
        if steps:
            label, node, token = (torch.tensor(c, device=self.device) for c in zip(*steps))
            lp = lp.index_add(1, label, node_lp[:, node, token])
        return lp.tolist()

    # -- generation (rationale mode) --------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]
    ) -> list[tuple[str, float, int]]:
        encoded = [self._encode(p) for p in prompts]
        results: list[tuple[str, float, int]] = [("", 0.0, 0)] * len(prompts)
        for batch in self._batches([len(ids) + max_new_tokens for ids in encoded]):
            out = self._generate_batch([encoded[i] for i in batch], max_new_tokens, stop)
            for i, r in zip(batch, out):
                results[i] = r
        return results

    def _generate_batch(self, rows: list[list[int]], max_new_tokens: int, stop: Sequence[str], **options):
        """Greedy continuations of token rows: (text, its log-prob, tokens generated) each."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = {self.tokenizer.eos_token_id, pad} - {None}
        ids, mask = self._pad_left(rows)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=list(stop) or None,
            tokenizer=self.tokenizer,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_logits=True,
            **options,
        )
        new = out.sequences[:, ids.shape[1] :]
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        results = []
        for row in range(len(rows)):
            kept, total, n = [], 0.0, 0
            for t, tok in enumerate(new[row].tolist()):
                total, n = total + float(logprobs[row, t, tok]), n + 1
                if tok in eos:  # the EOS is part of the judge's output; padding after it is not
                    break
                kept.append(tok)
            results.append((self.tokenizer.decode(kept, skip_special_tokens=True), total, n))
        return results
