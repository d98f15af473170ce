"""The dataset commands under careless use and hostile files (issue 32): merge checks what it merges, one bad row
never costs the others, deep nesting and bad bytes are clear errors. Through the CLI only (exit codes, stderr,
output files), so the tests hold wherever the commands' modules live."""

import json

import pytest
from test_consistency_scale import clean, synthetic_rows, write

from trainers.cli import main


def shard_runs(d, n=3, rejects=None):
    """`clean --shard i/n` runs of `d/in.jsonl`; each writes `r{i}.jsonl` (or all the same `rejects` file)."""
    write(d / "in.jsonl", synthetic_rows(n_prompts=40, seed=3))
    for i in range(n):
        clean(d, "--shard", f"{i}/{n}", out=None, rej=rejects or f"r{i}.jsonl", rep=f"p{i}.json")
    return [str(d / f"p{i}.json") for i in range(n)]


def merge_args(d, reports, rejects="merged-r.jsonl", report="merged.json"):
    return ["merge", "--reports", *reports, "--report", str(d / report), "--output", str(d / "merged-k.jsonl"),
            "--rejects", str(d / rejects)]  # fmt: skip


def no_outputs(d):
    return not any((d / n).exists() for n in ("merged.json", "merged-k.jsonl", "merged-r.jsonl"))


def test_merge_refuses_shards_that_shared_one_rejects_file(tmp_path, capsys):
    reports = shard_runs(tmp_path, rejects="same.jsonl")
    assert main(merge_args(tmp_path, reports)) == 2
    err = capsys.readouterr().err
    assert "same.jsonl" in err and "Traceback" not in err and no_outputs(tmp_path)


