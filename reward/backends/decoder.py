"""A lean forward through a Llama decoder: the model's own modules, without transformers' per-call bookkeeping.

A transformers forward costs ~0.25 ms of Python per call besides its arithmetic (keyword decorators, output
capturing, mask building, a cache object per call): most of a forward of a 1-layer model on a CPU, and on a GPU
host time during which the kernels wait. `lean_decoder` runs the same modules in the same order (embedding; per
layer: norm, q/k/v, rotary, attention over the past, o, norm, MLP; final norm) on the mask, positions and past
keys/values the backend built, so nothing is re-derived per call. It is used only for an architecture it knows and
only if a probe forward through it equals transformers' bit for bit; anything else keeps transformers' forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, kv heads, tokens, head dim]
_KNOWN = ("llama",)  # decoders whose forward is exactly the loop below (Mistral/Qwen2: sliding windows, not here)


class RowsPast:
    """The past of rows that each have a prefix of their own (a KV of batch 1, or None), as the decoders take it
    (`past[i]`: layer i's keys and values [B, kv heads, P, head dim]), each row's left-padded with zeros to the
    longest, P: the caller masks the padding out. A layer is built when asked for, so one layer's padded copy is
    held at a time, not the whole model's."""

    def __init__(self, rows: list[KV | None]):
        self.lengths = [0 if kv is None else kv[0][0].shape[-2] for kv in rows]
        self.groups: dict[int, tuple[KV, list[int]]] = {}  # rows that share one prefix: copied together
        for r, kv in enumerate(rows):
            if kv is not None:
                self.groups.setdefault(id(kv), (kv, []))[1].append(r)
        self.rows, self.longest = len(rows), max(self.lengths)

    def __len__(self) -> int:
        return len(next(iter(self.groups.values()))[0])

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= layer < len(self):
            raise IndexError(layer)  # (ends iteration)
        out = []
        for t in (0, 1):  # keys, values; zeros where padded (masked, yet a NaN there would survive a 0 weight)
            like = next(iter(self.groups.values()))[0][layer][t]
            full = like.new_zeros(self.rows, like.shape[1], self.longest, like.shape[3])
            for kv, members in self.groups.values():
                part = kv[layer][t]
                full[members, :, self.longest - part.shape[-2] :] = part
            out.append(full)
        return out[0], out[1]


def model_mask(mask: torch.Tensor, model) -> torch.Tensor:
    """A boolean attention mask [B, 1, T, S] (True: may attend) in the form the model's attention takes: as is for
    sdpa, added to the scores (0 or the dtype's min) for eager attention."""
    if model.config._attn_implementation != "eager":
        return mask
    additive = torch.zeros(mask.shape, dtype=model.dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(model.dtype).min)


def lean_decoder(model) -> Callable | None:
    """`forward(ids, positions, mask, past, keep) -> (hidden, kv)` for `model`'s decoder, or None.

    ids, positions: [B, T]; mask: `model_mask` of [B, 1, T, P + T] (always given: eager attention reads no causality
    of its own), P the tokens in `past` (a KV of batch 1 or B, or None); hidden: the final normalised hidden states
    [B, T - start, d] (the rows from `start` on: the last layer runs its queries, o projection and MLP for those
    only, which on a 1-layer judge is most of a forward); kv: past plus these tokens if `keep`, else None.
    """
    base = getattr(model, "model", None)
    if model.config.model_type not in _KNOWN or base is None or getattr(model.config, "sliding_window", None):
        return None
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

    attention = ALL_ATTENTION_FUNCTIONS.get_interface(model.config._attn_implementation, eager_attention_forward)
    layers = list(base.layers[: model.config.num_hidden_layers])

    def forward(ids, positions, mask, past: KV | None, keep: bool, start: int = 0):
        hidden = base.embed_tokens(ids)
        cos, sin = base.rotary_emb(hidden, positions)
        kv = []
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            heads = (*ids.shape, -1, attn.head_dim)
            q = attn.q_proj(x).view(heads).transpose(1, 2)
            k = attn.k_proj(x).view(heads).transpose(1, 2)
            v = attn.v_proj(x).view(heads).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if past is not None:
                pk, pv = past[i]
                k = torch.cat([pk.expand(len(ids), -1, -1, -1), k], -2)
                v = torch.cat([pv.expand(len(ids), -1, -1, -1), v], -2)
            if keep:
                kv.append((k, v))
            if start and i == len(layers) - 1:  # only rows `start:` are read: the last layer's queries, o and MLP
                q, mask, hidden = q[:, :, start:], mask[:, :, start:], hidden[:, start:]
                if not q.shape[2]:  # none (only the KV cache is wanted)
                    break
            out, _ = attention(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(*hidden.shape[:-1], -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return base.norm(hidden), (kv if keep else None)

    return forward if _probe(model, forward) else None


def _probe(model, forward) -> bool:
    """The lean forward equals transformers' bit for bit on a small past, a batch of 2 and a ragged 4D mask."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    ids = torch.arange(10, device=dev).remainder(vocab)
    prefix, rows = ids[None, :4], ids[4:].view(2, 3)
    mask = torch.ones(2, 1, 3, 7, dtype=torch.bool, device=dev).tril(4)
    mask[1, :, 1:, 4] = False  # a row that skips one of its own tokens, like a trie node its cousins
    positions = torch.arange(4, 7, device=dev)[None].expand(2, -1)
    with torch.inference_mode():
        first = model.model(input_ids=prefix, use_cache=True)
        past = [(layer.keys, layer.values) for layer in first.cache.layers]
        cache = DynamicCache(ddp_cache_data=[(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in past],
                             config=model.config)  # fmt: skip
        want = model.model(input_ids=rows, attention_mask=model_mask(mask, model), position_ids=positions,
                           cache=cache).last_hidden_state  # fmt: skip
        causal = model_mask(torch.ones(1, 1, 4, 4, dtype=torch.bool, device=dev).tril(), model)
        lean_prefix, lean_kv = forward(prefix, torch.arange(4, device=dev)[None], causal, None, True)
        got, _ = forward(rows, positions, model_mask(mask, model), lean_kv, False)
    return torch.equal(lean_prefix, first.last_hidden_state) and torch.equal(got, want)
