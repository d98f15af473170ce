"""The CLI never destroys data: distinct paths, outputs committed as a set, private temp files, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import write_jsonl

import trainers.data.outputs
from trainers.cli import main

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"prompt": "q", "chosen": "a", "rejected": "b"},
    {"prompt": "q", "chosen": "b", "rejected": "c"},
    {"prompt": "q", "chosen": "c", "rejected": "a"},
    {"prompt": "q", "chosen": "a", "rejected": "d"},
]


def clean_args(d, inp="in.jsonl", out="kept.jsonl", rej="rejects.jsonl", rep="report.json"):
    return ["clean", "--input", str(d / inp), "--output", str(d / out), "--rejects", str(d / rej),
            "--report", str(d / rep), "--labels-only", "--policy", "drop-cycles"]  # fmt: skip


def snapshot(d):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(d.iterdir())}


@pytest.mark.parametrize(
    "aliases",
    [
        {"out": "in.jsonl"},
        {"rej": "in.jsonl"},
        {"rep": "in.jsonl"},
        {"out": "x.jsonl", "rej": "x.jsonl"},
        {"out": "x.jsonl", "rep": "x.jsonl"},
        {"rej": "x.jsonl", "rep": "x.jsonl"},
        {"rep": "link.json"},  # a symlink to the input
        {"out": "hard.jsonl"},  # a hard link to the input
    ],
)
def test_clean_refuses_aliased_paths_before_reading(tmp_path, capsys, aliases):
    (tmp_path / "in.jsonl").write_text('{"prompt": oops}\n')  # read first, this would fail as bad JSON
    (tmp_path / "link.json").symlink_to(tmp_path / "in.jsonl")
    os.link(tmp_path / "in.jsonl", tmp_path / "hard.jsonl")
    before = snapshot(tmp_path)
    assert main(clean_args(tmp_path, **aliases)) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_audit_and_saved_dataset_refuse_aliases(tmp_path, capsys):
    from datasets import Dataset

    write_jsonl(tmp_path / "in.jsonl", ROWS)
    before = snapshot(tmp_path)
    assert main(["audit", "--input", str(tmp_path / "in.jsonl"), "--report", str(tmp_path / "in.jsonl")]) == 2
    assert snapshot(tmp_path) == before
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    files = sorted(p.name for p in (tmp_path / "ds").iterdir())
    for out in ("ds", "ds/kept"):  # in place, or inside the input folder
        assert main(clean_args(tmp_path, inp="ds", out=out)) == 2
        assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == files
    assert len(Dataset.load_from_disk(str(tmp_path / "ds"))) == 4


def test_outputs_are_a_set_an_interrupted_commit_leaves_no_report(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert main(clean_args(tmp_path)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    # The report, written last, names its siblings with their sizes and rows.
    assert report["outputs"]["output"] == {"path": str(tmp_path / "kept.jsonl"), "bytes": 48, "rows": 1}
    assert report["outputs"]["rejects"]["rows"] == 3
    assert report["outputs"]["rejects"]["bytes"] == (tmp_path / "rejects.jsonl").stat().st_size
    # Second run on other rows, killed after its first rename: no report may vouch for the mixed set.
    write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    calls = []
    real = trainers.data.outputs._replace

    def replace_then_die(tmp, path, merge=False):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        real(tmp, path, merge)

    monkeypatch.setattr(trainers.data.outputs, "_replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(clean_args(tmp_path))
    assert not (tmp_path / "report.json").exists()
    assert len(calls) == 1 and calls[0].name in ("kept.jsonl", "rejects.jsonl")  # one new output, one old
    assert not [p for p in tmp_path.iterdir() if ".trustreward-" in p.name]  # temporaries removed


def test_stale_temp_of_a_killed_run_is_removed(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".kept.jsonl.trustreward-{dead.pid}-0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".kept.jsonl.trustreward-{os.getpid()}-0123abcd.tmp"  # a run still going: left alone
    live.write_bytes(b"y")
    assert main(clean_args(tmp_path)) == 0
    assert not stale.exists() and live.exists()
    assert f"removed {stale}" in capsys.readouterr().err


def test_temp_files_are_exclusive_and_never_follow_a_symlink(tmp_path, monkeypatch, capsys):
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    outputs = trainers.data.outputs
    names = {outputs.OutputSet({"output": tmp_path / "kept.jsonl"})._temp_name("output") for _ in range(3)}
    assert len(names) == 3  # unpredictable: a fresh random token each time
    monkeypatch.setattr(trainers.data.outputs.secrets, "token_hex", lambda n: "feedfacefeedface")
    planted = tmp_path / f".kept.jsonl.trustreward-{os.getpid()}-feedfacefeedface.tmp"
    planted.symlink_to(victim)
    assert main(clean_args(tmp_path)) == 2
    assert "File exists" in capsys.readouterr().err
    assert victim.read_text() == "precious" and planted.is_symlink()
    assert not (tmp_path / "kept.jsonl").exists() and not (tmp_path / "report.json").exists()


def test_output_format_follows_the_extension(tmp_path, capsys):
    import pyarrow.parquet as pq
    from datasets import Dataset

    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "in.parquet"))
    assert main(clean_args(tmp_path, inp="in.parquet", out="kept.jsonl")) == 0
    assert [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()] == [ROWS[3]]
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert main(clean_args(tmp_path, out="kept.parquet")) == 0
    assert pq.read_table(tmp_path / "kept.parquet").to_pylist() == [ROWS[3]]
    assert main([*clean_args(tmp_path, out="kept.data"), "--format", "jsonl"]) == 0
    assert json.loads((tmp_path / "kept.data").read_text()) == ROWS[3]
    assert main(clean_args(tmp_path, out="kept.csv")) == 2
    assert "unknown output extension" in capsys.readouterr().err


def test_bom_file_reads_and_kept_lines_are_byte_identical(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS[:3]]
    lines.append('{"prompt":"q",  "chosen": "a\\u00e9", "rejected":"d"}')  # odd spacing and an escape
    (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n")
    assert main(clean_args(tmp_path)) == 0
    assert (tmp_path / "kept.jsonl").read_bytes() == lines[3].encode() + b"\n"
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["row_index"] for r in rejects] == [0, 1, 2] and rejects[0]["row"] == ROWS[0]


def cli(*args, env_extra=None):
    env = os.environ | {"PYTHONPATH": str(ROOT)} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "trainers.cli", *args], capture_output=True, text=True, env=env)


def test_user_errors_are_one_line_without_traceback(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", ROWS)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n')
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "response": "x"}\n'.encode("latin-1"))
    (tmp_path / "folder").mkdir()
    ok, rep = str(tmp_path / "ok.jsonl"), str(tmp_path / "r.json")
    audit = ["audit", "--report", rep, "--input"]
    score = ["score", "--output", str(tmp_path / "o.jsonl"), "--input"]
    cases = {
        "bad.jsonl:2: not valid JSON": [*audit, str(tmp_path / "bad.jsonl")],
        "missing.jsonl: no such file": [*audit, str(tmp_path / "missing.jsonl")],
        "not a dataset saved with save_to_disk": [*audit, str(tmp_path / "folder")],
        "--k values must be in 3..8": [*audit, ok, "--k", "2"],
        "invalid int value": [*audit, ok, "--k", "three"],
        "--delta must be a finite number": [*audit, ok, "--delta", "-1"],
        "--policy 'nope'": [*clean_args(tmp_path, inp="ok.jsonl"), "--policy", "nope"],
        "--scale must be in 2..100": [*score, ok, "--scale", "1"],
        "--method for score must be one of": [*score, ok, "--method", "nope"],
        "--method for compare must be one of": [
            "compare",
            "--output",
            str(tmp_path / "o.jsonl"),
            "--input",
            ok,
            "--method",
            "mean",
        ],  # fmt: skip
        "--judge /nonexistent: no such model directory": [*score, ok, "--judge", "/nonexistent"],
        "latin1.jsonl:1: not UTF-8": [*score, str(tmp_path / "latin1.jsonl")],  # read before the judge loads
    }
    for message, args in cases.items():
        result = cli(*args)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (message, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o.jsonl").exists()
    # Options are checked before the data is read: a bad option on a bad file names the option.
    result = cli(*audit, str(tmp_path / "bad.jsonl"), "--k", "2")
    assert "--k values" in result.stderr
    debug = cli(*audit, str(tmp_path / "bad.jsonl"), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_compare_reads_parquet_and_writes_by_extension(tmp_path, tiny_model_dir):
    from datasets import Dataset

    rows = [{"prompt": "q?", "response_a": "yes", "response_b": "no", "id": 7}]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "in.parquet"))
    args = ["--input", str(tmp_path / "in.parquet"), "--judge", tiny_model_dir, "--judge_device", "cpu"]
    assert main(["compare", *args, "--output", str(tmp_path / "out.jsonl")]) == 0
    (r,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert r["id"] == 7 and r["p_a"] + r["p_b"] + r["p_tie"] == pytest.approx(1.0)
    assert main(["compare", *args, "--output", str(tmp_path / "out.parquet")]) == 0
    assert Dataset.from_parquet(str(tmp_path / "out.parquet"))[0]["verdict"] == r["verdict"]


def test_an_existing_folder_is_replaced_only_if_it_is_a_saved_dataset(tmp_path, capsys):
    from datasets import Dataset

    write_jsonl(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(clean_args(tmp_path, out="mine")) == 2  # no extension: a save_to_disk folder, over a user's folder
    assert "not a saved dataset" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    assert main(clean_args(tmp_path, rep="mine")) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(clean_args(tmp_path, out="kept_ds")) == 0
    assert main(clean_args(tmp_path, out="kept_ds")) == 0  # a previous output: replaced
    assert Dataset.load_from_disk(str(tmp_path / "kept_ds")).to_list() == [ROWS[3]]
    # Plots go into their folder file by file: what else it holds stays.
    write_jsonl(tmp_path / "cat.jsonl", [r | {"category": "x"} for r in ROWS])
    assert main(["audit", "--input", str(tmp_path / "cat.jsonl"), "--report", str(tmp_path / "a.json"),
                 "--plots", str(tmp_path / "mine")]) == 0  # fmt: skip
    assert (tmp_path / "mine" / "notes.txt").exists() and list((tmp_path / "mine").glob("*.png"))
