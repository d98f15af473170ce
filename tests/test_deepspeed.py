"""The DeepSpeed-sharded judge: ZeRO-3 on 1 and 2 processes (gloo, CPU) against the plain HF judge."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reward.backends.deepspeed import zero3_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ds_judge_ranks.py"
sys.path.insert(0, str(SCRIPT.parent))
from ds_judge_ranks import PAIRS, SCORES  # noqa: E402


def torchrun(n: int, out: Path, model: str, *extra: str, timeout: int = 300):
    env = os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", str(n), str(SCRIPT), str(out), model, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    from reward import load_judge

    judge = load_judge(tiny_model_dir, device="cpu", progress=False, rationale_tokens=4)
    return {
        "model": judge.model,
        "prefs": judge.compare(*map(list, zip(*PAIRS))),
        "scores": judge.score([q for q, _ in SCORES], [a for _, a in SCORES], scale=10),
        "rationale": [judge.score([q], [a], mode="rationale", scale=10)[0] for q, a in SCORES[:2]],
    }


@pytest.mark.parametrize("world", [1, 2])
def test_zero3_judge_matches_hf(tmp_path, tiny_model_dir, expected, world):
    proc = torchrun(world, tmp_path, tiny_model_dir)
    files = [tmp_path / f"rank{r}.json" for r in range(world)]
    # Each rank's own results decide (a rare abort at interpreter exit after correct results is not a failure).
    assert all(f.exists() for f in files), proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads(f.read_text()) for f in files]
    for r in ranks:  # ZeRO-3: each rank holds 1/world of the weights
        assert r["world"] == world and r["shard_params"] == pytest.approx(r["full_params"] / world, rel=0.01)
    prefs = [p for r in ranks for p in r["prefs"]]  # rank 0's pairs, then rank 1's: the input order
    assert len(prefs) == len(PAIRS)
    for got, want in zip(prefs, expected["prefs"]):
        for key in ("p_a", "p_b", "p_tie"):
            assert got[key] == pytest.approx(getattr(want, key), abs=1e-5)
        assert got["verdict"] == want.verdict
    assert ranks[0]["scores"] and all(r["scores"] == [] for r in ranks[1:])  # an empty rank took part
    for got, want in zip(ranks[0]["scores"], expected["scores"]):
        assert got["expected"] == pytest.approx(want.expected, abs=1e-5)
        assert {int(k): v for k, v in got["probs"].items()} == pytest.approx(want.probs, abs=1e-5)
    for r in ranks:  # rationale mode: generation in lockstep (greedy text, then the slot)
        assert r["rationale"][0]["expected"] == pytest.approx(expected["rationale"][r["rank"]].expected, abs=1e-5)


def test_a_failing_rank_stops_the_other(tmp_path, tiny_model_dir):
    """Rank 1 fails mid-call after collectives began: both ranks raise (rank 0 with the news of the failure), each
    on its own, so neither is left in a collective for torchrun to kill."""
    proc = torchrun(2, tmp_path, tiny_model_dir, "fail", timeout=240)  # a hang would hit the timeout instead
    files = [tmp_path / f"rank{r}.error.json" for r in (0, 1)]
    assert all(f.exists() for f in files), proc.stdout[-2000:] + proc.stderr[-4000:]
    rank0, rank1 = (json.loads(f.read_text()) for f in files)
    assert rank0["calls_done"] == rank1["calls_done"] == 1  # the first call went through on both
    assert "injected fault on rank 1" in rank1["error"]
    assert "another rank of the sharded judge failed" in rank0["error"]


def test_bad_configs_fail_before_loading(tiny_model_dir):
    import torch

    from reward import load_judge

    with pytest.raises(ValueError, match="stage 3"):
        zero3_config({"zero_optimization": {"stage": 2}}, torch.float32)
    config = zero3_config({"zero_optimization": {"stage": 3}, "optimizer": {"type": "Adam"}}, torch.bfloat16)
    assert "optimizer" not in config and config["bf16"] == {"enabled": True}
    with pytest.raises(ValueError, match="must divide the attention heads"):
        load_judge(tiny_model_dir, backend="deepspeed", tp_size=3)
    with pytest.raises(ValueError, match="backend='deepspeed'"):
        load_judge(tiny_model_dir, tp_size=2)


def test_sharded_compare_file(tmp_path, tiny_model_dir, expected):
    """`compare --judge_backend deepspeed` under torchrun: each rank judges a shard, rank 0 writes all rows."""
    rows = [{"id": i, "prompt": q, "response_a": a, "response_b": b} for i, (q, a, b) in enumerate(PAIRS)]
    rows.insert(2, {"id": "bad", "prompt": "q", "response_a": "", "response_b": "x"})  # unjudged, kept in place
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "trainers.cli", "compare", "--input",
           str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--judge", tiny_model_dir,
           "--judge_backend", "deepspeed", "--judge_device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "out.jsonl").exists(), proc.stderr[-4000:]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows] and "missing or empty" in out[2]["judge_error"]
    judged = [r for r in out if r["id"] != "bad"]
    for got, want in zip(judged, expected["prefs"]):
        assert got["p_a"] == pytest.approx(want.p_a, abs=1e-5) and got["p_tie"] == pytest.approx(want.p_tie, abs=1e-5)


def test_grpo_with_a_sharded_judge(tmp_path, tiny_model_dir):
    """Two processes: the policy data-parallel, the judge ZeRO-3-sharded over the same ranks, 2 GRPO steps."""
    from reward import load_judge
    from trainers import JudgePairwiseReward, JudgeScoreReward

    env = os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    script = ROOT / "tests" / "scripts" / "grpo_sharded_judge.py"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), tiny_model_dir]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    files = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    assert all(f.exists() for f in files), proc.stderr[-4000:]
    judge = load_judge(tiny_model_dir, device="cpu", progress=False)
    plain = {"judge_pairwise": JudgePairwiseReward(judge), "judge_score": JudgeScoreReward(judge)}
    for f in files:  # every rank's rewards equal the unsharded judge's on the completions that rank saw
        calls = json.loads(f.read_text())["calls"]
        assert len(calls) == 4  # 2 steps x 2 rewards
        for call in calls:
            want = plain[call["name"]](prompts=call["prompts"], completions=call["completions"])
            assert call["rewards"] == pytest.approx(want, abs=1e-5)


def test_autotp_judge_matches_hf(tmp_path, tiny_model_dir, expected):
    """AutoTP (tp_size=2): both ranks judge the same batch with the linear layers split between them."""
    proc = torchrun(2, tmp_path, tiny_model_dir, "tp")
    files = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    assert all(f.exists() for f in files), proc.stdout[-2000:] + proc.stderr[-4000:]
    full = sum(p.numel() for p in expected["model"].parameters())
    for r in (json.loads(f.read_text()) for f in files):
        assert r["shard_params"] < full  # each rank holds only part of the projections
        for got, want in zip(r["prefs"], expected["prefs"]):
            assert got["p_a"] == pytest.approx(want.p_a, abs=1e-5) and got["p_b"] == pytest.approx(want.p_b, abs=1e-5)
        for got, want in zip(r["scores"], expected["scores"]):
            assert got["expected"] == pytest.approx(want.expected, abs=1e-5)


def test_tp_size_must_divide_the_world(tiny_model_dir):
    code = f"from reward import load_judge; load_judge({tiny_model_dir!r}, backend='deepspeed', tp_size=2)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode != 0 and "tp_size=2 does not divide the world size 1" in proc.stderr
