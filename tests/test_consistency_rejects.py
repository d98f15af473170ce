"""The rejects store (reward/consistency/rejected.py), reject lines and the shard merge by row order
(trainers/data/rejects)."""

import json
import random

import numpy as np

from reward.consistency.rejected import Rejects
from trainers.data.rejects import merge_reject_files


def test_rejects_keep_each_rows_first_reason_and_sorted_unique_evidence():
    # Reference: what clean.py kept before #33, a dict filled with setdefault, evidence sorted(set(...)).
    rng = random.Random(0)
    for _ in range(50):
        store, want = Rejects(), {}
        for step in range(rng.randint(1, 8)):
            if rng.random() < 0.4:
                row, evidence = rng.randrange(30), [rng.randrange(30) for _ in range(rng.randint(0, 4))]
                store.add(row, f"single{step}", f"d{step}", evidence)
                want.setdefault(row, (f"single{step}", f"d{step}", sorted(set(evidence))))
                continue
            rows = [rng.randrange(30) for _ in range(rng.randint(0, 6))]  # a row may come twice in one call
            details = [f"detail {r}" for r in rows] if rng.random() < 0.5 else "shared"
            ev = [(k, rng.randrange(30)) for k in range(len(rows)) for _ in range(rng.randint(0, 3))]
            rng.shuffle(ev)
            entry, evidence = (np.array([e[i] for e in ev], dtype=np.int64) for i in (0, 1))
            store.add_many(np.array(rows, dtype=np.int64), f"many{step}", details, entry, evidence)
            for k, r in enumerate(rows):
                d = details if isinstance(details, str) else details[k]
                want.setdefault(r, (f"many{step}", d, sorted({v for j, v in ev if j == k})))
        got = store.done()
        assert dict(got) == want
        assert list(got) == sorted(want) and len(got) == len(want)
        assert all((r in got) == (r in want) for r in range(31))
        counts = {}
        for reason, _, _ in want.values():
            counts[reason] = counts.get(reason, 0) + 1
        assert got.counts() == dict(sorted(counts.items()))


def test_merge_by_known_order_equals_the_line_merge(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.permutation(200)[:150]
    shard = rng.integers(0, 3, size=len(rows))
    paths, indices = [], []
    for s in range(3):
        mine = np.sort(rows[shard == s])
        path = tmp_path / f"r{s}.jsonl"
        path.write_bytes(b"".join(b'{"row_index": %d, "reason": "x", "row": {"i": %d}}\n' % (i, i) for i in mine))
        paths.append(path)
        indices.append(mine)
    sizes = [[len(line) for line in path.read_bytes().splitlines(keepends=True)] for path in paths]
    with open(tmp_path / "a.jsonl", "wb") as a, open(tmp_path / "b.jsonl", "wb") as b:
        assert merge_reject_files(paths, a) == merge_reject_files(paths, b, indices) == len(rows)
    with open(tmp_path / "d.jsonl", "wb") as d:  # runs of lines copied as byte ranges
        assert merge_reject_files(paths, d, indices, sizes) == len(rows)
    merged = (tmp_path / "b.jsonl").read_bytes()
    assert merged == (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "d.jsonl").read_bytes()
    assert [int(line.split(b",")[0][14:]) for line in merged.splitlines()] == sorted(rows.tolist())
    (tmp_path / "e.jsonl").write_bytes(b"")
    with open(tmp_path / "c.jsonl", "wb") as c:
        assert merge_reject_files([tmp_path / "e.jsonl"] * 2, c, [np.zeros(0, np.int64)] * 2) == 0
        assert merge_reject_files([tmp_path / "e.jsonl"] * 2, c, [np.zeros(0, np.int64)] * 2, [[], []]) == 0


def test_reject_chunks_equal_encoding_each_record(monkeypatch):
    # `rejected_chunks` formats a chunk of rejects in one %-format, values gathered column-wise: each line must be
    # the record `json.dumps` would write, ids mapped, every evidence count (none too), across chunk bounds, with
    # the rows spliced in or re-encoded; and the line lengths given must be the lines'.
    from trainers.data import rejects
    from trainers.data.shards import ShardRows

    monkeypatch.setattr(rejects, "_CHUNK", 7)
    rng = random.Random(3)
    raw = [b'{"prompt": "p", "response_a": "x%d", "response_b": "y", "label": "a"}' % i for i in range(40)]
    raw[5] = b'{"prompt":"p","response_a":"\\u00e9","response_b":"y","label":"a"}'  # re-encoded, not spliced
    raw[9] = b'{"prompt": "p%", "response_a": "%d", "response_b": "%b", "label": 1.5}'
    ids = np.array(rng.sample(range(10**13), 40), dtype=np.int64)
    rows = ShardRows("in.jsonl", ids)
    rows.add("lines", raw)
    for n in (0, 1, 7, 8, 23):
        store = Rejects()
        picked = sorted(rng.sample(range(40), n))
        for r in picked:
            reason = rng.choice(["cycle", 'odd "reason" %d', "équivalence"])
            store.add(r, reason, rng.choice(["", "d\n%s", "detail"]), rng.sample(range(40), rng.randint(0, 12)))
        done = store.done()
        chunks = list(rejects.rejected_chunks(done, rows))
        assert len(chunks) == -(-n // 7)
        want = [
            rejects._ENCODER.encode(
                {"row_index": int(ids[r]), "reason": reason, "detail": detail,
                 "evidence_rows": [int(ids[e]) for e in evidence], "row": json.loads(raw[r])}
            ).encode() + b"\n"
            for r, (reason, detail, evidence) in done.items()
        ]  # fmt: skip
        assert b"".join(text for text, _ in chunks) == b"".join(want)
        assert np.concatenate([np.zeros(0, np.int64)] + [k for _, k in chunks]).tolist() == [len(w) for w in want]
