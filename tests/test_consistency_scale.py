"""Dataset scale: prompt-hash shards (on disk, in parallel, or one per run + merge) equal the one-shot run."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainers.cli import main

ROOT = Path(__file__).resolve().parents[1]


def synthetic_rows(n_prompts=24, seed=0):
    """Pairwise rows with cycles, ties, scores, probabilities, duplicates and bad rows, in shuffled order."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        k = rng.randint(3, 7)
        level = [rng.randint(0, 3) for _ in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                rel = (level[i] > level[j]) - (level[i] < level[j])
                if rng.random() < 0.15:
                    rel = rng.choice((-1, 0, 1))
                row = {"prompt": f"prompt {p}", "response_a": f"answer {i}", "response_b": f"answer {j}",
                       "category": f"c{p % 3}", "label": {1: "a", -1: "b", 0: "tie"}[rel]}  # fmt: skip
                if rng.random() < 0.5:
                    row |= {"score_a": level[i] + rng.random(), "score_b": level[j] + rng.random() * 7}
                if rng.random() < 0.3:
                    pa = rng.random()
                    row |= {"p_a": pa, "p_b": (1 - pa) * 0.8, "p_tie": (1 - pa) * 0.2}
                    del row["label"]
                rows.append(row)
    rows += [rows[3], {"prompt": "prompt 1", "response_a": "x", "response_b": "x", "label": "a"}, {"prompt": "z"}]
    rng.shuffle(rows)
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def clean(d, *extra, out="kept.jsonl", rej="rejects.jsonl", rep="report.json", policy=("min-feedback", "drop-cycles")):
    args = ["clean", "--input", str(d / "in.jsonl"), "--rejects", str(d / rej), "--report", str(d / rep)]
    args += ["--output", str(d / out)] if out else []
    assert main([*args, "--labels-only", "--policy", *policy, *extra]) == 0


def report(path):
    r = json.loads(path.read_text())
    r.pop("outputs")
    return r


def test_shards_on_disk_and_in_parallel_equal_the_one_shot_run(tmp_path):
    write(tmp_path / "in.jsonl", synthetic_rows())
    clean(tmp_path)
    one = report(tmp_path / "report.json")
    assert one["rows_in"] == one["rows_kept"] + one["rows_rejected"] and one["rows_rejected"] > 10
    assert one["before"]["score_histogram"] and one["before"]["entropy_histogram"]
    assert set(one["rejected_by_reason"]) >= {"min-feedback", "bad-input", "duplicate-pair"}
    for name, extra in (("disk", ["--shard_mb", "0.01", "--num_proc", "1"]), ("par", ["--num_proc", "3"])):
        clean(tmp_path, *extra, out=f"k-{name}.jsonl", rej=f"r-{name}.jsonl", rep=f"p-{name}.json")
        assert report(tmp_path / f"p-{name}.json") == one
        assert (tmp_path / f"k-{name}.jsonl").read_bytes() == (tmp_path / "kept.jsonl").read_bytes()
        assert (tmp_path / f"r-{name}.jsonl").read_bytes() == (tmp_path / "rejects.jsonl").read_bytes()


def test_four_shard_runs_and_merge_equal_the_one_shot_run(tmp_path, capsys):
    write(tmp_path / "in.jsonl", synthetic_rows(seed=1))
    clean(tmp_path)
    for i in range(4):
        clean(tmp_path, "--shard", f"{i}/4", out=None, rej=f"r{i}.jsonl", rep=f"p{i}.json")
    parts = [report(tmp_path / f"p{i}.json") for i in range(4)]
    assert all(0 < p["rows_in"] < parts[0]["input_rows"] for p in parts)  # each shard a real part
    shards = [str(tmp_path / f"p{i}.json") for i in (2, 0, 3, 1)]  # any order
    out = ["--output", str(tmp_path / "k-m.jsonl"), "--rejects", str(tmp_path / "r-m.jsonl")]
    assert main(["merge", "--reports", *shards, "--report", str(tmp_path / "merged.json"), *out]) == 0
    assert report(tmp_path / "merged.json") == report(tmp_path / "report.json")
    assert (tmp_path / "k-m.jsonl").read_bytes() == (tmp_path / "kept.jsonl").read_bytes()
    assert (tmp_path / "r-m.jsonl").read_bytes() == (tmp_path / "rejects.jsonl").read_bytes()
    # audit too
    audit = ["audit", "--input", str(tmp_path / "in.jsonl")]
    assert main([*audit, "--report", str(tmp_path / "a.json")]) == 0
    for i in range(3):
        assert main([*audit, "--report", str(tmp_path / f"a{i}.json"), "--shard", f"{i}/3"]) == 0
    parts = [str(tmp_path / f"a{i}.json") for i in range(3)]
    assert main(["merge", "--reports", *parts, "--report", str(tmp_path / "am.json")]) == 0
    assert report(tmp_path / "am.json") == report(tmp_path / "a.json")


def test_bad_shard_specs_and_merges_are_clear_errors(tmp_path, capsys):
    write(tmp_path / "in.jsonl", synthetic_rows())
    for spec in ("5/4", "4/4", "-1/2", "x/2", "1"):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["audit", "--input", str(tmp_path / "in.jsonl"), "--report", str(tmp_path / "a.json"),
                     "--shard", spec]) == 2  # fmt: skip
        assert "--shard" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == before
    for i in range(2):
        clean(tmp_path, "--shard", f"{i}/2", out=None, rej=f"r{i}.jsonl", rep=f"p{i}.json")
    clean(tmp_path, "--shard", "1/2", out=None, rej="rx.jsonl", rep="px.json", policy=("drop-cycles",))
    write(tmp_path / "other.jsonl", synthetic_rows(seed=5))
    args = ["clean", "--input", str(tmp_path / "other.jsonl"), "--rejects", str(tmp_path / "ro.jsonl")]
    args += ["--report", str(tmp_path / "po.json"), "--labels-only", "--policy", "min-feedback", "drop-cycles"]
    assert main([*args, "--shard", "1/2"]) == 0
    merged = ["--report", str(tmp_path / "m.json"), "--output", str(tmp_path / "k.jsonl"), "--rejects"]
    merged.append(str(tmp_path / "r.jsonl"))
    p = [str(tmp_path / n) for n in ("p0.json", "p1.json", "px.json", "po.json")]
    for reports, message in (
        ([p[0], p[2]], "differ in options"),  # other policies
        ([p[0], p[3]], "differ in input_fingerprint"),  # another input
        ([p[0]], "exactly once"),  # a shard missing
        ([p[0], p[0]], "exactly once"),  # a shard twice
    ):
        assert main(["merge", "--reports", *reports, *merged]) == 2
        assert message in capsys.readouterr().err
        assert not any((tmp_path / n).exists() for n in ("m.json", "k.jsonl", "r.jsonl"))
    # The input changed after the shards ran: the merge refuses to copy rows from it.
    with open(tmp_path / "in.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "new", "chosen": "a", "rejected": "b"}) + "\n")
    assert main(["merge", "--reports", p[0], p[1], *merged]) == 2
    assert "changed" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("m.json", "k.jsonl", "r.jsonl"))


