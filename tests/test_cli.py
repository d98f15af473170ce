import json
from pathlib import Path

import pytest

from trainers.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_file(tmp_path, tiny_model_dir):
    rows = [
        {"id": 1, "prompt": "What is two plus two?", "response": "four"},
        {"id": 2, "prompt": "Where is Paris?", "response": ""},
        {"id": 3, "prompt": [{"role": "user", "content": "Hi?"}], "response": "Hello."},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--judge", tiny_model_dir]
    assert main(["score", *args, "--scale", "10", "--method", "mean", "--judge_device", "cpu"]) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [1, 2, 3]  # nothing lost, input order kept
    assert "missing or empty" in out[1]["judge_error"] and "score" not in out[1]
    for r in (out[0], out[2]):
        assert r["judge_error"] is None and 1 <= r["score"] <= 10
        probs = {int(k): v for k, v in r["score_probs"].items()}
        assert sum(probs.values()) == pytest.approx(1.0) and set(probs) == set(range(1, 11))
        assert r["score"] == pytest.approx(sum(k * v for k, v in probs.items()))


def test_compare_file(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q?", "response_a": "yes", "response_b": "no"}])
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--judge", tiny_model_dir]
    assert main(["compare", *args, "--judge_device", "cpu"]) == 0
    (r,) = read_jsonl(tmp_path / "out.jsonl")
    assert r["p_a"] + r["p_b"] + r["p_tie"] == pytest.approx(1.0)
    assert set(r["order_ab"]) == {"A", "B", "C"} and r["verdict"] in ("a", "b", "tie")


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
