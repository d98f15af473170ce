import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import read_jsonl, write_jsonl

from trainers.cli import main

ROWS = [
    {"prompt": "q", "chosen": "a", "rejected": "b", "id": 0},
    {"prompt": "q", "chosen": "b", "rejected": "c", "id": 1},
    {"prompt": "q", "chosen": "c", "rejected": "a", "id": 2},
    {"prompt": "q", "chosen": "a", "rejected": "d", "id": 3},
    {"prompt": "p", "chosen": "x", "rejected": "x", "id": 4},  # chosen == rejected
]


def test_audit_report(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert (
        main(["audit", "--input", str(tmp_path / "in.jsonl"), "--report", str(tmp_path / "r.json"), "--k", "3", "4"])
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["non_transitivity"] == {"3": 1.0, "4": None}  # one complete triple, a circle; no complete 4-set
    assert report["non_transitivity_counts"]["3"] == {
        "ratio": 1.0,
        "subsets": 1,
        "bad": 1,
        "equal": 0,
        "circle": 1,
        "equal_ratio": 0.0,
        "circle_ratio": 1.0,
        "left_out": 3,
    }
    assert report["conflict_ratio"] is None and report["conflict_counts"]["pairs"] == 0  # no scores in the file
    assert (report["rows_in"], report["rows_usable"], report["rows_unusable"]) == (5, 4, 1)
    assert report["rejected_by_reason"] == {"bad-input": 1}


def test_clean_jsonl(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    out, rej, rep = tmp_path / "kept.jsonl", tmp_path / "rejects.jsonl", tmp_path / "report.json"
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--rejects", str(rej), "--report", str(rep)]
    assert main(["clean", *args, "--policy", "drop-cycles", "--labels-only"]) == 0
    assert read_jsonl(out) == [ROWS[3]]
    rejects = read_jsonl(rej)
    assert [(r["row_index"], r["reason"]) for r in rejects] == [
        (0, "cycle"),
        (1, "cycle"),
        (2, "cycle"),
        (4, "bad-input"),
    ]
    assert rejects[0]["row"] == ROWS[0] and rejects[0]["evidence_rows"] == [0, 1, 2]
    report = json.loads(rep.read_text())
    assert report["rows_kept"] + report["rows_rejected"] == report["rows_in"] == 5
    assert report["before"]["non_transitivity"]["3"] == 1.0 and report["policies"] == ["drop-cycles"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_clean_jsonl_never_imports_pandas(tmp_path):
    """pyarrow's `to_numpy` and any Python value made an Arrow scalar import pandas, ~1 s of a 300k-row clean: the
    columns are read off Arrow buffers instead. Labels, probabilities, scores and order flags (with nulls) go
    through that read, in several prompt-hash shards; the kept rows show it read them right."""
    rows = [
        {"prompt": f"q{p}", "response_a": f"a{i}", "response_b": f"a{j}", "label": "a",
         "p_a": 0.7, "p_b": 0.2, "p_tie": 0.1, "score_a": float(j), "score_b": float(i) if i else None,
         "order_consistent": None if (i + j) % 3 else (j % 2 == 0)}
        for p in range(40) for i in range(4) for j in range(i + 1, 4)
    ]  # fmt: skip
    rows[2] |= {"label": "b", "p_a": 0.2, "p_b": 0.7}  # q0: a3 > a0, beaten by a1 and a2, which beat a3: cycles
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["clean", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "kept.jsonl"), "--shard_mb",
            "0.01", "--rejects", str(tmp_path / "rej.jsonl"), "--report", str(tmp_path / "rep.json")]  # fmt: skip
    code = f"import sys; from trainers.cli import main; main({args!r}); print('pandas' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"], done.stderr
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["rejected_by_reason"] == {"cycle": 6}  # all of q0's pairs: one strongly connected component
    assert read_jsonl(tmp_path / "kept.jsonl") == rows[6:]


def test_clean_parquet_and_saved_dataset_keep_their_format(tmp_path):
    from datasets import Dataset, DatasetDict, load_from_disk

    rows = [r for r in ROWS if r["id"] != 4]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "in.parquet"))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "in_ds"))
    for src, dst in (("in.parquet", "kept.parquet"), ("in_ds", "kept_ds")):
        args = [
            "--input",
            str(tmp_path / src),
            "--output",
            str(tmp_path / dst),
            "--rejects",
            str(tmp_path / "r.jsonl"),
        ]
        assert main(["clean", *args, "--report", str(tmp_path / "rep.json"), "--policy", "drop-cycles"]) == 0
    assert Dataset.from_parquet(str(tmp_path / "kept.parquet")).to_list() == [ROWS[3]]
    saved = load_from_disk(str(tmp_path / "kept_ds"))
    assert list(saved) == ["train"] and saved["train"].to_list() == [ROWS[3]]


