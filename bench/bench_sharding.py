"""Sharded judge memory and speed at world size 1 and 2 (ZeRO-3, gloo, CPU), side by side in one run.

Per rank: the judge's parameters it holds, its peak resident memory (the whole process: Python, torch, the
shard, activations), and items/s of `Judge.compare` on the same MT-Bench pairs split across the ranks. Sharding
must cut per-rank parameter memory to about 1/N; on CPU the ranks share the same cores, so items/s does not scale.

    python bench/bench_sharding.py [--pairs 12] [--quick]

`--quick` (CI): 2 pairs; fails when a rank does not finish or holds more than ~1/N of the parameters (never on
times).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(out: Path, n_pairs: int) -> None:
    import torch.distributed as dist

    from reward import load_judge
    from trainers.mt_bench import mt_bench_candidates

    judge = load_judge("embedded", backend="deepspeed", device="cpu", progress=False, batch_size=4)
    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = [(c["question"], c["answers"][x], c["answers"][y]) for c in mt_bench_candidates(max_words=60)
             for x, y in itertools.combinations(c["answers"], 2)][:n_pairs]  # fmt: skip
    mine = pairs[rank * len(pairs) // world : (rank + 1) * len(pairs) // world]
    dist.barrier()
    start = time.perf_counter()
    judge.compare(*map(list, zip(*mine)))
    dist.barrier()
    elapsed = time.perf_counter() - start
    shard = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in judge.model.parameters())
    full = sum(p.ds_numel * p.ds_tensor.element_size() for p in judge.model.parameters())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (out / f"rank{rank}.json").write_text(json.dumps({"shard": shard, "full": full, "rss": rss, "s": elapsed,
                                                      "pairs": len(pairs)}))  # fmt: skip
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="CI: 2 pairs; checks the shards, never times")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.pairs = 2
    if args.worker:
        worker(Path(args.worker), args.pairs)
        return
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    print(f"{'world':>5} {'rank':>4} {'params held':>12} {'of':>9} {'peak RSS':>9} {'pairs/s':>8}")
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            cmd = ["torchrun", "--standalone", "--nproc_per_node", str(world), __file__, "--worker", out,
                   "--pairs", str(args.pairs)]  # fmt: skip
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
            for rank in range(world):
                if not (Path(out) / f"rank{rank}.json").exists():
                    print(f"FAIL: world {world} rank {rank} did not finish\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                r = json.loads((Path(out) / f"rank{rank}.json").read_text())
                if abs(r["shard"] - r["full"] / world) > 0.02 * r["full"]:
                    print(f"FAIL: world {world} rank {rank} holds {r['shard']} of {r['full']} bytes", file=sys.stderr)
                    return 1
                print(f"{world:>5} {rank:>4} {r['shard'] / 2**20:>9.0f} MiB {r['full'] / 2**20:>5.0f} MiB "
                      f"{r['rss'] / 2**30:>7.2f} G {r['pairs'] / r['s']:>8.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
