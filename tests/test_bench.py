import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_consistency_bench_quick():
    """The benchmark's CI mode: it checks its own results against the baselines and fails far outside its goals."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_consistency.py"), "--quick"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "speed-up per relation" in out.stdout
