"""The docs site builds in strict mode, and every command the pages show still matches the code.

`tests/test_readme_commands.py` runs the heavy commands (grpo, score, compare, train-rm, serve) once; here each
command shown on a page (fenced `bash` blocks, and inline `trustreward ...` / `python bench/...` spans) is checked
against what it calls: a `trustreward` command's flags against that command's own parser (`--help`, in this
process), a script's flags against the flags its source declares, config files and scripts must exist. Commands
that need GPUs or a cluster sit in a block marked `# needs: ...` and are checked by `bash -n` only (plus their
`trustreward` part's flags). The sharded clean + merge loop, cheap and label-only, is run as shown.
"""

import ast
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"] + sorted((ROOT / "recipes").rglob("README.md"))
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w.-]*")
# Not ours, run elsewhere: the install line is the README's (`.ci/run` runs it), `mkdocs build` is this file's.
RUN_ELSEWHERE = ("pip install", "mkdocs ")


def blocks(path):
    """The fenced bash blocks of a page (indented ones in list items too), as (text, needs) pairs."""
    found = re.findall(r"^( *)```bash\n(.*?)^\1```", path.read_text(), re.M | re.S)
    for indent, body in found:
        text = "\n".join(line[len(indent) :] for line in body.splitlines())
        needs = re.search(r"^# needs: (.+)$", text, re.M)
        yield text, needs and needs.group(1)


def commands(text):
    """The block's commands: continuation lines joined, comments dropped, a `for ...; do` loop's body kept."""
    text = re.sub(r"\\\n\s*", " ", text)
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line and not re.match(r"(for .*; do|done)$", line):
            yield line


def inline_commands(path):
    prose = re.sub(r"^( *)```.*?^\1```", "", path.read_text(), flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if re.match(r"(trustreward [a-z-]+|python (bench|recipes|launch)/\S+\.py) ", span + " "):
            yield span


SHOWN = [(p.relative_to(ROOT).as_posix(), c, needs) for p in PAGES for t, needs in blocks(p) for c in commands(t)]
SHOWN += [(p.relative_to(ROOT).as_posix(), c, None) for p in PAGES for c in inline_commands(p)]
_HELP = {}


def console_flags(command):
    """Every flag `trustreward COMMAND --help` lists, from the console script's own parsers (in this process)."""
    if command not in _HELP:
        from trainers.cli import COMMANDS, main

        assert command in COMMANDS, f"`trustreward {command}`: no such command"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code in (0, None)
        _HELP[command] = set(FLAG.findall(out.getvalue())) | {"--config"}  # TRL's parser takes it unlisted
    return _HELP[command]


def script_flags(path):
    """The flags a script declares in its argparse `add_argument` calls."""
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    calls = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "add_argument"]
    return {a.value for c in calls for a in c.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}


def check_console(where, rest):
    """`rest` starts at the command name: its flags exist, a `--config` file or launcher config exists."""
    command, *args = rest.split()
    unknown = set(FLAG.findall(" ".join(args))) - console_flags(command)
    assert not unknown, f"{where}: `trustreward {command}` has no flag {sorted(unknown)}"
    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "--config_file") and "..." not in value:  # `recipes/grpo/...`: a placeholder
            assert (ROOT / value).is_file(), f"{where}: {value} does not exist"


def check(where, command, needs):
    if command.startswith(RUN_ELSEWHERE):
        return
    if command.startswith("trustreward "):
        return check_console(where, command.removeprefix("trustreward "))
    if " -m trainers.cli " in command:  # a launcher (torchrun, accelerate launch) running the console script
        launcher, rest = command.split(" -m trainers.cli ", 1)
        for flag, value in zip(launcher.split(), launcher.split()[1:]):
            if flag == "--config_file":
                assert (ROOT / value).is_file(), f"{where}: {value} does not exist"
        return check_console(where, rest)
    words = shlex.split(command)
    if words[0] == "python" and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.is_file(), f"{where}: {words[1]} does not exist"
        own, _, clean = command.partition(" -- ")  # ray_clean.py passes what follows `--` to `trustreward clean`
        unknown = set(FLAG.findall(own)) - script_flags(script)
        assert not unknown, f"{where}: {words[1]} declares no {sorted(unknown)}"
        if clean:
            check_console(where, "clean " + clean)
        return
    assert needs, f"{where}: `{command}` is no trustreward or repository script: mark its block `# needs: ...`"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_bash_blocks_parse(page):
    for text, _ in blocks(page):
        proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, f"{page.name}: {proc.stderr}\n{text}"


