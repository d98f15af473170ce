"""Wrapper overhead: `Judge.score` vs the raw model forwards of exactly the same token batches.

`Judge.score` is run once with its model's forward recorded; the prompt forwards it made (same input ids,
masks, positions, caches) are then replayed bare and timed. The ratio raw / `Judge.score` is the fraction of
the judge's time spent in the model's prompt forwards (goal >= 0.9): the rest is rendering, tokenising, the
label step and Python. The prefix cache is off so the batches are plain ones. With the backend's own head
(`HFBackend._own_head`) a forward is the base model's (run by the backend's lean loop where it has one,
`reward/backends/decoder.py`), and the head runs once per call after them: the base model's forwards are recorded
then, at the backend's `_base`, and replayed through transformers' own base model.

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

    own = j.backend._own_head() is not None
    body = j.model.base_model if own else j.model
    calls = []
    if own:  # the backend's seam to the base model: (ids, positions, mask, prefix KV, keep)
        seam = j.backend._base

        def recording(ids, positions, mask, prefix_kv, keep, start=0):
            calls.append({"input_ids": ids, "position_ids": positions, "attention_mask": mask})
            return seam(ids, positions, mask, prefix_kv, keep, start)

        j.backend._base = recording
        failed = [r.error for r in j.score(questions, answers) if r.error]  # recorded once, then both timed
        del j.backend._base
        if failed:
            raise SystemExit(f"the judge failed: {failed[0]}")
    else:
        forward = body.forward

        def recording(*a, **kw):
            if kw.get("cache") is None:  # a prompt forward (the label step passes the prompt's cache)
                calls.append(dict(kw))
            return forward(*a, **kw)

        body.forward = recording
        j.score(questions, answers)
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
