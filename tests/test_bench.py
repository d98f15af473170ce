"""The benchmarks' CI mode (`--quick`): each run checks what the bench computes (exactness against a baseline,
token counts, failures), never a time: on a busy machine a timing goal would reject a correct change. The
timing goals live in the full runs and their printed ratios (README, "Benchmark")."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return out.stdout


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_consistency_bench_quick():
    # Its own checks: the vectorised NTR counts equal itertools enumeration, drop-cycles rejects what networkx finds.
    assert "speed-up per relation" in run("bench_consistency.py")


@pytest.mark.slow
def test_prefix_cache_is_exact_and_saves_tokens():
    out = run("bench_prefix_cache.py")
    assert number(r"max \|dp\| = ([0-9.e+-]+)", out) <= 1e-5  # the cache never changes a probability
    on, off = number(r"cache on [0-9.]+ s \((\d+) tokens\)", out), number(r"off [0-9.]+ s \((\d+) tokens\)", out)
    assert on <= 0.5 * off


@pytest.mark.slow
def test_score_bench_reads_a_distribution():
    out = run("bench_score.py")
    assert 0 < number(r"valid_mass of the exact read: ([0-9.]+)", out) <= 1
    assert "direct is" in out


@pytest.mark.slow
def test_pairing_bench_adaptive_costs_less():
    out = run("bench_pairing.py")
    assert number(r"adaptive (\d+) tokens", out) < number(r"all (\d+) tokens", out)


@pytest.mark.slow
@pytest.mark.parametrize("script, pattern", [("bench_overhead.py", r"in (\d+) prompt forwards"),
                                             ("bench_flops.py", r"(\d+) tree tokens")])  # fmt: skip
def test_judge_benches_quick(script, pattern):
    assert number(pattern, run(script)) > 0


@pytest.mark.slow
def test_judge_consistency_bench_quick():
    # Its own check: the merged verdicts are decide_preference's on the same orders; none failed.
    assert number(r"in \d+ s, (\d+) failures", run("bench_judge_consistency.py")) == 0


def test_group_rewards_bench_quick():
    assert "goal at G=16" in run("bench_group_rewards.py")


@pytest.mark.slow
def test_injection_bench_quick():
    assert "GRPO-shaped check" in run("bench_injection.py")


def test_served_bench_packs_requests():
    # Counts, not speed: the openai: backend packs prompts and label reads into few requests.
    out = run("bench_served.py")
    assert number(r"Judge.score \(openai:\)\s*:\s*\d+ items/s\s+([0-9.]+) requests/item", out) <= 0.25
    assert number(r"Judge.compare \(openai:\)\s*:\s*\d+ pairs/s\s+([0-9.]+) requests/pair", out) <= 0.5