def test_a_file_changing_while_sharded_is_an_error(tmp_path, monkeypatch, capsys):
    import trainers.data.shards

    write(tmp_path / "in.jsonl", synthetic_rows())
    real = trainers.data.shards.ShardStore.add

    def add_and_append(self, block):
        real(self, block)
        with open(tmp_path / "in.jsonl", "a") as f:
            f.write(json.dumps({"prompt": "late", "chosen": "a", "rejected": "b"}) + "\n")

    monkeypatch.setattr(trainers.data.shards.ShardStore, "add", add_and_append)
    args = ["clean", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "k.jsonl"), "--rejects"]
    args += [str(tmp_path / "r.jsonl"), "--report", str(tmp_path / "p.json"), "--labels-only", "--shard_mb", "0.01"]
    assert main(args) == 2
    assert "changed while it was being read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no scratch left


@pytest.mark.parametrize("fmt", ["parquet", "dataset"])
def test_arrow_inputs_shard_like_jsonl(tmp_path, fmt):
    from datasets import Dataset

    rows = [{k: r.get(k) for k in ("prompt", "response_a", "response_b", "label")} for r in synthetic_rows(seed=2)]
    rows = [r for r in rows if r["response_a"] and r["label"]]
    data = Dataset.from_list(rows)
    src = tmp_path / ("in.parquet" if fmt == "parquet" else "in_ds")
    data.to_parquet(str(src)) if fmt == "parquet" else data.save_to_disk(str(src))
    out = "kept.parquet" if fmt == "parquet" else "kept_ds"
    args = ["clean", "--input", str(src), "--rejects", str(tmp_path / "r.jsonl"), "--labels-only"]
    assert main([*args, "--output", str(tmp_path / out), "--report", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--output", str(tmp_path / "k2.jsonl"), "--report", str(tmp_path / "b.json"),
                 "--num_proc", "2"]) == 0  # fmt: skip
    kept = (
        Dataset.from_parquet(str(tmp_path / out)) if fmt == "parquet" else Dataset.load_from_disk(str(tmp_path / out))
    )
    two = [json.loads(line) for line in (tmp_path / "k2.jsonl").read_text().splitlines()]
    assert kept.to_list() == two and 0 < len(two) < len(rows)
    a, b = report(tmp_path / "a.json"), report(tmp_path / "b.json")
    assert a == b and a["rows_kept"] == len(two)