def test_clean_errors_leave_no_output(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n')
    args = [
        "--output",
        str(tmp_path / "k.jsonl"),
        "--rejects",
        str(tmp_path / "r.jsonl"),
        "--report",
        str(tmp_path / "p.json"),
    ]
    assert main(["clean", "--input", str(tmp_path / "in.jsonl"), *args]) == 2
    assert "in.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["clean", "--input", str(tmp_path / "missing.jsonl"), *args]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    write_jsonl(tmp_path / "ok.jsonl", ROWS)
    assert main(["clean", "--input", str(tmp_path / "ok.jsonl"), *args, "--policy", "nope"]) == 2
    assert "--policy 'nope'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "ok.jsonl"]


def test_clean_with_a_judge(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": "Name a colour.", "response_a": "Red.", "response_b": "Blue."},
        {"prompt": "Name a colour.", "response_a": "Blue.", "response_b": "Green."},
        {"prompt": "Name a colour.", "response_a": "Green.", "response_b": "Red.", "label": "a"},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out, rej, rep = tmp_path / "kept.jsonl", tmp_path / "rejects.jsonl", tmp_path / "report.json"
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--rejects", str(rej), "--report", str(rep)]
    judge = ["--judge", tiny_model_dir, "--judge_device", "cpu", "--relations", "judge"]
    assert main(["clean", *args, *judge, "--policy", "order-inconsistent", "drop-cycles"]) == 0
    report = json.loads(rep.read_text())
    assert report["judged_pairs"] == 3 and report["judge_failures"] == 0 and report["relations"] == "judge"
    kept, rejects = read_jsonl(out), read_jsonl(rej)
    assert len(kept) + len(rejects) == 3 == report["rows_in"]
    assert {r["reason"] for r in rejects} <= {"order-inconsistent", "cycle"}
    # A judge's verdicts for the same pairs, read directly, say which rows must have gone as order-inconsistent.
    from reward import load_judge

    prefs = load_judge(tiny_model_dir, device="cpu", progress=False).compare(
        *zip(*[(r["prompt"], r["response_a"], r["response_b"]) for r in rows])
    )
    flipped = {i for i, p in enumerate(prefs) if not p.order_consistent}
    assert {r["row_index"] for r in rejects if r["reason"] == "order-inconsistent"} == flipped
    assert main(["clean", *args, "--labels-only", "--judge", tiny_model_dir]) == 2


def test_audit_plots_and_wandb(tmp_path, wandb_offline):
    from wandb_records import read_run

    def pair(a, b, probs, scores=(None, None)):
        p = dict(zip(("p_a", "p_b", "p_tie"), probs))
        s = {"score_a": scores[0], "score_b": scores[1]}
        return {"prompt": "q", "response_a": a, "response_b": b, **p, **s, "category": "math"}

    rows = [
        pair("a", "b", (0.7, 0.2, 0.1), (4.0, 2.0)),
        pair("b", "c", (0.6, 0.3, 0.1), (2.0, 3.0)),
        pair("c", "a", (0.5, 0.4, 0.1)),
        {"prompt": "r", "chosen": "x", "rejected": "y", "category": "writing"},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = [
        "--input",
        str(tmp_path / "in.jsonl"),
        "--report",
        str(tmp_path / "r.json"),
        "--plots",
        str(tmp_path / "p"),
    ]
    assert main(["audit", *args, "--wandb-project", "trustreward-audit"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    pngs = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert pngs == ["agreement.png", "categories.png", "entropy.png", "scores.png"]
    assert all((tmp_path / "p" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    # (a, b): scores 4 > 2 and a wins, agreed; (b, c): 2 < 3 but b wins, a conflict; (c, a): the scores come from
    # the other rows (c = 3, a = 4) and c wins, a conflict.
    assert report["conflict_counts"]["conflicts"] == 2 and report["conflict_counts"]["pairs"] == 3
    none = {"3": None, "4": None, "5": None}
    assert report["non_transitivity_by_category"] == {"math": none | {"3": 1.0}, "writing": none}
    _, summary = read_run(tmp_path)
    assert summary["conflict_ratio"] == pytest.approx(2 / 3) and summary["non_transitivity/3"] == 1.0
    assert summary["agreement/_type"] == "image-file" and summary["rows_in"] == 4
