"""`trustreward train-rm`: a reward model trained on (judge-cleaned) preferences, hard or soft Bradley-Terry.

Soft targets: with p = P(a beats b) from the judge's merged bidirectional probabilities (ties count half), the
loss is -[p log sigmoid(d) + (1 - p) log sigmoid(-d)] with d = r(a) - r(b), so a 0.55 preference does not pull
as hard as a 0.99 one. At p = 1 it is TRL's Bradley-Terry loss. TRL's `RewardTrainer` does the rest (tokenising,
LoRA, logging); `SoftRewardTrainer` only swaps the loss. With `--judge`, rows that have no probabilities yet
(TRL `chosen, rejected` rows too) are judged in both orders first (`judge_unjudged`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import torch
import torch.nn.functional as F
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from reward.consistency import BadRow, parse_row
from reward.text import text_key

logger = logging.getLogger(__name__)

LOSSES = ("hard", "soft")
LORA = ("auto", "on", "off")
LORA_AUTO_PARAMS = 100_000_000  # "auto" uses LoRA above this many parameters


def soft_bt_loss(d: torch.Tensor, p: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Mean soft Bradley-Terry loss -[p log sigmoid(d - m) + (1 - p) log sigmoid(m - d)].

    ```python
    >>> import torch
    >>> round(soft_bt_loss(torch.tensor([2.0]), torch.tensor([1.0])).item(), 4)  # = -log sigmoid(2)
    0.1269

    ```
    """
    if margin is not None:
        d = d - margin
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()


class TargetCollator(DataCollatorForPreference):
    """TRL's preference collator, plus each pair's soft target `target` = P(chosen beats rejected)."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if "target" in examples[0]:
            out["target"] = torch.tensor([e["target"] for e in examples], dtype=torch.float)
        return out


class SoftRewardTrainer(RewardTrainer):
    """`RewardTrainer` whose loss uses the soft targets (`loss="soft"`); `loss="hard"` is TRL's own loss."""

    def __init__(self, *args, loss: str = "soft", **kwargs):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_type = loss
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "target" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "target"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        target = inputs.pop("target", None)
        # TRL's forward, loss and metrics (accuracy, margin, rewards); only the loss is replaced below.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.loss_type == "soft" and target is not None:
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_bt_loss(chosen - rejected, target.to(chosen.dtype), inputs.get("margin"))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def preference_pairs(rows, loss: str = "soft", margin_scale: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Training pairs from preference rows; every unusable row is rejected with its reason.

    Rows: TRL preference (`prompt, chosen, rejected`: target 1), pairwise (`response_a, response_b` with
    `p_a, p_b, p_tie`: target p_a + p_tie / 2, else `label` / `verdict`: 1, 0 or 0.5), multi-response
    (`responses` with `scores` / `ranks`: every pair). The hard loss needs a winner: a pair is oriented so the
    preferred response is `chosen`, and ties are rejected. `margin_scale` > 0 adds TRL's margin,
    margin_scale x (score_chosen - score_rejected), from `score_a, score_b` (rows without both get 0).

    Returns:
        `(pairs, rejects)`: pairs `{"prompt", "chosen", "rejected", "target", "label", "judge_p", "row"}`
        (`label`: the row's hard label, +1 / 0 / -1 for chosen, `None` without one; `judge_p`: the judge's
        P(chosen wins) when the row has probabilities; `"margin"` too when asked), rejects
        `{"row_index", "reason", "row"}`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    pairs, rejects = [], []
    for r, row in enumerate(rows):
        try:
            pairs += _row_pairs(row, r, loss, margin_scale)
        except BadRow as exc:
            rejects.append({"row_index": r, "reason": str(exc), "row": row})
    if any(not isinstance(p["prompt"], str) or not isinstance(p["chosen"], str) for p in pairs):
        for p in pairs:  # one dataset, one format: conversational throughout
            p["prompt"] = [{"role": "user", "content": p["prompt"]}] if isinstance(p["prompt"], str) else p["prompt"]
            for k in ("chosen", "rejected"):
                p[k] = [{"role": "assistant", "content": p[k]}] if isinstance(p[k], str) else p[k]
    return pairs, rejects


def _row_pairs(row, r: int, loss: str, margin_scale: float) -> list[dict]:
    parsed = parse_row(row)
    if not parsed.pairs:
        raise BadRow("a pointwise row (response, score) has no pair to learn from")
    hard_label = row.get("label", row.get("verdict")) is not None or "chosen" in row or "responses" in row
    out = []
    for i, j, relation, _, _, _ in parsed.pairs:
        a, b, sa, sb = parsed.responses[i], parsed.responses[j], parsed.scores[i], parsed.scores[j]
        if text_key(a) == text_key(b):
            raise BadRow("chosen and rejected are the same text")
        if row.get("p_a") is not None:  # validated by parse_row: finite, >= 0, summing to 1
            target = min(1.0, max(0.0, row["p_a"] + 0.5 * row["p_tie"]))
        else:
            target = 0.5 + 0.5 * relation
        label = relation if hard_label else None
        judge_p = None if row.get("p_a") is None else target  # the judge's P(chosen wins), for evaluation
        if loss == "hard":
            if target == 0.5:
                raise BadRow("a tie: the hard loss needs a winner")
            if target < 0.5:
                a, b, sa, sb, label = b, a, sb, sa, None if label is None else -label
                judge_p = None if judge_p is None else 1 - judge_p
            target = 1.0
        pair = {"prompt": parsed.prompt, "chosen": a, "rejected": b, "target": float(target), "label": label}
        pair |= {"judge_p": judge_p, "row": r}
        if margin_scale > 0:
            pair["margin"] = margin_scale * (sa - sb) if sa is not None and sb is not None else 0.0
        out.append(pair)
    return out


def _sequence_text(tokenizer, prompt, response) -> str:
    """The text TRL's RewardTrainer scores: the chat template over prompt + response, or prompt + response + EOS."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + response, tokenize=False)
    text = prompt + response
    return text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token


@torch.no_grad()
def reward_scores(model, tokenizer, prompts, responses, batch_size: int = 8) -> list[float]:
    """The reward model's scalar for each (prompt, response), tokenised as in training."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [_sequence_text(tokenizer, p, r) for p, r in zip(prompts[start : start + batch_size],
                                                                 responses[start : start + batch_size])]  # fmt: skip
        batch = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
        out += model(**batch.to(device)).logits[:, 0].float().tolist()
    return out