def test_label_only_commands_import_no_torch_transformers_or_trl(tmp_path):
    write(tmp_path / "in.jsonl", synthetic_rows())
    d = str(tmp_path)
    code = f"""
import sys, contextlib, io
from trainers.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["--help"]) == 0
assert main(["audit", "--input", "{d}/in.jsonl", "--report", "{d}/a.json"]) == 0
assert main(["clean", "--input", "{d}/in.jsonl", "--output", "{d}/k.jsonl", "--rejects", "{d}/r.jsonl",
             "--report", "{d}/p.json", "--labels-only", "--num_proc", "2"]) == 0
print(sorted(m for m in ("torch", "transformers", "trl") if m in sys.modules))
"""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    help_run = subprocess.run([sys.executable, "-m", "trainers.cli", "--help"], capture_output=True, text=True,
                              env=env | {"PYTHONVERBOSE": "0"})  # fmt: skip
    assert help_run.returncode == 0 and "merge" in help_run.stdout


def test_ray_example_runs_its_shards_as_local_processes(tmp_path):
    write(tmp_path / "in.jsonl", synthetic_rows(seed=3))
    clean(tmp_path)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    script = ROOT / "recipes" / "consistency" / "ray_clean.py"
    result = subprocess.run(
        [sys.executable, str(script), "--input", str(tmp_path / "in.jsonl"), "--out_dir", str(tmp_path / "ray"),
         "--shards", "3", "--local", "--", "--labels-only", "--policy", "min-feedback", "drop-cycles"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert report(tmp_path / "ray" / "report.json") == report(tmp_path / "report.json")
    assert (tmp_path / "ray" / "kept.jsonl").read_bytes() == (tmp_path / "kept.jsonl").read_bytes()


def test_column_parsing_equals_row_parsing():
    import pyarrow as pa

    from reward.consistency.rows import BadRow, parse_columns, parse_row

    rows = synthetic_rows(n_prompts=6, seed=4)
    rows += [
        {"prompt": "q", "response_a": "a", "response_b": "b", "p_a": 0.5, "p_b": 0.6, "p_tie": 0.1},  # sum != 1
        {"prompt": "q", "response_a": "a", "response_b": "b", "p_a": -0.1, "p_b": 0.6, "p_tie": 0.5},
        {"prompt": "q", "response_a": "a", "response_b": "b", "p_a": 0.5},  # p_b, p_tie missing
        {"prompt": "q", "response_a": " ", "response_b": "b", "label": "a"},
        {"prompt": "\x1c\x1d", "response_a": "a", "response_b": "b", "label": "a"},  # str.isspace() is True
        {"prompt": "q", "response_a": "a", "response_b": "b", "label": "A"},
        {"prompt": "q", "response_a": "a", "response_b": "b"},  # no label
        {"prompt": "q", "response_a": "a", "response_b": "b", "label": "tie", "order_consistent": False},
        {"prompt": "q", "response_a": "a", "response_b": "b", "p_a": 0.2, "p_b": 0.2, "p_tie": 0.6, "label": "b"},
    ]
    from trainers.data.shards import _read_json

    table = _read_json([json.dumps(r).encode() for r in rows])  # as the CLI reads JSONL
    for need_label in (True, False):
        fast = parse_columns(table, need_label)
        assert sum(p is not None for p in fast) > len(rows) // 2  # the fast path did the bulk
        for row, p in zip(rows, fast):
            try:
                slow = parse_row(row, need_label)
            except BadRow:
                assert p is None, row
                continue
            if p is not None:
                assert p == slow, row
    # Another format, or a column json would read differently: row by row.
    assert parse_columns(pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b"}])) == [None]
    assert parse_columns(pa.Table.from_pylist([{"prompt": "q", "response_a": "a", "response_b": "b", "score_a": True,
                                                "label": "a"}])) == [None]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_build_equals_the_row_by_row_build(seed):
    from reward.consistency.clean import clean_parsed
    from trainers.data.shards import ShardRows

    rows = synthetic_rows(n_prompts=10, seed=seed)
    rows += [rows[0] | {"label": "tie"}, rows[5], rows[5], {"prompt": "q", "response_a": "a", "response_b": "b"}]
    lines = [json.dumps(r).encode() for r in rows]
    shard = ShardRows("in.jsonl", np.arange(len(lines)))
    shard.add("lines", lines)
    cols = shard.columns(need_label=True)
    assert cols is not None and cols.bad  # bad rows are read row by row, the rest as columns
    for policies in ([], ["equivalence", "min-feedback", "drop-cycles"]):
        fast = clean_parsed(cols, len(rows), policies)
        slow = clean_parsed(shard.parsed(need_label=True), len(rows), policies)
        assert fast == slow
        assert {"conflicting-duplicate", "duplicate-pair", "bad-input"} <= {v[0] for v in fast[0].values()}


# Raw JSONL lines as a rejects file must show them: each is spliced or re-encoded, and either way the bytes must
# be what `json.dumps(record, ensure_ascii=False, default=str)` writes (the rejects as they were before splicing).
_REJECT_LINES = [
    b'{"prompt": "p", "response_a": "a", "response_b": "b", "label": "a"}',  # the layout learnt first
    b'{"prompt": "p", "response_a": "caf\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x99\x82", "response_b": "b", "label": "b"}',
    b'{"prompt": "p", "response_a": "caf\\u00e9", "response_b": "b", "label": "a"}',  # escaped unicode: re-encoded raw
    b'{"prompt": "p", "response_a": "tab\\t nl\\n q\\" bs\\\\ \\b\\f\\r", "response_b": "b", "label": "a"}',
    b'{"prompt": "p", "response_a": "\\u001f \\u0001", "response_b": "\\/", "label": "a"}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 1}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": -0}',  # comes back as 0
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 1e-7}',  # comes back as 1e-07
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 0.1}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 1.0}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": null}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": true}',
    b'{"prompt": "p", "response_a": ["x", {"k": [1, 2.5]}], "response_b": {"role": "user"}, "label": "a"}',
    b'{"prompt": "p", "response_a": [1,2], "response_b": "y", "label": "a"}',
    b'{"label": "a", "prompt": "p", "response_a": "x", "response_b": "y"}',  # another key order
    b'{"prompt":"p","response_a":"x","response_b":"y","label":"a"}',  # compact separators
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": "a", "label": "b"}',  # duplicate key
    b'{"prompt": "p", "prompt": "q", "response_b": "y", "label": "a"}',  # duplicate key, four keys
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": "a"} ',  # trailing space
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": "a"}\r',  # CRLF file
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 123456789012345678901234567890}',
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": 007}',  # not JSON: never spliced
    b'{"prompt": "p", "response_a": "x", "response_b": "y", "label": "a"}',  # the fast path after all of those
]


