"""Clean a preference file on a Ray cluster: one task per prompt-hash shard (`clean --shard I/N`), then `merge`.

    python recipes/consistency/ray_clean.py --input data.jsonl --out_dir out --shards 64 \
        -- --labels-only --policy equivalence drop-cycles
    python recipes/consistency/ray_clean.py ... --local   # the same tasks as local processes, no Ray needed

Each task reads the whole input but keeps only its partition's rows, so its memory is that of one shard; the
input and `--out_dir` must be on storage every node sees (NFS, a mounted bucket). The merge recomputes the report
from the shards' counts (equal to a one-shot `trustreward clean`) and copies the kept rows from the input. The same
pattern fits a Slurm array (`--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`) or a Kubernetes indexed job.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor


def clean_shard(input_path: str, out_dir: str, i: int, n: int, flags: list[str]) -> str:
    """Shard i of n: its rejects and report in `out_dir`; returns the report's path."""
    from trainers.cli import main

    report = os.path.join(out_dir, f"report-{i}-of-{n}.json")
    rejects = os.path.join(out_dir, f"rejects-{i}-of-{n}.jsonl")
    args = ["clean", "--input", input_path, "--rejects", rejects, "--report", report, "--shard", f"{i}/{n}"]
    if main([*args, *flags]) != 0:
        raise RuntimeError(f"shard {i}/{n} failed (its error is above)")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--output_name", default="kept.jsonl", help="kept rows in out_dir (format by extension)")
    parser.add_argument("--local", action="store_true", help="local processes instead of Ray tasks")
    parser.add_argument("flags", nargs="*", help="after --: flags for `trustreward clean`")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    task = (args.input, args.out_dir)
    if args.local:
        with ProcessPoolExecutor(max_workers=min(args.shards, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(clean_shard, *task, i, args.shards, args.flags) for i in range(args.shards)]
            reports = [f.result() for f in futures]
    else:
        import ray

        ray.init(address=os.environ.get("RAY_ADDRESS"))  # a running cluster, else a local one
        remote = ray.remote(num_cpus=1)(clean_shard)
        reports = ray.get([remote.remote(*task, i, args.shards, args.flags) for i in range(args.shards)])
    from trainers.cli import main as trustreward

    out = os.path.join(args.out_dir, args.output_name)
    merged = ["--report", os.path.join(args.out_dir, "report.json"), "--output", out]
    merged += ["--rejects", os.path.join(args.out_dir, "rejects.jsonl")]
    return trustreward(["merge", "--reports", *reports, *merged])


if __name__ == "__main__":
    sys.exit(main())
