"""Local transformers backend: exact label probabilities from one forward per micro-batch (tree attention).

The labels of a scale form a token trie (`labels.py`; on digit-split tokenizers "47" is "4" -> "7"). Every trie
node is fed as one extra token after the prompt's own, in the same forward: each node attends to the prompt and to
its own ancestors only (a 4D mask), at the position it would have in a plain sequence. That gives P(next token |
prompt, path) for all paths at once, so a 1-100 distribution costs one forward of the prompt plus ~100 tokens
instead of 100 full forwards, and it is exact (tests compare it with the brute force).

The output layer is ours when it provably is the model's (`HFBackend._own_head`): a forward then runs the base
model only, and the root and node rows of a whole call go through the head together at the end, a vocabulary
slice at a time on a CPU (`labels.read_labels`). With it, a Llama's base model runs through
`decoder.lean_decoder` (its own modules without transformers' per-call bookkeeping) where that is bit for bit
transformers' forward."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tokens import encode
from . import JudgeBackend
from .decoder import RowsPast, lean_decoder, model_mask
from .labels import Trie, build_trie, end_tokens, read_labels


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


class HFBackend(JudgeBackend):
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
            8.1 vs 34.1 items/s at 135M parameters, 14.0 vs 21.2 at 1.1B, fp32; measured before the rows of
            different cache levels shared forwards, `_shared`).
        min_prefix: fewest prompt tokens a cache level must save: a stretch of s tokens shared by n prompts saves
            (n - 1) x s (`_levels`). Rows of any level share forwards (`_shared`), so a finer level adds only its
            stretch's forward; at 16 a group of MT-Bench answers judged in all pairs runs within 1.1x the radix
            tree's tokens, at no more CPU than 32 on the embedded judge (`bench/bench_group_server.py`; figures in
            docs/benchmarks.md).
        max_logits: most vocabulary-wide logits values held at once (rows x vocabulary): the label read's chunks,
            and, when the model's own head writes them, the rows of a micro-batch on large label sets (1-100 has
            ~100 trie nodes per prompt).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int | None = None,
        max_batch_tokens: int = 8192,
        prefix_cache: bool | None = None,
        min_prefix: int = 16,
        max_logits: int = 2**25,
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
        self.max_logits = max_logits
        self._label_cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[int, ...], ...]] = {}
        self._tries: dict[tuple[tuple[int, ...], ...], Trie] = {}
        self._end_ids: torch.Tensor | None = None
        self._end_mask: torch.Tensor | None = None
        self._head_checked, self._head, self._lean = False, None, None

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
        return encode(self.tokenizer, [text])[0]

    def _label_tokens(self, prompt: str, labels: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """Tokenises each label as it follows the prompt's slot (tokenisation depends on what comes before)."""
        tail = prompt[-48:]
        key = (tail, tuple(labels))
        if key not in self._label_cache:
            base = self._encode(tail)
            out = []
            for label, ids in zip(labels, encode(self.tokenizer, [tail + label for label in labels])):
                if ids[: len(base)] != base or len(ids) == len(base):
                    raise ValueError(
                        f"label {label!r} merges with the end of the slot {tail[-12:]!r} into one token; "
                        "end the template's slot where a token ends (e.g. with '[')"
                    )
                out.append(tuple(ids[len(base) :]))
            self._label_cache[key] = tuple(out)
        return self._label_cache[key]

    def _ends(self) -> torch.Tensor:
        """1.0 at the tokens that end a label, else 0.0 (`labels.end_tokens`; `_end_ids`: their indices)."""
        if self._end_ids is None:
            mask = end_tokens(self.tokenizer, self._vocab())  # (the config's size: a ZeRO-3 shard's weight has none)
            self._end_ids = mask.nonzero().squeeze(-1).to(self.device)  # indices: selecting by mask syncs a GPU
            self._end_mask = mask.float().to(self.device)
        return self._end_mask

    def _trie(self, label_ids: tuple[tuple[int, ...], ...]) -> Trie:
        """The label set's token trie as tensors on the model's device, built once per label set."""
        if label_ids not in self._tries:
            self._tries[label_ids] = build_trie(label_ids, self.device)
        return self._tries[label_ids]

    def _batches(self, lengths: list[int], label_rows: int = 0, cap: bool = True) -> list[list[int]]:
        """Indices sorted by length, grouped so that rows x (longest row + `label_rows`) stays within the token
        budget, and (if `cap`: the model's head writes them) rows x (label_rows + 1) logits rows within
        `max_logits` vocabulary-wide values.

        On a CPU a row shorter than 90% of its batch's longest, less `_free_padding()` tokens, starts a new batch:
        padding is compute thrown away, and a batch of one is as fast per token as a big one. Not on a GPU, where
        each forward's fixed cost (tens of ms of launches and host work for a small judge) outweighs the padding.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, current = [], []
        cpu = self.device.type == "cpu"
        ragged, free = (0.9, self._free_padding()) if cpu else (0.0, 0)
        vocab = self.model.config.get_text_config().vocab_size
        most_rows = max(1, self.max_logits // (vocab * (label_rows + 1))) if label_rows and cap else len(lengths)
        for i in order:
            longest = lengths[current[0]] if current else 0
            if current and (
                (len(current) + 1) * (longest + label_rows) > self.max_batch_tokens
                or lengths[i] < ragged * longest - free
                or len(current) >= most_rows
            ):
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def _free_padding(self) -> int:
        """Padding tokens (per row) that cost about what one more forward's fixed host work does on a CPU: ~5 MFLOP a
        layer (the lean forward's ~0.1 ms a layer at ~50 GFLOP/s) over a token's ~2 x (4 d^2 + 3 d d_ff) FLOPs a
        layer. ~60 tokens for the 1-layer, 64-wide bench judge (fewer, fuller forwards: `bench/bench_host.py`); 0
        from ~200-wide models on, where padding is the cost."""
        config = self.model.config.get_text_config()
        width = config.hidden_size
        ffn = getattr(config, "intermediate_size", None) or 4 * width
        return int(5e6 / (2 * (4 * width * width + 3 * width * ffn)))

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    def _own_head(self):
        """The output layer if the model's logits are exactly `head(base_model(...).last_hidden_state)`, else None.

        Then a micro-batch runs the base model only, and the vocabulary-wide rows of a whole call go through the
        head together, after the last forward: one pass over the head's weight instead of one per forward (on a
        CPU a small judge's forward mostly streams that weight: 12.6 MB for 49152 x 64), and no head for the
        prefix cache's stretches. Checked once on a probe, bit for bit (a logit soft-cap or scale would show). Not
        under lockstep: ZeRO-3 gathers the head at each of its calls, which must then be the same on every rank.
        The lean forward (`decoder.lean_decoder`, checked likewise) comes with it, under the same conditions.
        """
        if not self._head_checked:
            self._head_checked = True
            head, base = self.model.get_output_embeddings(), getattr(self.model, "base_model", self.model)
            if not self.lockstep and isinstance(head, torch.nn.Linear) and base is not self.model:
                vocab = self.model.config.get_text_config().vocab_size
                ids = torch.arange(min(8, vocab), device=self.device)[None]
                full = self.model(input_ids=ids).logits
                if torch.equal(full, head(base(input_ids=ids).last_hidden_state)):
                    self._head, self._lean = head, lean_decoder(self.model)
        return self._head

    @torch.inference_mode()
    def label_logprobs(self, prompts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        """See `JudgeBackend.label_logprobs`: the whole call batched by `max_batch_tokens`, over the prefix cache."""
        encoded = encode(self.tokenizer, prompts)
        too_long = [i for i, ids in enumerate(encoded) if len(ids) + 8 > self.max_length]
        if too_long:
            raise ValueError(f"prompts {too_long[:5]} exceed the judge's max_length={self.max_length}")
        results: list[dict[str, float]] = [{} for _ in prompts]
        # Prompts of one template share their label tokenisation; group in case custom slots differ.
        by_labels: dict[tuple, list[int]] = {}
        for i in range(len(prompts)):
            by_labels.setdefault(self._label_tokens(prompts[i], labels), []).append(i)
        for label_ids, members in by_labels.items():
            trie, rows, outs = self._trie(label_ids), [], []
            for batch, out in self._shared(encoded, members, trie):
                rows += batch
                outs.append(out)
            # Hidden states (our head): read all together; logits (the model's head): one micro-batch at a time.
            groups = [outs] if self._own_head() is not None else [[o] for o in outs]
            lps = [lp for group in groups for lp in self._read(group, trie)]
            for i, lp in zip(rows, torch.cat(lps).tolist()):
                results[i] = dict(zip(labels, lp))
        return results

    def _vocab(self) -> int:
        return self.model.config.get_text_config().vocab_size

    def _shared(self, encoded, members, trie: Trie):
        """Forwards of `members` over the prefix cache. Each run of members worth a cache level (`_levels`) gets
        its shared stretch run once and is then handled the same way on top of it; the rest (leaves) are run in
        length-sorted micro-batches. A forward takes rows of any level, each row on its own cached prefix
        (`_past`): stretches of different parents together, leaves of different levels together, so finer levels
        mean fewer tokens, not more and smaller forwards. Yields (indices, `_trie_forward`'s output).

        Memory: the newest levels are extended first (depth first; a list, not recursion: a chain of levels is
        bounded by the prompts, not by Python's stack), as many at a time as hold a forward's token budget of
        cached tokens; leaves wait until they and the prefixes they keep alive reach that budget, or nothing is
        left to extend."""
        own = self._own_head() is not None  # no vocabulary-wide rows in a micro-batch: no cap on them
        n_nodes, budget = len(trie.tokens), self.max_batch_tokens
        todo, pool = [], []  # levels to extend (run, start, end, parent KV); leaves waiting (index, start, KV)

        def expand(members, start, kv):
            leaves, levels = self._levels(encoded, members, start) if self.prefix_cache else (members, [])
            pool.extend((i, start, kv) for i in leaves)
            todo.extend((run, start, end, kv) for run, end in levels)

        expand(members, 0, None)
        while todo or pool:
            taken, held = [], 0
            while todo and (not taken or held + todo[-1][2] <= budget):  # a level's cache holds `end` tokens
                taken.append(todo.pop())
                held += taken[-1][2]
            for batch in self._batches([end - start for _, start, end, _ in taken]):
                tasks = [taken[b] for b in batch]
                kvs = self._extend([encoded[run[0]][start:end] for run, start, end, _ in tasks], [t[3] for t in tasks])
                for (run, _, end, _), kv in zip(tasks, kvs):
                    expand(run, end, kv)
            waiting = sum(len(encoded[i]) - start + n_nodes for i, start, _ in pool)
            waiting += sum({id(kv): start for _, start, kv in pool}.values())  # the cached prefixes kept alive
            if todo and waiting < budget:
                continue
            for batch in self._batches([len(encoded[i]) - start for i, start, _ in pool], n_nodes, not own):
                rows = [pool[b] for b in batch]
                yield [i for i, _, _ in rows], self._trie_forward([encoded[i][s:] for i, s, _ in rows], trie,
                                                                   [kv for _, _, kv in rows])  # fmt: skip
            pool.clear()

    def _levels(self, encoded, members, start: int) -> tuple[list[int], list[tuple[list[int], int]]]:
        """(leaves, [(run, shared end)]): the members past `start` as a radix tree would share them, keeping the
        levels that save at least `min_prefix` tokens. A run of n members sharing s more tokens saves (n - 1) x s
        (a pairwise prompt's first answer and the marker after it: 15 prompts of a group of 16 share them, however
        short the answer); one that saves less is split where its members part, and its sub-runs judged on the
        stretch from `start` (they save more: longer, if fewer). Every row keeps >= 1 token of its own."""
        order = sorted(members, key=lambda i: encoded[i][start:])  # every run below is a contiguous slice of it
        leaves, levels, todo = [], [], [(order, start)]  # (members sharing tokens start:depth, depth)
        while todo:
            part, depth = todo.pop()
            cut = [k for k in range(1, len(part)) if encoded[part[k - 1]][depth] != encoded[part[k]][depth]]
            for run in (part[a:b] for a, b in zip([0, *cut], [*cut, len(part)])):
                if len(run) <= 1:
                    leaves += run
                    continue
                shared = min(len(encoded[i]) for i in run) - 1  # every row keeps >= 1 token of its own
                first = encoded[run[0]]
                for i in run[1:]:
                    shared = min(shared, _common(first, encoded[i], shared))
                if shared > start and (len(run) - 1) * (shared - start) >= self.min_prefix:
                    levels.append((run, shared))
                elif shared > depth:  # parts further on: sub-runs save more per member
                    todo.append((run, shared))
                else:  # the shortest member ends here: it is a leaf; the others may still share more
                    ends = [i for i in run if len(encoded[i]) - 1 <= depth]
                    leaves += ends
                    todo.append(([i for i in run if len(encoded[i]) - 1 > depth], depth))
        return leaves, levels

    def _cache(self, prefix_kv, batch: int):
        """A transformers cache holding `prefix_kv` for `batch` rows (a view, no copy), or None."""
        if prefix_kv is None:
            return None
        from transformers import DynamicCache

        expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix_kv]
        return DynamicCache(ddp_cache_data=expanded, config=self.model.config)

    def _past(self, prefixes: list | None, batch: int):
        """(the past for a forward of rows on `prefixes`, each row's prefix length [B, 1], the mask columns of the
        past [B, P] or None): one prefix shared by all rows (or none) as it is, a view; different prefixes
        left-padded to the longest (`RowsPast`), each row seeing the last `length` columns only."""
        prefixes = prefixes or [None] * batch
        if all(kv is prefixes[0] for kv in prefixes):
            length = 0 if prefixes[0] is None else prefixes[0][0][0].shape[-2]
            seen = torch.ones(batch, length, dtype=torch.bool, device=self.device) if length else None
            return prefixes[0], torch.full((batch, 1), length, device=self.device), seen
        past = RowsPast(prefixes)
        lengths = torch.tensor(past.lengths, device=self.device)[:, None]
        return past, lengths, torch.arange(past.longest, device=self.device)[None] >= past.longest - lengths

    def _extend(self, stretches: list[list[int]], prefixes: list) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The KV cache of each stretch on its own prefix (one row each; `_past`), from one forward: the stretches
        are right-padded, which a causal model never attends to, and each row's cache is cut to its prefix and
        stretch."""
        past_kv, lengths, seen = self._past(prefixes, len(stretches))
        past, width = 0 if seen is None else seen.shape[1], max(map(len, stretches))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in stretches], device=self.device)
        mask = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()[None].expand(len(ids), -1, -1)
        if seen is not None:
            mask = torch.cat([seen[:, None].expand(-1, width, -1), mask], -1)
        mask = model_mask(mask[:, None], self.model)
        positions = lengths + torch.arange(width, device=self.device)[None]
        self.forward_tokens += int(ids.numel())
        if self._own_head() is not None:  # only the cache is wanted: the base model, no head
            _, layers = self._base(ids, positions, mask, past_kv, keep=True, start=width)  # no hidden rows read
        else:
            none = torch.arange(0, device=self.device)  # no logits: only the cache is wanted
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             cache=self._cache(past_kv, len(stretches)), logits_to_keep=none)  # fmt: skip
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        cuts = [(past - int(n), past + len(s)) for n, s in zip(lengths[:, 0], stretches)]
        return [[(k[r : r + 1, :, a:b], v[r : r + 1, :, a:b]) for k, v in layers] for r, (a, b) in enumerate(cuts)]

    def _base(self, ids, positions, mask, prefix_kv, keep: bool, start: int = 0):
        """(final hidden states of the rows from `start` on, the KV cache with these tokens if `keep`) of the base
        model: the lean forward (`decoder.lean_decoder`) where the model has one, else transformers'."""
        if self._lean is not None:
            return self._lean(ids, positions, mask, prefix_kv, keep, start)
        out = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=keep,
                                    cache=self._cache(prefix_kv, len(ids)))  # fmt: skip
        kv = [(layer.keys, layer.values) for layer in out.cache.layers] if keep else None
        return out.last_hidden_state[:, start:], kv

    def _trie_forward(self, rows: list[list[int]], trie: Trie, prefixes: list | None = None) -> torch.Tensor:
        """One forward of the rows (their tokens past their prefix: per row a cached KV of batch 1, or None; rows
        of different prefixes together, `_past`), then every trie node as one more token that attends to its row
        and to its own ancestors (a 4D mask). Returns, per row, the root (its last token) and each node: final
        hidden states [B, 1 + Q, d] if the head is ours (`_own_head`), else logits [B, 1 + Q, V]."""
        ids, pad = self._pad_left(rows)
        batch, width, n_nodes, dev = len(rows), ids.shape[1], len(trie.tokens), self.device
        prefix_kv, lengths, seen = self._past(prefixes, batch)
        valid = pad.bool()
        positions = torch.cat([(pad.cumsum(-1) - 1).clamp(min=0), pad.sum(-1, keepdim=True) + trie.depth[None]], -1)
        # Prompt rows: causal over the row's real tokens (a padding row sees itself: an empty row would be NaN).
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        prompt = (causal[None] & valid[:, None]) | torch.eye(width, dtype=torch.bool, device=dev)[None]
        prompt = torch.cat([prompt, torch.zeros(batch, width, n_nodes, dtype=torch.bool, device=dev)], -1)
        nodes = torch.cat([valid[:, None].expand(-1, n_nodes, -1), trie.ancestor[None].expand(batch, -1, -1)], -1)
        mask = torch.cat([prompt, nodes], 1)  # [B, T + Q, T + Q]
        if seen is not None:  # each row sees its own prefix's columns of the past
            mask = torch.cat([seen[:, None].expand(-1, width + n_nodes, -1), mask], -1)
        mask = model_mask(mask[:, None], self.model)
        ids, positions = torch.cat([ids, trie.tokens[None].expand(batch, -1)], -1), lengths + positions
        self.forward_tokens += batch * width  # prompt tokens, padding included (not the label step)
        if self._own_head() is not None:
            return self._base(ids, positions, mask, prefix_kv, keep=False, start=width - 1)[0]
        keep = torch.arange(width - 1, width + n_nodes, device=dev)  # the root (last row token), then the nodes
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                          cache=self._cache(prefix_kv, batch), logits_to_keep=keep).logits  # fmt: skip

    def _read(self, outs: list[torch.Tensor], trie: Trie) -> list[torch.Tensor]:
        """log P(label) [B, L] of `_trie_forward` outputs (concatenated), as a list of row chunks
        (`labels.read_labels`): through our head a vocabulary slice at a time on a CPU, in chunks of up to 2048
        rows; else whole logits rows, within `max_logits` values at once."""
        if not outs:
            return []
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        head, cuda = self._own_head(), self.device.type == "cuda"
        sliced = head is not None and not cuda
        most = 2048 if sliced else (self.max_logits if cuda else min(self.max_logits, 2**22)) // self._vocab()
        ends = self._ends()
        return read_labels(out, trie, ends, self._end_ids, head, sliced, max(1, most // out.shape[1]))

    def _trie_logprobs(self, rows: list[list[int]], label_ids: tuple[tuple[int, ...], ...]) -> list[list[float]]:
        """Label log-probs of each row, from one forward (`_trie_forward`, no cache) and its head, before the next
        forward (a sharded judge keeps its forwards in step this way)."""
        trie = self._trie(label_ids)
        return torch.cat(self._read([self._trie_forward(rows, trie)], trie)).tolist()

    # -- generation (rationale mode) --------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]
    ) -> list[tuple[str, float, int]]:
        encoded = encode(self.tokenizer, prompts)
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
