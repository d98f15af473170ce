"""The benchmarks' CI mode: each checks its own results and fails only far outside its goal (never on times)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return out.stdout


def test_consistency_bench_quick():
    assert "speed-up per relation" in run("bench_consistency.py")


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, expect",
    [
        ("bench_score.py", "direct is"),
        ("bench_prefix_cache.py", "max |dp|"),
        ("bench_overhead.py", "ratio"),
        ("bench_flops.py", "of matmul"),
        ("bench_pairing.py", "mean Spearman"),
        ("bench_injection.py", "GRPO-shaped check"),
    ],
)
def test_judge_benches_quick(script, expect):
    assert expect in run(script)
