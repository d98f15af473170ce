import json
from pathlib import Path

import pytest

from trainers.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_file(tmp_path, tiny_model_dir, tiny_judge):
    rows = [
        {"id": 1, "prompt": "What is two plus two?", "response": "four"},
        {"id": 2, "prompt": "Where is Paris?", "response": ""},
        {"id": 3, "prompt": [{"role": "user", "content": "Hi?"}], "response": "Hello."},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--judge", tiny_model_dir]
    direct = ["--judge_score_reading", "direct"]  # the slot's numbers (the anchored default: test_anchored.py)
    assert main(["score", *args, "--scale", "10", "--method", "mean", "--judge_device", "cpu", *direct]) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert out[0]["score_reading"] == "direct" and out[0]["score_anchor"] is None
    assert [r["id"] for r in out] == [1, 2, 3]  # nothing lost, input order kept
    assert "missing or empty" in out[1]["judge_error"] and "score" not in out[1]
    want = tiny_judge.score(["What is two plus two?", "Hi?"], ["four", "Hello."], scale=10, method="mean")
    assert [out[0]["score"], out[2]["score"]] == pytest.approx([s.expected for s in want], abs=1e-5)
    for r, w in zip((out[0], out[2]), want):
        assert r["judge_error"] is None
        probs = {int(k): v for k, v in r["score_probs"].items()}
        assert sum(probs.values()) == pytest.approx(1.0) and set(probs) == set(range(1, 11))
        assert r["score"] == pytest.approx(sum(k * v for k, v in probs.items()))
        # The most likely rating, as a rating (1..10), not its position in the list
        assert r["score_argmax"] == w.argmax == max(probs, key=probs.get)
        assert r["valid_mass"] == pytest.approx(w.valid_mass, abs=1e-5)


def test_compare_file(tmp_path, tiny_model_dir, tiny_judge):
    """The rows' numbers are the library's: a command that swapped response_a and response_b, or read one order
    only, would still sum to 1 with a valid verdict."""
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q?", "response_a": "yes", "response_b": "It is not."}])
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--judge", tiny_model_dir]
    assert main(["compare", *args, "--judge_device", "cpu"]) == 0
    (r,) = read_jsonl(tmp_path / "out.jsonl")
    (want,) = tiny_judge.compare(["q?"], ["yes"], ["It is not."])
    assert (r["p_a"], r["p_b"], r["p_tie"]) == pytest.approx((want.p_a, want.p_b, want.p_tie), abs=1e-5)
    assert abs(want.p_a - want.p_b) > 1e-3  # a swap would show
    assert r["order_ab"] == pytest.approx(want.order_ab, abs=1e-5) and r["verdict"] == want.verdict


def test_bad_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q"}\nnot json\n')
    assert main(["score", "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["train"]) == 2
    assert main([]) == 0 and "grpo" in capsys.readouterr().out


def test_flags_parse_after_trl_resolved_the_annotations():
    # TrlParser (grpo, serve) replaces the dataclasses' string annotations with types in place; the label-only
    # parser must still read them in the same process (a score after a grpo run in one test session did not).
    from trl import TrlParser

    from trainers.args import parse
    from trainers.judge_args import JudgeArguments as ServedJudgeArguments
    from trainers.judge_file import JudgeFileArguments

    TrlParser((JudgeFileArguments, ServedJudgeArguments))
    argv = ["--input", "a.jsonl", "--output", "b.jsonl", "--scale", "7", "--judge_concurrency", "3"]
    args, served = parse("t", (JudgeFileArguments, ServedJudgeArguments), argv)
    assert (args.input, args.scale, served.judge_concurrency) == ("a.jsonl", 7, 3)
