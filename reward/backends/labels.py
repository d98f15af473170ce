"""A label set's token trie, and label log-probabilities read from the rows a forward gives for it.

The labels of a scale form a token trie (on digit-split tokenizers "47" is "4" -> "7"). `HFBackend` feeds every
node as one more token after a prompt; the root row (the prompt's last token) and each node's row then give
P(next token | prompt, path). log P(label) = its first token at the root + each later token at its path + the
end-token mass at its last node (tokens whose text does not start with a letter or a digit), each against its
row's normaliser: no [rows, nodes, vocabulary] log-softmax, only the label columns and two sums per row."""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch

# exp's argument is clamped here: a token 80 nats below the row's reference adds e^-80 (~1e-35) of its mass, and
# below -87 (fp32 underflow) a CPU's exp takes a slow path, ~100x: the embedded judge's 1-100 rows with their logits
# scaled 4x read in 0.99 s unclamped, 0.33 s clamped (0.32 s unscaled; 2026-12-02, one thread).
_FLOOR = -80.0
# Rows whose end mass is below e^-46 of their normaliser are read again exactly: the floor adds at most 49k x e^-80
# (~1e-30) of the row's reference to a sum, 1e-10 of an end mass at e^-46, more than 1e-7 of one below ~e^-62.
_DEEP = -46.0


class Trie(NamedTuple):
    """A label set's token trie on the device: node q is the path of tokens ending with `tokens[q]`."""

    tokens: torch.Tensor  # [Q] each node's own (last) token
    depth: torch.Tensor  # [Q] its depth, 0 for a label's first token
    ancestor: torch.Tensor  # [Q, Q] bool: node q may attend to node r (a prefix of q, or q itself)
    first: torch.Tensor  # [L] each label's first token (read at the root)
    last: torch.Tensor  # [L] the node where each label ends
    steps: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (label, node, token) of every later token
    picks: tuple[torch.Tensor, torch.Tensor]  # (row, token) of each label logit: row 0 (root) x first, 1 + node
    pick_order: tuple[list[int], list[int]]  # picks in token order: their indices, their tokens (for slices)


def build_trie(label_ids: tuple[tuple[int, ...], ...], device) -> Trie:
    """The trie of labels given as token ids, as tensors on `device`."""
    nodes = sorted({ids[:k] for ids in label_ids for k in range(1, len(ids) + 1)}, key=lambda p: (len(p), p))
    index = {path: q for q, path in enumerate(nodes)}
    # ancestor[q, r]: node q may attend to node r (r is a prefix of q, q itself included). Built on the CPU and
    # copied once: one small write per entry would be one kernel launch each on a GPU.
    ancestor = torch.zeros(len(nodes), len(nodes), dtype=torch.bool)
    for path, q in index.items():
        for k in range(1, len(path) + 1):
            ancestor[q, index[path[:k]]] = True
    steps = [(j, index[ids[:k]], ids[k]) for j, ids in enumerate(label_ids) for k in range(1, len(ids))]
    picks = [(0, ids[0]) for ids in label_ids] + [(1 + node, token) for _, node, token in steps]
    order = sorted(range(len(picks)), key=lambda p: picks[p][1])
    return Trie(
        tokens=torch.tensor([p[-1] for p in nodes], device=device),
        depth=torch.tensor([len(p) - 1 for p in nodes], device=device),
        ancestor=ancestor.to(device),
        first=torch.tensor([ids[0] for ids in label_ids], device=device),
        last=torch.tensor([index[ids] for ids in label_ids], device=device),
        steps=tuple(torch.tensor(c, device=device) for c in zip(*steps)) if steps else None,
        picks=tuple(torch.tensor(c, device=device) for c in zip(*picks)),
        pick_order=(order, [picks[p][1] for p in order]),
    )


def end_tokens(tokenizer, vocab: int) -> torch.Tensor:
    """[vocab] bool: True at the tokens that end a label (their text does not start with a letter or a digit)."""
    texts = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    mask = torch.ones(vocab, dtype=torch.bool)
    for i, tok in enumerate(texts):
        text = tokenizer.convert_tokens_to_string([tok]) if tok is not None else ""
        if text[:1].isalnum():
            mask[i] = False
    return mask


