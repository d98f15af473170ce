"""The dataset commands under careless use and hostile files (issue 32): merge checks what it merges, one bad row
never costs the others, deep nesting and bad bytes are clear errors. Through the CLI only (exit codes, stderr,
output files), so the tests hold wherever the commands' modules live."""

import json

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