def test_merge_refuses_a_reject_file_changed_after_its_run(tmp_path, capsys):
    reports = shard_runs(tmp_path)
    lines = (tmp_path / "r1.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "r1.jsonl").write_bytes(b"".join(lines[:-5]))  # 5 lines lost
    assert main(merge_args(tmp_path, reports)) == 2
    assert "r1.jsonl" in capsys.readouterr().err and no_outputs(tmp_path)
    # the same number of bytes, one row index changed: still refused
    (tmp_path / "r1.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "r2.jsonl").write_bytes(
        (tmp_path / "r2.jsonl").read_bytes().replace(b'"row_index": 1', b'"row_index": 9', 1)
    )
    assert main(merge_args(tmp_path, reports)) == 2
    assert "r2.jsonl" in capsys.readouterr().err and no_outputs(tmp_path)


def test_merge_never_writes_over_what_it_reads(tmp_path, capsys):
    reports = shard_runs(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for rejects, report in (("r0.jsonl", "merged.json"), ("merged-r.jsonl", "p1.json"), ("in.jsonl", "merged.json")):
        assert main(merge_args(tmp_path, reports, rejects=rejects, report=report)) == 2
        assert "refusing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_merge_of_intact_shards_still_equals_the_one_shot_run(tmp_path):
    reports = shard_runs(tmp_path)
    clean(tmp_path)
    assert main(merge_args(tmp_path, reports)) == 0
    merged, one = (json.loads((tmp_path / n).read_text()) for n in ("merged.json", "report.json"))
    assert merged["rows_kept"] == one["rows_kept"] and merged["rows_rejected"] == one["rows_rejected"]
    assert (tmp_path / "merged-r.jsonl").read_bytes() == (tmp_path / "rejects.jsonl").read_bytes()
    assert (tmp_path / "merged-k.jsonl").read_bytes() == (tmp_path / "kept.jsonl").read_bytes()


# -- finding 2: one bad row never costs the others ------------------------------------------------------------
CUT_EMOJI = "a cut emoji \ud83d"  # what `"\ud83d"` in a JSON file reads as: valid JSON, not text


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii: the surrogate as `\ud83d`


def read_lines(path):
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def test_score_fails_a_lone_surrogate_row_alone_and_writes_every_row(tmp_path, tiny_model_dir, capsys):
    rows = [{"id": 0, "prompt": "q", "response": CUT_EMOJI, "note": "x"},
            {"id": 1, "prompt": "What is two plus two?", "response": "four", "note": "y \udfff"},
            {"id": 2, "prompt": "q", "response": "fine"}]  # fmt: skip
    write_lines(tmp_path / "in.jsonl", rows)
    judge = ["--judge", tiny_model_dir, "--judge_device", "cpu"]
    for out in ("out.jsonl", "out.parquet"):
        assert main(["score", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / out), *judge]) == 0
    got = read_lines(tmp_path / "out.jsonl")
    assert [r["id"] for r in got] == [0, 1, 2] and got[0]["response"] == CUT_EMOJI and got[1]["note"] == "y \udfff"
    assert "surrogate" in got[0]["judge_error"] and "score" not in got[0]
    assert got[1]["judge_error"] is None and got[2]["judge_error"] is None and 1 <= got[2]["score"] <= 5
    from datasets import Dataset

    table = Dataset.from_parquet(str(tmp_path / "out.parquet")).to_list()
    assert [r["id"] for r in table] == [0, 1, 2] and table[0]["response"] == "a cut emoji \ufffd"
    assert "surrogate" in table[0]["judge_error"] and table[0]["score"] is None  # a failed first row keeps columns
    assert table[2]["score"] == pytest.approx(got[2]["score"]) and table[1]["note"] == "y \ufffd"
    assert "U+FFFD" in capsys.readouterr().err


def test_a_column_parquet_cannot_hold_is_an_error_before_the_judge_loads(tmp_path, capsys):
    write_lines(tmp_path / "in.jsonl", [{"prompt": "q", "response": "a", "extra": 1},
                                        {"prompt": "q", "response": "b", "extra": "one"}])  # fmt: skip
    (tmp_path / "no-judge").mkdir()  # loading a judge from here would fail: the check must come first
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.parquet")]
    assert main(["score", *args, "--judge", str(tmp_path / "no-judge")]) == 2
    err = capsys.readouterr().err
    assert "'extra' mixes types" in err and "Traceback" not in err and not (tmp_path / "out.parquet").exists()


def test_clean_rejects_a_lone_surrogate_row_and_writes_the_rest(tmp_path, capsys):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "note": "n\udfff"},
            {"prompt": "q", "chosen": "b", "rejected": CUT_EMOJI},
            {"prompt": "p", "chosen": "c", "rejected": "d", "note": "m"}]  # fmt: skip
    write_lines(tmp_path / "in.jsonl", rows)
    for kept in ("kept.jsonl", "kept.parquet"):
        args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / kept), "--labels-only"]
        args += ["--rejects", str(tmp_path / "rej.jsonl"), "--report", str(tmp_path / "rep.json")]
        assert main(["clean", *args]) == 0
        (reject,) = read_lines(tmp_path / "rej.jsonl")
        assert reject["row_index"] == 1 and "surrogate" in reject["detail"] and reject["row"] == rows[1]
    assert read_lines(tmp_path / "kept.jsonl") == [rows[0], rows[2]]
    from datasets import Dataset

    assert [r["note"] for r in Dataset.from_parquet(str(tmp_path / "kept.parquet")).to_list()] == ["n\ufffd", "m"]


def test_clean_to_parquet_of_a_mixed_column_is_a_clear_error(tmp_path, capsys):
    write_lines(tmp_path / "in.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "extra": 1},
                                        {"prompt": "p", "chosen": "a", "rejected": "b", "extra": "one"}])  # fmt: skip
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "kept.parquet"), "--labels-only"]
    args += ["--rejects", str(tmp_path / "rej.jsonl"), "--report", str(tmp_path / "rep.json")]
    assert main(["clean", *args]) == 2
    err = capsys.readouterr().err
    assert "'extra' mixes types" in err and "Traceback" not in err and not (tmp_path / "rep.json").exists()
    # With a judge the check comes before it loads (loading from "no-judge" would fail), naming the input's rows.
    (tmp_path / "no-judge").mkdir()
    judged = [a for a in args if a != "--labels-only"] + ["--judge", str(tmp_path / "no-judge")]
    assert main(["clean", *judged]) == 2
    err = capsys.readouterr().err
    assert "'extra' mixes types (int in row 0, str in row 1)" in err and "no-judge" not in err


# -- finding 3 and 6: files that break readers --------------------------------------------------------------------
def deep_line(depth: int) -> bytes:
    return b'{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + b"[" * depth + b"]" * depth + b"}\n"


