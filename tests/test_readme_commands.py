"""The README's and the docs pages' commands, each run once through the `trustreward` console script (PYTHONPATH:
this checkout); tests/test_docs.py checks every command the pages show against the code without running it.

The main job (`trustreward grpo --config recipes/grpo/embedded/config_demo.yaml`) runs one step with the embedded
judge and its printed metrics are checked; the file commands chain as in the README (compare -> audit / clean ->
train-rm) on the tiny judge, and `serve` answers one OpenRLHF request.
"""

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from reward.anchored import reward_scores

ROOT = Path(__file__).resolve().parents[1]
EXE = shutil.which("trustreward")
ENV = os.environ | {"PYTHONPATH": f"{ROOT}", "OMP_NUM_THREADS": "2"}


@pytest.fixture(autouse=True)
def console_script():
    """No skip: without the script these tests are the only check of the README's commands (and of `compare`'s
    numbers outside DeepSpeed), so its absence is a failure. `.ci/run` puts its fresh venv's bin first on PATH."""
    assert EXE is not None, "the `trustreward` console script is not on PATH: `pip install -e .` installs it"


PAIRS = [
    {"id": 0, "prompt": "What is two plus two?", "response_a": "It is four.", "response_b": "5"},
    {"id": 1, "prompt": "Where is Paris?", "response_a": "a b c", "response_b": "In France."},
    {"id": 2, "prompt": "Name a colour.", "response_a": "Red.", "response_b": "The quick brown fox."},
    {"id": 3, "prompt": "What is two plus two?", "response_a": "four", "response_b": "It is four."},
]
# A planted cycle x > y > z > x on prompt "q" and a consistent prompt "r": the README's audit / clean input.
LABELLED = [
    {"prompt": "q", "response_a": "x", "response_b": "y", "label": "a"},
    {"prompt": "q", "response_a": "y", "response_b": "z", "label": "a"},
    {"prompt": "q", "response_a": "z", "response_b": "x", "label": "a"},
    {"prompt": "r", "chosen": "good", "rejected": "bad"},
    {"prompt": "r", "chosen": "good", "rejected": "worse"},
    {"prompt": "r", "chosen": "bad", "rejected": "worse"},
]


