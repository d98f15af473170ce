"""One rank of a sharded judge (run by tests/test_deepspeed.py with torchrun, 1 or 2 processes).

argv: OUT_DIR MODEL_DIR [fail | tp]. ZeRO-3 with 2 ranks: rank 0 judges 4 pairs and rank 1 one (uneven), then
rank 1 scores nothing while rank 0 scores 3 (an empty rank), then both write rationales (generate in lockstep);
one rank does it all. With `fail`, rank 1's backend breaks mid-call (see
`fail_after_collectives`). With `tp` the judge is tensor-parallel (AutoTP) and every rank judges all pairs and scores
(a tensor-parallel group sees the same batch).
Each rank writes OUT_DIR/rank{N}.json.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from reward import load_judge

PAIRS = [
    ("What is two plus two?", "four", "5"),
    ("What is two plus two?", "4", "It is four."),
    ("Where is Paris?", "In France.", "a b c"),
    ("Where is Paris?", "Paris is in France, the capital.", "In France."),
    ("Name a colour.", "Red.", "Blue."),
]
SCORES = [("What is two plus two?", "four"), ("Where is Paris?", "In France."), ("Name a colour.", "Red.")]


def fail_after_collectives(judge, out: Path, rank: int) -> None:
    """Rank 1's backend breaks in the second micro-batch of its second call, long after both ranks began the judge's
    collectives (ZeRO-3 gathers): every rank must raise, rank 0 too, not wait in a collective for a rank that left."""
    backend = judge.backend
    encode = backend._encode
    calls_done, error = 0, None

    def broken(prompt):
        if rank == 1 and calls_done == 1 and PAIRS[3][1] in prompt:  # the 2nd micro-batch (batch_size=2) of call 2
            raise RuntimeError("injected fault on rank 1")
        return encode(prompt)

    backend._encode = broken
    try:
        for _ in range(2):  # one whole call, then one that breaks on its second micro-batch
            judge.score([q for q, _, _ in PAIRS], [a for _, a, _ in PAIRS])
            calls_done += 1
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    (out / f"rank{rank}.error.json").write_text(json.dumps({"error": error, "calls_done": calls_done}))


def main():
    out, model = Path(sys.argv[1]), sys.argv[2]
    tp = sys.argv[3:] == ["tp"]
    judge = load_judge(model, backend="deepspeed", device="cpu", progress=False, batch_size=2, rationale_tokens=4,
                       tp_size=2 if tp else None)  # fmt: skip
    rank, world = dist.get_rank(), dist.get_world_size()
    if sys.argv[3:] == ["fail"]:
        fail_after_collectives(judge, out, rank)
        return
    mine = PAIRS if world == 1 or tp else PAIRS[:4] if rank == 0 else PAIRS[4:]
    prefs = judge.compare(*map(list, zip(*mine)))
    scored = SCORES if rank == 0 or tp else []
    scores = judge.score([q for q, _ in scored], [a for _, a in scored], scale=10)
    rationale = [] if tp else judge.score([SCORES[rank][0]], [SCORES[rank][1]], mode="rationale", scale=10)
    params = list(judge.model.parameters())
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "shard_params": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
        "full_params": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "prefs": [asdict(p) for p in prefs],
        "scores": [{str(k): v for k, v in asdict(s).items()} for s in scores],
        "rationale": [asdict(s) for s in rationale],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result, default=str))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