@pytest.mark.parametrize("depth", [300, 5_000, 20_000])
def test_deeply_nested_json_is_a_one_line_error_naming_the_line(tmp_path, depth):
    """pyarrow's JSON reader dies with SIGSEGV near 20,000 levels, json.loads with RecursionError near 1,000: in
    a child process, so a crash shows as its exit status instead of taking the test run down."""
    import subprocess
    import sys

    good = b'{"prompt": "q", "chosen": "a", "rejected": "b", "response": "r", "x": [[1, 2], {"y": [3]}]}\n'
    (tmp_path / "no-judge").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.jsonl").write_bytes(good * 3 + deep_line(depth) + good)
    commands = {
        "audit": ["--report", "a.json"],
        "clean": ["--report", "c.json", "--output", "k.jsonl", "--rejects", "r.jsonl", "--labels-only"],
        "score": ["--output", "o.jsonl", "--judge", str(tmp_path / "no-judge")],  # the error comes first
    }
    for command, args in commands.items():
        run = subprocess.run([sys.executable, "-m", "trainers.cli", command, "--input", "in.jsonl", *args],
                             cwd=work, capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 2, (command, run.returncode, run.stderr[-500:])
        assert f"in.jsonl:4: JSON nested {depth + 1} levels deep" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.jsonl"]


def test_bytes_that_are_not_utf8_are_an_error_naming_the_file_and_line(tmp_path, capsys):
    good = b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
    (tmp_path / "in.jsonl").write_bytes(good + b'{"prompt": "q\xff", "chosen": "x", "rejected": "c"}\n' + good)
    for extra in ([], ["--shard_mb", "0.00001"], ["--shard", "1/2"], ["--shard", "0/2"]):
        assert (
            main(["audit", "--input", str(tmp_path / "in.jsonl"), "--report", str(tmp_path / "a.json"), *extra]) == 2
        )
        assert "in.jsonl:2: not UTF-8" in capsys.readouterr().err, extra


def full_disk(limit_bytes: int):
    """A child process whose files cannot grow past `limit_bytes` (writes fail with EFBIG, as on a full disk)."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.parametrize("output", ["kept.jsonl", "kept.parquet", "kept_ds"])
def test_a_full_disk_is_an_error_and_leaves_no_temporary_files(tmp_path, output):
    """pyarrow's Parquet writer aborted the process (SIGABRT) on a failed write, leaving `.tmp` files behind."""
    import os
    import subprocess
    import sys

    from test_consistency_scale import ROOT

    rows = [{"prompt": f"p{i}", "chosen": "a" * 200 + str(i), "rejected": "b" * 200 + str(i)}
            for i in range(6000)]  # fmt: skip
    write(tmp_path / "in.jsonl", rows)
    args = ["clean", "--input", "in.jsonl", "--output", output, "--rejects", "r.jsonl", "--report", "rep.json"]
    run = subprocess.run([sys.executable, "-m", "trainers.cli", *args, "--labels-only"], cwd=tmp_path,
                         capture_output=True, text=True, preexec_fn=full_disk(100_000),
                         env=os.environ | {"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert run.returncode == 2 and "File too large" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_binary_cells_are_written_as_base64_not_python_reprs(tmp_path):
    import base64

    from datasets import Dataset

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "blob": b"\x00\xffa"},
            {"prompt": "q", "chosen": "b", "rejected": "c", "blob": b"b"},
            {"prompt": "q", "chosen": "c", "rejected": "a", "blob": b"c"},
            {"prompt": "p", "chosen": "x", "rejected": "y", "blob": b"kept"}]  # fmt: skip
    Dataset.from_list(rows).to_parquet(str(tmp_path / "in.parquet"))
    args = ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "kept.jsonl"), "--labels-only"]
    assert main(["clean", *args, "--rejects", str(tmp_path / "rej.jsonl"), "--report", str(tmp_path / "r.json")]) == 0
    rejected = read_lines(tmp_path / "rej.jsonl")
    assert [r["row"]["blob"] for r in rejected] == [base64.b64encode(b).decode() for b in (b"\x00\xffa", b"b", b"c")]
    assert [r["blob"] for r in read_lines(tmp_path / "kept.jsonl")] == [base64.b64encode(b"kept").decode()]