def pair_metrics(diffs: list[float], pairs: list[dict], bins: int = 10) -> dict:
    """Held-out metrics from d = r(chosen) - r(rejected).

    `accuracy_labels`: sign(d) agrees with the row's label (ties left out); `accuracy_judge`: sign(d) agrees
    with the judge's p - 0.5; `ece`: expected calibration error of sigmoid(d) against the judge's p (10 bins).
    Each is `None` when no pair has what it needs; `n_*` count the pairs behind it.
    """
    labelled = [(d, p["label"]) for d, p in zip(diffs, pairs) if p["label"] in (1, -1)]
    judged = [(d, p["judge_p"]) for d, p in zip(diffs, pairs) if p["judge_p"] is not None]
    decided = [(d, q) for d, q in judged if q != 0.5]
    probs = [(0.5 * (1 + math.tanh(d / 2)), q) for d, q in judged]  # sigmoid, without overflow
    ece = 0.0
    for b in range(bins):
        inside = [(s, q) for s, q in probs if min(int(s * bins), bins - 1) == b]
        if inside:
            ece += len(inside) / len(probs) * abs(fmean(s for s, _ in inside) - fmean(q for _, q in inside))
    return {
        "accuracy_labels": sum((d > 0) == (y > 0) for d, y in labelled) / len(labelled) if labelled else None,
        "accuracy_judge": sum((d > 0) == (q > 0.5) for d, q in decided) / len(decided) if decided else None,
        "ece": ece if judged else None,
        "n_labelled": len(labelled),
        "n_judged": len(judged),
    }