def test_spliced_reject_lines_are_byte_identical_to_re_encoded_ones():
    from trainers.data.rejects import _ENCODER, _Splicer, reject_lines
    from trainers.data.shards import ShardRows, UserError

    rows = ShardRows("in.jsonl", np.arange(len(_REJECT_LINES)))
    rows.add("lines", _REJECT_LINES)
    records = [
        {"row_index": i, "reason": 'cyc"le, "row": 9', "detail": "é\n", "evidence_rows": [i, 3], "row": i}
        for i in range(len(_REJECT_LINES))
    ]
    for i, record in enumerate(records):
        try:
            row = json.loads(_REJECT_LINES[i].decode())
        except json.JSONDecodeError:
            with pytest.raises(UserError, match="not valid JSON"):
                reject_lines([record], rows)
            continue
        expected = _ENCODER.encode(record | {"row": row}).encode() + b"\n"
        assert json.dumps(record | {"row": row}, ensure_ascii=False, default=str).encode() + b"\n" == expected
        # Learnt from line 0 first, as a shard's rejects are written: line i then takes the fast path if it can.
        assert reject_lines([records[0], record], rows)[1] == expected, _REJECT_LINES[i]
    # The splice did run (the first line's layout, the last line), and bytes the encoder would change did not.
    splice = _Splicer()
    splice.learn(json.loads(_REJECT_LINES[0]))
    spliced = [i for i, line in enumerate(_REJECT_LINES) if splice.canonical(line)]
    assert spliced == [0, 1, 3, 5, 10, 11, len(_REJECT_LINES) - 1]
    # The batch check (pyarrow's RE2 over a chunk's lines, what a clean runs) splices exactly those; a line that is
    # not UTF-8 but fits the layout is spliced by neither, and the chunk's other lines are checked one by one.
    assert splice.canonical_many([*_REJECT_LINES, None]) == [i in spliced for i in range(len(_REJECT_LINES) + 1)]
    broken = _REJECT_LINES[0].replace(b'"a"}', b'"\xe9"}')
    assert not splice.canonical(broken) and splice.canonical_many([_REJECT_LINES[0], broken]) == [True, False]
    # Layouts too large for one RE2 pattern (rows of thousands of keys) are checked by `canonical`, not an error.
    wide = _Splicer()
    for layout in range(2):
        wide.learn({f"k{layout}_{i}": "v" for i in range(5_000)})
    line = json.dumps({f"k1_{i}": "v" for i in range(5_000)}).encode()
    assert wide.canonical(line) and wide.canonical_many([line]) == [True]


def test_rejects_of_a_file_with_awkward_rows_equal_re_encoding(tmp_path):
    """End to end: every rejected row's `row` is the row `json.loads` reads, written as the encoder writes it."""
    lines = [line for line in _REJECT_LINES if b"007" not in line]
    pair = b'{"prompt": "c", "response_a": "%s", "response_b": "%s", "label": "a"}'
    cycle = [pair % (p[:1], p[1:]) for p in (b"xy", b"yz", b"zx")]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(cycle + lines + cycle[:1]) + b"\n")
    out = [str(tmp_path / n) for n in ("kept.jsonl", "rejects.jsonl", "report.json")]
    args = ["clean", "--input", str(path), "--labels-only", "--policy", "drop-cycles", "--output", out[0]]
    assert main([*args, "--rejects", out[1], "--report", out[2]]) == 0
    rejects = Path(out[1]).read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["row_index"] for line in rejects] == [0, 1, 2, *range(8, 26)]  # kept: 3-7
    rows_in = path.read_bytes().splitlines()
    for line in rejects:
        record = json.loads(line)
        assert record["row"] == json.loads(rows_in[record["row_index"]])
        assert json.dumps(record, ensure_ascii=False, default=str).encode() + b"\n" == line
