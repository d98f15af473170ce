"""Reward models from the embedded judge's preferences: raw vs cleaned data, hard vs soft targets.

1. Preferences: for each MT-Bench question with a GPT-4 reference, 4 answers of known relative quality
   (`trainers.mt_bench.mt_bench_candidates`: the reference beats its first third, an off-topic answer and a word
   shuffle); every pair judged in both orders by the embedded judge (`Judge.compare`), the order of a and b
   randomised. Written to runs/rm/judged.jsonl (the `trustreward compare` format).
2. Held out: the pairs of 20% of the questions (runs/rm/eval.jsonl); the rest is `raw`, and `clean` is raw after
   `trustreward clean --policy equivalence min-feedback` (runs/rm/{raw,clean}.jsonl).
3. Four reward models (SmolLM2-135M + LoRA, the same seed and step budget): raw / clean x hard / soft.
4. Each scored on the same held-out pairs: accuracy against the known quality order (reference vs the others),
   accuracy against the judge's verdicts, calibration (ECE of sigmoid(d) against the judge's p).

    python bench/bench_rm.py                  # everything (~20-30 min on 2 CPU cores)
    python bench/bench_rm.py --prepare-only   # steps 1-2: the data the CPU recipe trains on
    python bench/bench_rm.py --quick          # CI: 3 questions, 1 step per model, in runs/rm-quick; fails when a
                                              # model's held-out metrics are missing (never on times or accuracy)
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

from reward import load_judge
from reward.consistency import clean_dataset
from trainers.files import read_jsonl, write_jsonl
from trainers.mt_bench import mt_bench_candidates

OUT = Path("runs/rm")


def judge_pairs(max_words: int, seed: int = 0, questions: int | None = None) -> None:
    """Step 1 (slow, cached in runs/rm/judged.jsonl): every pair of each question's answers, judged both ways."""
    rng = random.Random(seed)
    rows = []
    for q, group in enumerate(mt_bench_candidates(seed, max_words=max_words)[:questions]):
        for x, y in itertools.combinations(group["answers"], 2):
            if rng.random() < 0.5:
                x, y = y, x
            truth = "a" if x == "reference" else "b" if y == "reference" else None
            rows.append({"question_id": q, "prompt": group["question"], "category": group["category"], "kind_a": x,
                         "kind_b": y, "response_a": group["answers"][x], "response_b": group["answers"][y],
                         "truth": truth})  # fmt: skip
    judge = load_judge("embedded", max_length=1024)
    start = time.perf_counter()
    prefs = judge.compare(
        [r["prompt"] for r in rows], [r["response_a"] for r in rows], [r["response_b"] for r in rows]
    )
    print(f"judged {len(rows)} pairs in both orders in {time.perf_counter() - start:.0f} s")
    for row, p in zip(rows, prefs):
        row |= {"p_a": p.p_a, "p_b": p.p_b, "p_tie": p.p_tie, "order_consistent": p.order_consistent,
                "judge_verdict": p.verdict, "judge_error": p.error}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "judged.jsonl", [r for r in rows if r["judge_error"] is None])


def split(seed: int = 0) -> None:
    """Step 2: held-out questions (their known order as the only label), raw training rows, cleaned ones."""
    rows = read_jsonl(OUT / "judged.jsonl")
    questions = sorted({r["question_id"] for r in rows})
    held = set(random.Random(seed).sample(questions, max(1, len(questions) // 5)))
    # Held-out rows: the known truth is their label (for accuracy), the judge's p their soft target.
    write_jsonl(OUT / "eval.jsonl", [{**r, "label": r["truth"]} if r["truth"] else r for r in rows
                                     if r["question_id"] in held])  # fmt: skip
    train = [r for r in rows if r["question_id"] not in held]  # no label: the judge's probabilities only
    write_jsonl(OUT / "raw.jsonl", train)
    kept, _, report = clean_dataset(train, ["equivalence", "min-feedback"], progress=False)
    write_jsonl(OUT / "clean.jsonl", kept)
    print(f"raw {len(train)} pairs; clean {len(kept)} ({report['rejected_by_reason']}); eval {len(rows) - len(train)}")
    known = [r for r in rows if r["question_id"] in held and r["truth"]]
    agree = sum(r["judge_verdict"] == r["truth"] for r in known) / max(1, len(known))
    print(f"the judge's own verdicts agree with the known order on {agree:.2f} of the {len(known)} held-out pairs")


def evaluate(model_dir: Path, eval_rows: list[dict]) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.train_rm import pair_metrics, preference_pairs, reward_scores

    pairs, _ = preference_pairs(eval_rows, "soft")  # a vs b as judged, truth as label
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    chosen = reward_scores(model, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = reward_scores(model, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    return pair_metrics([c - r for c, r in zip(chosen, rejected)], pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="CI: 3 questions, 1 step each; never fails on times")
    args = parser.parse_args()
    global OUT
    questions = None
    if args.quick:
        OUT, questions, args.steps, args.max_words = Path("runs/rm-quick"), 3, 1, 30
    if not (OUT / "judged.jsonl").exists():
        judge_pairs(args.max_words, questions=questions)
    split()
    if args.prepare_only:
        return
    from trainers.train_rm import main as train_rm

    eval_rows = read_jsonl(OUT / "eval.jsonl")
    results = {}
    for data, loss in itertools.product(("raw", "clean"), ("hard", "soft")):
        out = OUT / f"model-{data}-{loss}"
        start = time.perf_counter()
        train_rm(["--config", "recipes/rm/embedded/config_demo.yaml", "--train_file", str(OUT / f"{data}.jsonl"),
                  "--loss", loss, "--output_dir", str(out), "--max_steps", str(args.steps),
                  "--eval_file", str(OUT / "eval.jsonl")])  # fmt: skip
        results[(data, loss)] = evaluate(out, eval_rows) | {"train_s": time.perf_counter() - start}
        print(data, loss, results[(data, loss)], flush=True)
    missing = [k for k, m in results.items() if None in (m["accuracy_labels"], m["accuracy_judge"], m["ece"])]
    if missing:
        print(f"FAIL: no held-out metrics for {missing}", file=sys.stderr)
        return 1
    print(f"\n{'data':<6} {'loss':<5} {'acc vs truth':>12} {'acc vs judge':>12} {'ECE':>6} {'train s':>8}")
    for (data, loss), m in results.items():
        print(f"{data:<6} {loss:<5} {m['accuracy_labels']:>12.3f} {m['accuracy_judge']:>12.3f} {m['ece']:>6.3f} "
              f"{m['train_s']:>8.0f}")  # fmt: skip
    print(f"(held-out pairs: {results[('raw', 'soft')]['n_judged']}, with a known order: "
          f"{results[('raw', 'soft')]['n_labelled']})")  # fmt: skip
    (OUT / "results.json").write_text(json.dumps({f"{d}-{lo}": m for (d, lo), m in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