def read_labels(
    out: torch.Tensor,
    trie: Trie,
    ends: torch.Tensor,
    end_ids: torch.Tensor,
    head=None,
    sliced: bool = False,
    items_per_chunk: int = 1,
) -> list[torch.Tensor]:
    """log P(label) [B, L] of a forward's rows [B, 1 + Q, ...] (the root, then each node), a list of item chunks.

    Args:
        out: final hidden states [B, 1 + Q, d] if `head` is given, else logits [B, 1 + Q, V].
        trie: the label set's trie.
        ends: [V] float, 1.0 at the end tokens (`end_tokens`); end_ids: their indices.
        head: the model's output layer (`torch.nn.Linear`) if `out` holds hidden states.
        sliced: apply `head` a vocabulary slice at a time (`_sliced`: for a CPU's cache), not to whole rows.
        items_per_chunk: items read at once (bounds the [rows, V] logits held).

    Rows outside the fast pass's range (an end mass below e^-46 of the row's normaliser, a logit 88 nats above the
    reference) are read again from their exact log-sum-exp."""
    n_rows, n_labels, last = out.shape[1], len(trie.first), 1 + trie.last
    lps = []
    for part in out.split(items_per_chunk):
        flat = part.reshape(-1, part.shape[-1])  # [k (1 + Q), d or V]
        if head is not None and sliced:
            norm, end, picked = _sliced(flat, head, len(part), n_rows, trie, ends)
        else:
            norm, end, picked = _whole(_fresh(flat, head), len(part), n_rows, trie, ends)
        redo = ~(end - norm > _DEEP)  # (NaN and inf compare False: redone)
        redo[:, 0] = ~torch.isfinite(norm[:, 0])  # (the root's own end mass is not used)
        if redo.any():
            exact = _fresh(part[redo], head)
            norm[redo], end[redo] = exact.logsumexp(-1), exact.index_select(-1, end_ids).logsumexp(-1)
        # log P(label) = root's first token + each later token given its path + the end; summed as tensors and read
        # back once (a read per label would wait on the GPU each time).
        lp = picked[:, :n_labels] - norm[:, :1] + end[:, last] - norm[:, last]
        if trie.steps is not None:
            label, node, _ = trie.steps
            lp = lp.index_add(1, label, picked[:, n_labels:] - norm[:, 1 + node])
        lps.append(lp)
    return lps


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, or as is if wider: an fp64 judge (the exactness check of `bench/bench_rubric.py`) reads in fp64.
    (The result itself, no copy, when x is fp32 or fp64 already.)"""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _fresh(rows: torch.Tensor, head=None) -> torch.Tensor:
    """Logits of rows (hidden states through `head`, or logits; fp32 or wider: `_wide`) the caller may overwrite."""
    if head is not None:
        return _wide(head(rows))
    return _wide(rows) if rows.dtype not in (torch.float32, torch.float64) else rows.clone()


def _whole(logits: torch.Tensor, k: int, n_rows: int, trie: Trie, ends: torch.Tensor):
    """(log-normaliser [k, R], log end mass [k, R], label logits [k, P]) of fresh logits [k R, V] (overwritten)."""
    grid = logits.view(k, n_rows, -1)
    picked = grid[:, trie.picks[0], trie.picks[1]]  # read before the exp pass overwrites them
    top = logits.amax(-1, keepdim=True)
    mass = logits.sub_(top).clamp_(min=_FLOOR).exp_()
    norm = (top[:, 0] + mass.sum(-1).log()).view(k, n_rows)
    # (A product and a sum, not a matrix-vector product as `_sliced`: on a GPU a float32 matmul may run in TF32
    # where a trainer allows it, 1e-3 off.)
    end = (top[:, 0] + mass.mul_(ends).sum(-1).log()).view(k, n_rows)
    return norm, end, picked


def _sliced(hidden: torch.Tensor, head, k: int, n_rows: int, trie: Trie, ends: torch.Tensor):
    """`_whole` from hidden states [k R, d], the head applied to ~128K logits at a time (half a core's L2): each
    slice's logits stay in the core's cache through their exp pass, where a whole [rows, V] block would go to
    memory and back once per pass.

    Every slice is taken relative to the first slice's best logit per row (no running max: its extra passes cost a
    fifth of the 1-100 read, `bench/bench_host.py`); a row with a logit 88 nats above that overflows to inf, which
    `read_labels` sees and reads again."""
    weight, bias = head.weight, head.bias
    vocab = weight.shape[0]
    width = min(vocab, max(256, 2**17 // hidden.shape[0]))
    total = torch.zeros(hidden.shape[0], dtype=_wide(hidden[:0]).dtype, device=hidden.device)
    end, ref = torch.zeros_like(total), None
    picked = torch.empty(k, len(trie.picks[1]), dtype=total.dtype, device=hidden.device)
    order, sorted_tokens = trie.pick_order
    for start in range(0, vocab, width):
        stop = min(start + width, vocab)
        logits = torch.nn.functional.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])
        logits = _wide(logits)
        a, b = bisect.bisect_left(sorted_tokens, start), bisect.bisect_left(sorted_tokens, stop)
        if b > a:  # label logits in this slice: read before the exp pass overwrites them
            at = order[a:b]
            picked[:, at] = logits.view(k, n_rows, -1)[:, trie.picks[0][at], trie.picks[1][at] - start]
        if ref is None:
            ref = logits.amax(-1, keepdim=True)
        mass = logits.sub_(ref).clamp_(min=_FLOOR).exp_()
        total += mass.sum(-1)
        end += mass.mul_(ends[start:stop]).sum(-1)
    return (ref[:, 0] + total.log()).view(k, n_rows), (ref[:, 0] + end.log()).view(k, n_rows), picked
