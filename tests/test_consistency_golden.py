"""`clean` and `audit` outputs on valid, cycle-heavy input are byte-identical to main at commit dd6f47c (before
issue #33 made cleaning fast when most pairs are dropped).

The digests below were made by running this file as a script (`python tests/test_consistency_golden.py`) on the
code of commit dd6f47c; CI's clone may be shallow, so the old code is not run here. Random rows (seeded, stdlib
`random`: the same on every platform) in two files: pairwise rows only (read as columns, cleaned in several
prompt-hash shards) and mixed formats (read row by row, one shard); every policy mix on each. A digest covers the
kept rows, the rejects (reasons, details, evidence rows) and the report (paths left out).
"""

import hashlib
import itertools
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.consistency import POLICIES, clean_dataset  # noqa: E402
from trainers.cli import main  # noqa: E402

LABEL = {1: "a", -1: "b", 0: "tie"}


def golden_rows(mixed: bool, seed: int = 33, n_prompts: int = 60) -> list[dict]:
    """Prompts of 3-9 answers, every pair of each (some twice), 10% ties, 30% of the labels flipped against a latent
    quality; with `mixed`, also judge probabilities, order flags, scores, ranked `responses` rows and TRL rows."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        prompt = f"prompt {p} " + "x" * rng.randint(0, 5)
        k = rng.randint(3, 9)
        answers = [f"answer {p}.{i}" for i in range(k)]
        quality = [rng.random() for _ in range(k)]
        for i, j in itertools.combinations(range(k), 2):
            r = 0 if rng.random() < 0.1 else (1 if quality[i] > quality[j] else -1)
            if r and rng.random() < 0.3:
                r = -r
            if rng.random() < 0.5:
                i, j, r = j, i, -r
            row = {"prompt": prompt, "response_a": answers[i], "response_b": answers[j], "label": LABEL[r]}
            if mixed or p % 3 == 0:
                lo = round(rng.uniform(0.0, 0.3), 3)
                hi = round(1 - lo - 0.05, 3)
                probs = {1: (hi, lo), -1: (lo, hi), 0: (0.3, 0.3)}[r]
                row = {k_: v for k_, v in row.items() if k_ != "label" or rng.random() < 0.5}
                row |= {"p_a": probs[0], "p_b": probs[1], "p_tie": round(1 - probs[0] - probs[1], 3)}
                if rng.random() < 0.5:
                    row |= {"score_a": round(quality[i] * 10, 2), "score_b": round(quality[j] * 10, 2)}
                if rng.random() < 0.7:
                    row["order_consistent"] = rng.random() < 0.8
            rows.append(row)
            if rng.random() < 0.03:
                rows.append(dict(row))  # a duplicate pair
        if mixed and p % 4 == 0:
            chosen = rng.sample(range(k), 3)
            rows.append({"prompt": prompt, "responses": [answers[c] for c in chosen],
                         "scores": [round(rng.random(), 2) for _ in chosen]})  # fmt: skip
            rows.append({"prompt": prompt, "chosen": answers[0] + " extra", "rejected": answers[1]})
    rng.shuffle(rows)
    return rows


# Every non-empty mix (the CLI needs one policy at least; `clean_dataset` also runs with none).
MIXES = [list(c) for n in range(1, len(POLICIES) + 1) for c in itertools.combinations(POLICIES, n)]


def _report_digest(path: Path) -> bytes:
    report = json.loads(path.read_text())
    for key in ("input", "outputs"):
        report.pop(key, None)
    return json.dumps(report, sort_keys=True).encode()


def run_clean(folder: Path, mixed: bool, policies: list[str]) -> str:
    src = folder / ("mixed.jsonl" if mixed else "pairs.jsonl")
    if not src.exists():
        src.write_text("".join(json.dumps(r) + "\n" for r in golden_rows(mixed)))
    name = "-".join(policies) or "none"
    out = {k: folder / f"{name}.{mixed}.{k}" for k in ("kept.jsonl", "rejects.jsonl", "report.json")}
    args = ["clean", "--input", str(src), "--labels-only", "--output", str(out["kept.jsonl"])]
    args += ["--rejects", str(out["rejects.jsonl"]), "--report", str(out["report.json"])]
    args += ["--policy", *policies]
    args += [] if mixed else ["--shard_mb", "0.02"]  # pairwise rows: several prompt-hash shards
    assert main(args) == 0
    h = hashlib.sha256(out["kept.jsonl"].read_bytes() + b"\0" + out["rejects.jsonl"].read_bytes() + b"\0")
    h.update(_report_digest(out["report.json"]))
    return h.hexdigest()[:20]


def run_api(policies: list[str]) -> str:
    """`clean_dataset` on the mixed rows in memory (rejects with the rows themselves)."""
    kept, rejected, report = clean_dataset(golden_rows(True), policies, progress=False)
    return hashlib.sha256(json.dumps([kept, rejected, report], sort_keys=True).encode()).hexdigest()[:20]


def run_audit(folder: Path) -> str:
    src = folder / "pairs.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps(r) + "\n" for r in golden_rows(False)))
    assert main(["audit", "--input", str(src), "--report", str(folder / "audit.json"), "--shard_mb", "0.02"]) == 0
    return hashlib.sha256(_report_digest(folder / "audit.json")).hexdigest()[:20]


# Made by this file as a script on commit dd6f47c: {"<policies or none>/<pairs|mixed>": digest}.
GOLDEN = {
    'audit': '4df7752c5c2349cba323',
    'order-inconsistent/pairs': '99ddce3982de37c1e6c1',
    'score-conflict/pairs': '8bca51e2e8040d8ee4f8',
    'equivalence/pairs': '72c00296479b7ba20555',
    'min-feedback/pairs': 'f71e3187ed9d391e908f',
    'drop-cycles/pairs': '04b3c829712c5119665c',
    'order-inconsistent-score-conflict/pairs': '8c16f50f0acd12d9557d',
    'order-inconsistent-equivalence/pairs': 'ba2d42105bd8b1ce564f',
    'order-inconsistent-min-feedback/pairs': '7b128e3aeb27d11e09b9',
    'order-inconsistent-drop-cycles/pairs': '533fab69316f32b9f5c6',
    'score-conflict-equivalence/pairs': '63bafbc5a4fc4a67b3ae',
    'score-conflict-min-feedback/pairs': 'f0bb03ea895b563e5551',
    'score-conflict-drop-cycles/pairs': 'f07336d46560632a6b16',
    'equivalence-min-feedback/pairs': '9bc7d3d92d75838b63fc',
    'equivalence-drop-cycles/pairs': '1768bc3efd0539d3aff2',
    'min-feedback-drop-cycles/pairs': '191e0447b8d3ec2c6552',
    'order-inconsistent-score-conflict-equivalence/pairs': '97d222fd1a2bb66104c9',
    'order-inconsistent-score-conflict-min-feedback/pairs': '8577be47844b862e028a',
    'order-inconsistent-score-conflict-drop-cycles/pairs': '0539ea9aac7cc2e96a3f',
    'order-inconsistent-equivalence-min-feedback/pairs': '1e6163b634cec3a38f5a',
    'order-inconsistent-equivalence-drop-cycles/pairs': '238773855a948920514b',
    'order-inconsistent-min-feedback-drop-cycles/pairs': '875bba0b6dfb67c29252',
    'score-conflict-equivalence-min-feedback/pairs': '3068e636fa56d41b0d1e',
    'score-conflict-equivalence-drop-cycles/pairs': 'f7e904a9472ee79808eb',
    'score-conflict-min-feedback-drop-cycles/pairs': 'd51a4d87cc628c0c9940',
    'equivalence-min-feedback-drop-cycles/pairs': 'cfb93c4a3d0678cfee59',
    'order-inconsistent-score-conflict-equivalence-min-feedback/pairs': '8898150fa3b6771599e0',
    'order-inconsistent-score-conflict-equivalence-drop-cycles/pairs': 'b449c6e3eed8b84d2af9',
    'order-inconsistent-score-conflict-min-feedback-drop-cycles/pairs': '262aa05e09b17d74608f',
    'order-inconsistent-equivalence-min-feedback-drop-cycles/pairs': 'd353c7d911d2648b9454',
    'score-conflict-equivalence-min-feedback-drop-cycles/pairs': 'b95757e38ff74ae0be5f',
    'order-inconsistent-score-conflict-equivalence-min-feedback-drop-cycles/pairs': 'b90370c09711def3fa92',
    'order-inconsistent/mixed': '71f2d19209396b321128',
    'score-conflict/mixed': 'ab237183f7aad668e714',
    'equivalence/mixed': 'e086f11083e4086640a2',
    'min-feedback/mixed': '6988a33097d5a93ea292',
    'drop-cycles/mixed': 'ac34c534ccd84a6a4635',
    'order-inconsistent-score-conflict/mixed': 'a1963dfba38c51a1251e',
    'order-inconsistent-equivalence/mixed': '8b82cf5ce86afbeb4e94',
    'order-inconsistent-min-feedback/mixed': '7672fbeb41e9a4576e3f',
    'order-inconsistent-drop-cycles/mixed': 'ecd6074009079511676c',
    'score-conflict-equivalence/mixed': '36ebd679dba870f7b198',
    'score-conflict-min-feedback/mixed': '1527e43abfa5b3bad19c',
    'score-conflict-drop-cycles/mixed': '1fd217b1f658d5c414bc',
    'equivalence-min-feedback/mixed': '525d7cd9680487b425fb',
    'equivalence-drop-cycles/mixed': '56f45cfeec1950b6e0fe',
    'min-feedback-drop-cycles/mixed': '8d16a3877c6b3ae7996e',
    'order-inconsistent-score-conflict-equivalence/mixed': 'fdf385544fe885df1e3a',
    'order-inconsistent-score-conflict-min-feedback/mixed': '15f414d2f8de28624ccc',
    'order-inconsistent-score-conflict-drop-cycles/mixed': '524234bcad2bde128d25',
    'order-inconsistent-equivalence-min-feedback/mixed': '1954619fbd4bfb7fab49',
    'order-inconsistent-equivalence-drop-cycles/mixed': '22a63923c31e5f0bc800',
    'order-inconsistent-min-feedback-drop-cycles/mixed': 'bac2e463a615bb1d730a',
    'score-conflict-equivalence-min-feedback/mixed': 'e320fed76cbce9aaa786',
    'score-conflict-equivalence-drop-cycles/mixed': 'b7371f8512a1594ddab6',
    'score-conflict-min-feedback-drop-cycles/mixed': '7bfbb6c7019f197ab7df',
    'equivalence-min-feedback-drop-cycles/mixed': 'c7d104fb2f5d667af437',
    'order-inconsistent-score-conflict-equivalence-min-feedback/mixed': 'a5c130eae09b9877cc30',
    'order-inconsistent-score-conflict-equivalence-drop-cycles/mixed': 'be0d4439e83a5a817b07',
    'order-inconsistent-score-conflict-min-feedback-drop-cycles/mixed': 'a148cfec86a7577ecd92',
    'order-inconsistent-equivalence-min-feedback-drop-cycles/mixed': 'f5b7e11129bcd6ee3a0a',
    'score-conflict-equivalence-min-feedback-drop-cycles/mixed': '73765ae1d415e06e3d67',
    'order-inconsistent-score-conflict-equivalence-min-feedback-drop-cycles/mixed': 'd916e12899fc6d6258f2',
    'none/api': 'cade9fa4b300d0ae49ae',
    'order-inconsistent/api': 'f524cd694b2aae3d1656',
    'score-conflict/api': '7c5413175e41f8b732cc',
    'equivalence/api': '41fdc485737da4cd5235',
    'min-feedback/api': '93355e8fb87124205d20',
    'drop-cycles/api': '34c0f7ce1bbfa7143d0f',
    'order-inconsistent-score-conflict/api': 'ec4e5c4cdabbba931824',
    'order-inconsistent-equivalence/api': '23372ab3c43561ab056c',
    'order-inconsistent-min-feedback/api': '18d7105822bac9268be9',
    'order-inconsistent-drop-cycles/api': 'cff1edcadde507a9ad09',
    'score-conflict-equivalence/api': '996cc77e92434dc60215',
    'score-conflict-min-feedback/api': 'd9fe0fa121cb507a907e',
    'score-conflict-drop-cycles/api': '1fd69e5d5170fc31388a',
    'equivalence-min-feedback/api': '5a1cdaa61ea1f416e1d2',
    'equivalence-drop-cycles/api': '1ee5459205359de07781',
    'min-feedback-drop-cycles/api': '5fdee382f2a54f3dd8d5',
    'order-inconsistent-score-conflict-equivalence/api': '7dcb193d70e2564c451f',
    'order-inconsistent-score-conflict-min-feedback/api': '50cdf00431ec1bdf376b',
    'order-inconsistent-score-conflict-drop-cycles/api': '35865c0be2695a4eb461',
    'order-inconsistent-equivalence-min-feedback/api': 'a0c06a0020e1d5d89bbb',
    'order-inconsistent-equivalence-drop-cycles/api': '9c429c7be6e6eee7b3e8',
    'order-inconsistent-min-feedback-drop-cycles/api': '72cfefa72549ce2fc6b1',
    'score-conflict-equivalence-min-feedback/api': '1afd06956138d836dbe6',
    'score-conflict-equivalence-drop-cycles/api': 'f911f17fb1d5b98f660f',
    'score-conflict-min-feedback-drop-cycles/api': '67d901bf47618c76faf3',
    'equivalence-min-feedback-drop-cycles/api': '53be9905a703af0c30f2',
    'order-inconsistent-score-conflict-equivalence-min-feedback/api': 'a59e116e716e09bd4954',
    'order-inconsistent-score-conflict-equivalence-drop-cycles/api': '062f15b7742919b5e788',
    'order-inconsistent-score-conflict-min-feedback-drop-cycles/api': 'a686346e20e5c344f08b',
    'order-inconsistent-equivalence-min-feedback-drop-cycles/api': '114aaf0ea62fa1e25a01',
    'score-conflict-equivalence-min-feedback-drop-cycles/api': '1792cdbcf73917700862',
    'order-inconsistent-score-conflict-equivalence-min-feedback-drop-cycles/api': '6bf34a3180187bf865bb',
}  # fmt: skip


@pytest.mark.parametrize("mixed", [False, True], ids=["pairs", "mixed"])
def test_clean_outputs_equal_dd6f47c(tmp_path, mixed):
    got = {f"{'-'.join(p) or 'none'}/{'mixed' if mixed else 'pairs'}": run_clean(tmp_path, mixed, p) for p in MIXES}
    want = {k: v for k, v in GOLDEN.items() if k.endswith("/mixed" if mixed else "/pairs")}
    assert got == want


def test_clean_dataset_equals_dd6f47c():
    got = {f"{'-'.join(p) or 'none'}/api": run_api(p) for p in [[], *MIXES]}
    assert got == {k: v for k, v in GOLDEN.items() if k.endswith("/api")}


def test_audit_output_equals_dd6f47c(tmp_path):
    assert run_audit(tmp_path) == GOLDEN["audit"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = {"audit": run_audit(Path(d))}
        for mixed in (False, True):
            for p in MIXES:
                out[f"{'-'.join(p) or 'none'}/{'mixed' if mixed else 'pairs'}"] = run_clean(Path(d), mixed, p)
        for p in [[], *MIXES]:
            out[f"{'-'.join(p) or 'none'}/api"] = run_api(p)
    print("GOLDEN = {")
    for k, v in out.items():
        print(f"    {k!r}: {v!r},")
    print("}")
