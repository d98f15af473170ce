"""Cleaning policies and their inputs, checked where a one-line wrong version passed the suite (issue 27's survey,
tallied in docs/install.md)."""

import json

import pytest

from reward.consistency import clean_dataset, parse_row


def pair(prompt, a, b, label, **extra):
    return {"prompt": prompt, "response_a": a, "response_b": b, "label": label, **extra}


def dropped(rows, **options):
    _, rejected, _ = clean_dataset(rows, ["score-conflict"], progress=False, **options)
    return {r["row_index"] for r in rejected}


def test_score_conflict_drops_only_gaps_beyond_the_margin():
    """`margin`: a pair is dropped when its scores go against its verdict by MORE than the margin; a gap of exactly
    the margin, and equal scores under margin 0, are kept (binary-exact numbers: no rounding decides)."""
    win_equal = [pair("q", "a", "b", "a", score_a=3.0, score_b=3.0)]
    assert dropped(win_equal, margin=0.0) == set()
    against_by_half = [pair("q", "a", "b", "a", score_a=3.0, score_b=3.5)]
    assert dropped(against_by_half, margin=0.5) == set()
    assert dropped(against_by_half, margin=0.25) == {0}
    tie_apart = [pair("q", "a", "b", "tie", score_a=3.5, score_b=3.0)]
    assert dropped(tie_apart, margin=0.5) == set() and dropped(tie_apart, margin=0.25) == {0}


def test_a_negative_delta_is_refused():
    with pytest.raises(ValueError, match="delta"):
        clean_dataset([], [], delta=-0.1)
    with pytest.raises(ValueError, match="margin"):
        clean_dataset([], [], margin=-0.1)


def test_probabilities_whose_largest_is_the_tie_are_a_tie():
    """p_a, p_b, p_tie: the largest decides, the tie included (B ahead of A but behind the tie is a tie)."""

    def relation(probs):
        return parse_row({"prompt": "q", "response_a": "a", "response_b": "b", **probs}).pairs[0].relation

    assert relation({"p_a": 0.2, "p_b": 0.3, "p_tie": 0.5}) == 0
    assert relation({"p_a": 0.3, "p_b": 0.2, "p_tie": 0.5}) == 0
    assert relation({"p_a": 0.2, "p_b": 0.5, "p_tie": 0.3}) == -1
    assert relation({"p_a": 0.5, "p_b": 0.2, "p_tie": 0.3}) == 1


def test_ndjson_and_json_outputs_are_jsonl(tmp_path):
    """`clean --output kept.ndjson` (or `.json`) writes JSON Lines, as the docs list, not an error."""
    from test_cli import write_jsonl
    from test_consistency_safety import ROWS, clean_args

    from trainers.cli import main

    write_jsonl(tmp_path / "in.jsonl", ROWS)
    for name in ("kept.ndjson", "kept.json"):
        assert main(clean_args(tmp_path, out=name)) == 0, name
        assert [json.loads(line) for line in (tmp_path / name).read_text().splitlines()] == [ROWS[3]]


def test_a_report_inside_the_output_folder_is_refused(tmp_path, capsys):
    """`clean --output kept --report kept/report.json`: replacing the saved dataset folder would delete the report
    (or the report would land inside the dataset): refused before reading, whichever path is named first."""
    from test_cli import write_jsonl
    from test_consistency_safety import ROWS, clean_args

    from trainers.cli import main

    write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert main(clean_args(tmp_path, out="kept", rep="kept/report.json")) == 2
    assert "inside one another" in capsys.readouterr().err
    assert not (tmp_path / "kept").exists()