def test_no_fence_inside_a_list():
    """MkDocs' Markdown (Python-Markdown) renders a fenced block indented under a list item as inline text."""
    for page in (ROOT / "docs").glob("*.md"):
        assert not re.search(r"^ +```", page.read_text(), re.M), f"{page.name}: an indented code fence"


def test_every_command_shown_matches_the_code():
    assert len(SHOWN) > 40 and {"docs/consistency.md", "docs/sharded-judge.md"} <= {w for w, _, _ in SHOWN}
    for where, command, needs in SHOWN:
        check(where, command, needs)


def test_a_renamed_flag_or_missing_script_is_caught():
    """The checks above fail on drift (else they would pass on anything)."""
    with pytest.raises(AssertionError, match="no flag"):
        check("x", "trustreward clean --input a.jsonl --policy_name drop-cycles", None)
    with pytest.raises(AssertionError, match="declares no"):
        check("x", "python bench/bench_consistency.py --row 5", None)
    with pytest.raises(AssertionError, match="does not exist"):
        check("x", "torchrun --nproc_per_node 2 -m trainers.cli grpo --config recipes/grpo/none.yaml", None)
    with pytest.raises(AssertionError, match="needs"):
        check("x", "ray job submit -- python -m openrlhf.cli.train_ppo_ray", None)


def test_the_sharded_clean_loop_as_shown(tmp_path, monkeypatch):
    """docs/consistency.md's Slurm-style loop and merge, run as written (the loop unrolled) on a planted cycle:
    the merged kept rows are the one-shot `clean`'s, byte for byte."""
    from trainers.cli import main

    (text,) = [t for t, _ in blocks(ROOT / "docs" / "consistency.md") if t.startswith("for i in")]
    loop = re.match(r"for i in ([\d ]+); do", text).group(1).split()
    rows = [{"prompt": "q", "response_a": a, "response_b": b, "label": "a"} for a, b in ("xy", "yz", "zx")]
    rows += [{"prompt": "r", "chosen": c, "rejected": r} for c, r in (("good", "bad"), ("bad", "worse"))]
    monkeypatch.chdir(tmp_path)
    Path("prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for command in commands(text):
        for i in loop if "$i" in command else [None]:
            args = shlex.split(command.replace("$i", str(i)))
            assert args[0] == "trustreward" and main(args[1:]) == 0, command
    assert main(["clean", "--input", "prefs.jsonl", "--labels-only", "--output", "one.jsonl", "--rejects",
                 "one_rejects.jsonl", "--report", "one.json"]) == 0  # fmt: skip
    assert Path("kept.jsonl").read_bytes() == Path("one.jsonl").read_bytes()
    assert [json.loads(line) for line in Path("kept.jsonl").read_text().splitlines()] == rows[3:]


def test_links_from_the_readme_and_recipes_resolve():
    """Pages outside docs/ are not part of the MkDocs build: their relative links are checked here."""
    from markdown.extensions.toc import slugify

    for page in [ROOT / "README.md", *sorted((ROOT / "recipes").rglob("README.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve()
            assert file.is_file(), f"{page.name}: link to {target}: no such file"
            if anchor:
                heads = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {slugify(h.replace("`", ""), "-") for h in heads}, f"{page.name}: {target}"


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav (or in the nav and missing), a
    reference mkdocstrings cannot resolve all fail it (mkdocs.yml's `validation` turns them into warnings)."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", ROOT / "mkdocs.yml",
                           "-d", tmp_path / "site"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    api = (tmp_path / "site" / "api.html").read_text()
    assert "load_judge" in api and "JudgePairwiseReward" in api and "merge_bidirectional" in api  # rendered