def trustreward(*args, timeout=600):
    proc = subprocess.run([EXE, *map(str, args)], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_main_job_grpo_demo(tmp_path):
    """One step of the README's main job: every completion judged, the rewards are what they mean, and what it
    prints (the step line, the summary, the ranked group) and plots is the run's own logged metrics."""
    # One step, shorter completions (48 -> 16 tokens): the recipe as the README runs it, at a third of the cost.
    # The README measured ~55 s a step on a fresh machine; beside other test runs (load 8-16) this took 9.5 min.
    proc = trustreward("grpo", "--config", "recipes/grpo/embedded/config_demo.yaml", "--max_steps", "1",
                       "--max_completion_length", "16", "--output_dir", tmp_path / "run", timeout=1200)  # fmt: skip
    history = jsonl(tmp_path / "run" / "metrics.jsonl")  # every key TRL logged, one line per log
    steps = [r for r in history if "train_runtime" not in r]
    assert len(steps) == 1, proc.stdout[-2000:]
    (m,) = steps
    means = {k.split("/")[1]: v for k, v in m.items() if k.startswith("rewards/") and k.endswith("/mean")}
    assert means, m
    # TRL's reward is the sum of the reward functions' means (weights 1).
    assert m["reward"] == pytest.approx(sum(means.values()), abs=1e-3)
    failures = [v for k, v in m.items() if k.startswith("judge/") and k.endswith("/failures")]
    assert failures and all(v == 0 for v in failures)  # no None reward: every completion was judged
    assert set(means) == {"judge_pairwise"}, means  # the recipe's reward (its mean is 0.5 by construction)
    from trainers.grpo import JudgeRewardArguments
    from trainers.summary import curve_data, step_line, summarize

    if JudgeRewardArguments().pairing == "all":  # one group of G = 4: 6 pairs, both orders, every pair compared
        assert m["judge/prompts_per_group"] == 12 and m["judge/compared_fraction"] == 1.0, m
    # The consistency monitor checked that group (every group is sampled) on the reward's own 6 judgements: its
    # order consistency is the reward's, and NTR_3 counts the group's 4 triples.
    assert m["judge/monitor_groups"] == 1, m
    assert m["judge/monitor_order_consistency"] == pytest.approx(m["judge/order_consistency"], abs=1e-6), m
    assert 4 * m["judge/non_transitivity"] == pytest.approx(round(4 * m["judge/non_transitivity"]), abs=1e-3)
    # The recipe's guard (min_order_consistency: 0.5) warns exactly when the checked pairs fall below it.
    warned = "order_consistency" in proc.stderr and "crossed its threshold" in proc.stderr
    assert warned == (m["judge/monitor_order_consistency"] < 0.5), proc.stderr[-2000:]

    # What it printed: one short line for the step, then the summary of exactly these metrics (order consistency
    # once: the monitor's equals the reward's), the ranked group, the note on the embedded judge, the outputs.
    out = proc.stdout.splitlines()
    assert [x for x in out if x.startswith("step ")] == [step_line(m, 1, 1)]
    summary = summarize(history, {}).splitlines()
    start = out.index(summary[0])
    assert out[start : start + len(summary)] == summary
    assert sum(x.startswith("  order consistency") for x in summary) == 1
    group = out[start + len(summary) :]
    assert group[0].startswith("  one group of step 1, ranked by judge_pairwise")
    ranked = [float(x.split()[1]) for x in group[1:5]]
    assert [x.split()[0] for x in group[1:5]] == ["#1", "#2", "#3", "#4"] and ranked == sorted(ranked, reverse=True)
    # The group is the step's batch: its 4 rewards (each pair hands out 1 between its two) are what TRL logged.
    assert sum(ranked) == pytest.approx(2.0, abs=3e-3)
    assert statistics.stdev(ranked) == pytest.approx(m["rewards/judge_pairwise/std"], abs=3e-3)
    consistent = int(group[5].split("order-consistent pairs: ")[1].split(" of ")[0])
    assert group[5].split(" of ")[1].startswith("6") and consistent / 6 == pytest.approx(m["judge/order_consistency"])
    assert "SmolLM2-135M" in group[6]
    # The plot: the win rate's spread (not its flat 0.5 mean) and the consistency metrics, from the same metrics.
    data = curve_data(history)
    assert data["reward spread (std)"] == {"judge_pairwise": [(1, pytest.approx(m["rewards/judge_pairwise/std"]))]}
    assert "reward mean" not in data and (tmp_path / "run" / "curves.png").stat().st_size > 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def compared(work, tiny_model_dir):
    """`trustreward compare` over PAIRS: the rows come back in order with what the library's Judge computes."""
    trustreward("compare", "--input", write(work / "pairs.jsonl", PAIRS), "--output", work / "judged.jsonl",
                "--judge", tiny_model_dir, "--judge_device", "cpu")  # fmt: skip
    return jsonl(work / "judged.jsonl")


def test_score_and_compare(work, tiny_model_dir, tiny_judge, compared):
    want = tiny_judge.compare([r["prompt"] for r in PAIRS], [r["response_a"] for r in PAIRS],
                              [r["response_b"] for r in PAIRS])  # fmt: skip
    assert [r["id"] for r in compared] == [0, 1, 2, 3]
    for got, w in zip(compared, want):
        assert (got["p_a"], got["p_b"], got["p_tie"]) == pytest.approx((w.p_a, w.p_b, w.p_tie), abs=1e-5)
        assert got["verdict"] == w.verdict and got["judge_error"] is None
    rows = [{"prompt": r["prompt"], "response": r["response_a"]} for r in PAIRS]
    trustreward("score", "--input", write(work / "points.jsonl", rows), "--output", work / "scored.jsonl",
                "--judge", tiny_model_dir, "--judge_device", "cpu", "--scale", "10", "--method", "mean")  # fmt: skip
    # the pointwise reward's reading (anchored by default: a comparison with reward.anchored.ANCHOR)
    want = reward_scores(
        tiny_judge, [r["prompt"] for r in rows], [r["response"] for r in rows], scale=10, method="mean"
    )
    assert [r["score"] for r in jsonl(work / "scored.jsonl")] == pytest.approx([s.expected for s in want], abs=1e-5)


def test_audit_and_clean(work):
    src = write(work / "labelled.jsonl", LABELLED)
    trustreward("audit", "--input", src, "--report", work / "audit.json")
    report = json.loads((work / "audit.json").read_text())
    assert report["non_transitivity"]["3"] == pytest.approx(0.5)  # of 2 triples, the planted cycle is bad
    trustreward("clean", "--input", src, "--output", work / "kept.jsonl", "--rejects", work / "rejects.jsonl",
                "--report", work / "clean.json", "--policy", "drop-cycles", "--labels-only")  # fmt: skip
    assert jsonl(work / "kept.jsonl") == LABELLED[3:]  # kept rows unchanged, in order
    rejects = jsonl(work / "rejects.jsonl")
    assert [r["row"] for r in rejects] == LABELLED[:3] and {r["reason"] for r in rejects} == {"cycle"}


def test_train_rm_on_the_judged_rows(work, tiny_model_dir, compared):
    """The README's train-rm recipe (soft targets from the judge's probabilities) on `compare`'s output."""
    out = work / "rm"
    trustreward("train-rm", "--config", "recipes/rm/embedded/config_demo.yaml", "--train_file", work / "judged.jsonl",
                "--eval_file", work / "judged.jsonl", "--model_name_or_path", tiny_model_dir, "--max_steps", "1",
                "--output_dir", out, "--max_length", "128")  # fmt: skip
    metrics = json.loads((out / "rm_eval.json").read_text())
    assert metrics["pairs_train"] == metrics["pairs_eval"] == metrics["n_judged"] == len(PAIRS)
    assert metrics["lora"] is True and (out / "adapter").is_dir() and (out / "config.json").exists()


def test_serve_answers_openrlhf(tiny_model_dir, tiny_judge):
    import httpx

    from trainers import JudgeScoreReward

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [EXE, "serve", "--judge", tiny_model_dir, "--judge_device", "cpu", "--port", str(port), "--reward", "score"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                time.sleep(0.5)
        # As OpenRLHF 0.11 calls (openrlhf/utils/agent.py): one sample per request, concurrently, the query the
        # chat-templated prompt + the response + the end token, `labels` "" without a label key.
        tok = tiny_judge.tokenizer
        questions, responses = ["What is two plus two?", "Where is Paris?"], ["It is four.", "a b c"]
        chats = [[{"role": "user", "content": q}] for q in questions]
        prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]

        async def each():
            async with httpx.AsyncClient(timeout=120) as http:
                bodies = [{"query": [p + r + tok.eos_token], "prompts": [p], "labels": [""]}
                          for p, r in zip(prompts, responses)]  # fmt: skip
                return await asyncio.gather(*[http.post(f"{url}/get_reward", json=b) for b in bodies])

        got = [r.json()["rewards"][0] for r in asyncio.run(each())]
        assert got == pytest.approx(JudgeScoreReward(tiny_judge)(prompts, responses), abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
