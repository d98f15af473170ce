"""The plumbing's promises: one judge-arguments dataclass, no import circle, a complete backend contract, package
data a wheel keeps. Each test names the promise it guards."""

import ast
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest

from trainers.judge_args import JudgeArguments

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    """`trainers/server/app.py` -> "trainers.server.app" (a package: its `__init__.py`'s dotted name)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports anywhere (function-level imports included), relative imports
    resolved, `from package import name` counted as the submodule when there is one."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in modules} - {here}


def test_trainers_import_no_module_in_a_circle():
    """Over every module of `trainers`, subpackages included (a package counts as its `__init__.py`)."""
    paths = {_module(p): p for p in (ROOT / "trainers").rglob("*.py") if p.name != "conftest.py"}
    modules = set(paths)
    graph = {name: _imports(path, modules) for name, path in paths.items()}
    assert len([m for m in modules if m.startswith("trainers.server.")]) >= 6  # the walk reaches subpackages
    assert len([m for m in modules if m.startswith("trainers.data.")]) >= 5
    state = {}

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", f"import circle: {' -> '.join([*path, name, dep])}"
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "trainers.cli" not in set().union(*graph.values())  # cli.py only dispatches: nothing imports from it


def test_cli_only_dispatches():
    tree = ast.parse((ROOT / "trainers/cli.py").read_text())
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} == {"_dispatch", "main"}


def _argument_dataclasses():
    from trainers.data.audit_clean import AuditArguments, CleanArguments, MergeArguments
    from trainers.grpo import JudgeRewardArguments
    from trainers.judge_file import JudgeFileArguments
    from trainers.server import ServeArguments
    from trainers.train_rm import RMArguments

    return (AuditArguments, CleanArguments, MergeArguments, JudgeRewardArguments, JudgeFileArguments, ServeArguments,
            RMArguments)  # fmt: skip


@pytest.mark.parametrize("owner", _argument_dataclasses(), ids=lambda c: c.__name__)
def test_judge_flags_are_declared_once(owner):
    """No command declares a judge flag of its own (under the shared name or an old local one)."""
    shared = {f.name for f in fields(JudgeArguments)}
    own = {f.name for f in fields(owner)}
    assert not own & (shared | {"device", "batch_size", "backend", "judge_device", "dtype"}), owner


def test_only_judge_arguments_load_a_judge():
    callers = [p.name for p in (ROOT / "trainers").rglob("*.py") if "load_judge(" in p.read_text()]
    assert callers == ["judge_args.py"]


@pytest.mark.parametrize("command", ["grpo", "score", "compare", "serve", "audit", "clean", "train-rm"])
def test_every_judging_command_takes_the_judge_arguments(command, capsys):
    from trainers.cli import main

    try:
        main([command, "--help"])
    except SystemExit as exc:  # TRL's parser exits after printing the help
        assert exc.code == 0
    out = capsys.readouterr().out
    for flag in ("--judge ", "--judge_batch_size", "--judge_device", "--judge_endpoint", "--judge_injection_check"):
        assert flag in out, (command, flag)


def test_judge_arguments_fail_when_built_not_when_loaded():
    from trainers.args import UserError

    cases = {
        "judge_device does not apply to a served judge": {"judge": "openai:http://h:1/v1", "judge_device": "cpu"},
        "judge_backend does not apply": {"judge": "openai:http://h:1/v1", "judge_backend": "deepspeed"},
        "options of judge_backend deepspeed": {"judge_tp_size": 2},
        "judge_batch_size must be an integer >= 1": {"judge_batch_size": 0},
        "judge_endpoint must be one of completions, chat": {"judge_endpoint": "responses"},
        "no such model directory": {"judge": "/nonexistent/judge"},
    }
    for message, options in cases.items():
        with pytest.raises(UserError, match=message):
            JudgeArguments(**options)
    assert JudgeArguments().load(default=None) is None  # audit / clean / train-rm without --judge: no judge


def test_judge_arguments_load_what_they_say(tiny_model_dir):
    judge = JudgeArguments(judge=tiny_model_dir, judge_device="cpu", judge_batch_size=3, judge_max_length=200,
                           judge_injection_check=True).load()  # fmt: skip
    assert (judge.batch_size, judge.backend.max_length, judge.injection_check) == (3, 200, True)
    assert str(judge.backend.device) == "cpu" and judge.progress is False


def test_backends_declare_the_whole_contract():
    from reward import Judge
    from reward.backends import MEMBERS, JudgeBackend
    from reward.backends.deepspeed import DeepSpeedBackend
    from reward.backends.hf import HFBackend
    from reward.backends.openai import OpenAIBackend

    for backend in (HFBackend, DeepSpeedBackend, OpenAIBackend):
        assert JudgeBackend in backend.__mro__ and all(hasattr(backend, m) for m in MEMBERS[2:]), backend
    assert (HFBackend.lockstep, DeepSpeedBackend.lockstep, OpenAIBackend.lockstep) == (False, True, False)

    class Partial:  # a duck-typed backend that forgot the lockstep members
        tokenizer, max_length, chat = None, 512, False

        def label_logprobs(self, prompts, labels): ...

        def generate(self, prompts, max_new_tokens, stop): ...

    with pytest.raises(TypeError, match="lacks lockstep, agree"):
        Judge(Partial())


def test_backends_and_text_helpers_do_not_depend_on_the_judge():
    """The text helpers live in `reward/text.py`; no backend imports `reward/judge.py`."""
    for path in (ROOT / "reward/backends").glob("*.py"):
        modules = {(n.level, n.module) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not modules & {(2, "judge"), (0, "reward.judge"), (2, "load"), (0, "reward.load")}, path
    for path in [*(ROOT / "trainers").rglob("*.py"), *(ROOT / "reward").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if path.name != "text.py":
            assert not defined & {"as_text", "extend", "check_texts", "text_key"}, path


def test_a_wheel_carries_the_judge_config_and_the_prompts(tmp_path):
    import shutil

    src = tmp_path / "src"  # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    for name in ("reward", "trainers"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("trustreward-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"reward/backends/judge_zero3.json", "trainers/mt_bench/question.jsonl",
            "trainers/mt_bench/reference_answer_gpt-4.jsonl"} <= names  # fmt: skip
    assert not [n for n in names if n.startswith("launch/")]  # the default config no longer lives outside


def test_the_default_zero3_config_is_found_inside_the_package():
    from reward.backends import deepspeed

    assert deepspeed.DEFAULT_CONFIG.parent == Path(deepspeed.__file__).parent and deepspeed.DEFAULT_CONFIG.exists()
