"""Wrapper overhead: `Judge.score` vs the raw model forwards of exactly the same token batches.

`Judge.score` is run once with its model's forward recorded; the prompt forwards it made (same input ids,
masks, positions, caches) are then replayed bare and timed. The ratio raw / `Judge.score` is the fraction of
the judge's time spent in the model's prompt forwards (goal >= 0.9): the rest is rendering, tokenising, the
label step and Python. The prefix cache is off so the batches are plain ones. With the backend's own head
(`HFBackend._own_head`) a forward is the base model's, and the head runs once per call after them: the base
model's forwards are recorded then.

    python bench/bench_overhead.py [--items 16] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import judge, timed

from trainers.mt_bench import mt_bench_candidates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="CI: 4 items; never fails on times")
    args = parser.parse_args()
    n = 4 if args.quick else args.items
    j = judge(prefix_cache=False, batch_size=64)
    cands = mt_bench_candidates(max_words=80)
    items = [(c["question"], a) for c in cands for a in c["answers"].values()][:n]
    questions, answers = [q for q, _ in items], [a for _, a in items]
    j.score(questions[:1], answers[:1])  # warm-up

    body = j.model.base_model if j.backend._own_head() is not None else j.model
    calls, forward = [], body.forward

    def recording(*a, **kw):
        if kw.get("cache") is None:  # a prompt forward (the label step passes the prompt's cache)
            calls.append({k: v for k, v in kw.items()})
        return forward(*a, **kw)

    body.forward = recording
    j.score(questions, answers)  # recorded once, then both sides are timed on equal terms
    body.forward = forward

    def replay():
        with torch.inference_mode():
            for kw in calls:
                body(**kw)

    repeat = 1 if args.quick else 2
    _, t_judge = timed(j.score, questions, answers, repeat=repeat)
    _, t_raw = timed(replay, repeat=repeat)
    ratio = t_raw / t_judge
    tokens = sum(kw["input_ids"].numel() for kw in calls)
    print(f"{n} items in {len(calls)} prompt forwards ({tokens} tokens): raw forwards {t_raw:.2f} s, Judge.score "
          f"{t_judge:.2f} s: ratio {ratio:.2f} (goal >= 0.9)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