@dataclass
class RMArguments:
    """Data and loss: the part of a reward-model recipe that TRL's `RewardConfig` and `ModelConfig` lack."""

    train_file: str = field(metadata={"help": "Preference rows: JSONL, Parquet or a save_to_disk directory."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out rows (default: a split of train)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Rows held out when there is no eval_file."})
    loss: str = field(default="soft", metadata={"help": "soft (judge probabilities as targets) | hard (TRL's BT)."})
    margin_scale: float = field(default=0.0, metadata={"help": "> 0: margin = scale x (score_a - score_b)."})
    lora: str = field(default="auto", metadata={"help": "auto (LoRA above 100M parameters) | on | off."})
    rejects: str | None = field(default=None, metadata={"help": "JSONL of the rows rejected, with reasons."})
    split: str | None = field(default=None, metadata={"help": "Split of a saved DatasetDict."})

    def __post_init__(self):
        if isinstance(self.lora, bool):  # YAML reads a bare on / off as a boolean
            self.lora = "on" if self.lora else "off"
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lora not in LORA:
            raise ValueError(f"lora must be one of {LORA}, got {self.lora!r}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def judge_unjudged(rows, judge) -> tuple[list[dict], int, int]:
    """Rows of two responses without the judge's probabilities, judged in both orders (`p_a, p_b, p_tie` added).

    TRL `prompt, chosen, rejected` rows become `response_a, response_b` rows with `label: "a"` (the row's own
    label stays for evaluation; the soft target comes from the judge). Other rows, and rows the judge failed on,
    are returned as they were. Returns `(rows, judged, failed)`.
    """
    from .judge_file import judge_rows

    rows, todo = [dict(r) for r in rows], []
    for i, row in enumerate(rows):
        if row.get("p_a") is not None:
            continue
        if row.get("prompt") is not None and "chosen" in row and "rejected" in row and "response_a" not in row:
            todo.append(i)
        elif "response_a" in row and "response_b" in row:
            todo.append(i)
    asked = [rows[i] if "response_a" in rows[i] else rows[i] | {"response_a": rows[i]["chosen"],
             "response_b": rows[i]["rejected"]} for i in todo]  # fmt: skip
    failed = 0
    for i, row, fields in zip(todo, asked, judge_rows(judge, "compare", asked, {}) if asked else []):
        if fields["judge_error"] is not None:
            failed += 1
            continue
        if "chosen" in row:  # now a pairwise row whose label is the chosen response's win
            row = {k: v for k, v in row.items() if k not in ("chosen", "rejected")} | {"label": "a"}
        rows[i] = row | {k: fields[k] for k in ("p_a", "p_b", "p_tie")}
    return rows, len(todo) - failed, failed


def _load_pairs(path, args: RMArguments, what: str, judge=None) -> list[dict]:
    from .files import read_rows, write_jsonl

    if not Path(path).exists():
        raise SystemExit(
            f"train-rm: {what} file {path} does not exist. Judged preference rows come from `trustreward compare` "
            "(pairs judged in both orders), cleaned by `trustreward clean`; see recipes/rm/README.md."
        )
    rows, _ = read_rows(path, args.split)
    if judge is not None:
        rows, judged, failed = judge_unjudged(rows, judge)
        print(f"train-rm: {what} {path}: the judge labelled {judged} rows ({failed} failed)", file=sys.stderr)
    pairs, rejects = preference_pairs(rows, args.loss, args.margin_scale)
    reasons = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    print(f"train-rm: {what} {path}: {len(rows)} rows -> {len(pairs)} pairs; {len(rejects)} rows rejected {reasons}",
          file=sys.stderr)  # fmt: skip
    if args.rejects and rejects:
        write_jsonl(Path(args.rejects).with_suffix(f".{what}.jsonl") if what == "eval" else args.rejects, rejects)
    if not pairs:
        raise SystemExit(f"train-rm: {path}: no usable preference rows ({len(rejects)} rejected: {reasons})")
    return pairs


def main(argv: list[str] | None = None) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import ModelConfig, RewardConfig, TrlParser

    from reward.embedded import embedded_judge_path

    from .judge_args import JudgeArguments
    from .monitor import require_wandb

    parser = TrlParser((RMArguments, JudgeArguments, RewardConfig, ModelConfig))
    args, judge_args, config, model_args = parser.parse_args_and_config(args=argv)
    require_wandb(config.report_to)
    judge = judge_args.load(default=None)  # only when asked: rows without probabilities then get the judge's
    pairs = _load_pairs(args.train_file, args, "train", judge)
    if args.eval_file:
        train, held_out = pairs, _load_pairs(args.eval_file, args, "eval", judge)
    else:  # hold out whole rows (a multi-response row's pairs stay together), deterministically
        rows = sorted({p["row"] for p in pairs})
        random.Random(config.seed).shuffle(rows)
        eval_rows = set(rows[: round(len(rows) * args.eval_fraction)])
        train = [p for p in pairs if p["row"] not in eval_rows]
        held_out = [p for p in pairs if p["row"] in eval_rows]
        if not train:
            raise SystemExit("train-rm: every usable row was held out; lower eval_fraction")

    path = model_args.model_name_or_path or "embedded"
    path = str(embedded_judge_path()) if path == "embedded" else path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else None
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    use_lora = args.lora == "on" or (args.lora == "auto" and n_params > LORA_AUTO_PARAMS)
    peft_config = None
    if use_lora:  # SEQ_CLS: PEFT also trains and saves the new score head
        peft_config = LoraConfig(
            task_type="SEQ_CLS", r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout, target_modules=model_args.lora_target_modules or "all-linear",
        )  # fmt: skip
    columns = ["prompt", "chosen", "rejected", "target"] + (["margin"] if args.margin_scale > 0 else [])
    trainer = SoftRewardTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in train]),
        processing_class=tokenizer,
        peft_config=peft_config,
        data_collator=TargetCollator(pad_token_id=tokenizer.pad_token_id),
        loss=args.loss,
    )
    trainer.train()

    out = Path(config.output_dir)
    model = trainer.model
    if use_lora:  # the adapter for PEFT users, and the merged model for `reward_funcs="path"`
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    metrics = {"pairs_train": len(train), "pairs_eval": len(held_out), "lora": use_lora, "parameters": n_params}
    if held_out:
        chosen = reward_scores(model, tokenizer, [p["prompt"] for p in held_out], [p["chosen"] for p in held_out])
        rejected = reward_scores(model, tokenizer, [p["prompt"] for p in held_out], [p["rejected"] for p in held_out])
        metrics |= pair_metrics([c - r for c, r in zip(chosen, rejected)], held_out)
    trainer.log({f"eval_rm/{k}": float(v) for k, v in metrics.items() if v is not None})  # reaches W&B when on
    (out / "rm_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(rm_summary(metrics, out), flush=True)
    return metrics


def rm_summary(metrics: dict, out: Path) -> str:
    """The end of a `train-rm` run in a few lines: data, held-out accuracy and calibration, where the model went.

    Example:
        >>> print(rm_summary({"pairs_train": 120, "pairs_eval": 15, "lora": True, "parameters": 134515008,
        ...                   "accuracy_labels": 0.6, "n_labelled": 15, "ece": 0.1}, Path("runs/rm")))
        trustreward train-rm: 120 training pairs, 15 held out (LoRA on a 134.5M-parameter model)
          accuracy vs the held-out labels: 0.600 (15 pairs)
          calibration error (ECE vs the judge's p): 0.100
          model: runs/rm (merged), adapter: runs/rm/adapter; metrics: runs/rm/rm_eval.json
    """
    lora = "LoRA on" if metrics["lora"] else "full fine-tuning of"
    lines = [f"trustreward train-rm: {metrics['pairs_train']} training pairs, {metrics['pairs_eval']} held out "
             f"({lora} a {metrics['parameters'] / 1e6:.1f}M-parameter model)"]  # fmt: skip
    if metrics.get("accuracy_labels") is not None:
        lines.append(
            f"  accuracy vs the held-out labels: {metrics['accuracy_labels']:.3f} ({metrics['n_labelled']} pairs)"
        )
    if metrics.get("accuracy_judge") is not None:
        lines.append(f"  accuracy vs the judge: {metrics['accuracy_judge']:.3f} ({metrics['n_judged']} pairs)")
    if metrics.get("ece") is not None:
        lines.append(f"  calibration error (ECE vs the judge's p): {metrics['ece']:.3f}")
    where = f"{out} (merged), adapter: {out / 'adapter'}" if metrics["lora"] else str(out)
    lines.append(f"  model: {where}; metrics: {out / 'rm_eval.json'}")
    return "\n".join(lines)
