"""Every recipe and launch config parses: recipe keys are dataclass fields (unknown keys fail)."""

from pathlib import Path

import pytest
import yaml
from trl import GRPOConfig, ModelConfig, RewardConfig, TrlParser

from trainers.grpo import JudgeRewardArguments
from trainers.rm import RMArguments

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"grpo": (JudgeRewardArguments, GRPOConfig, ModelConfig), "rm": (RMArguments, RewardConfig, ModelConfig)}
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(ROOT / "recipes")) for r in RECIPES])
def test_recipe_parses(recipe):
    kind = recipe.relative_to(ROOT / "recipes").parts[0]
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU machine: flags override it here.
    args = TrlParser(PARSERS[kind]).parse_args_and_config(
        args=["--config", str(recipe), "--bf16", "false", "--use_cpu", "true"]
    )
    assert args[1].output_dir and args[2].model_name_or_path


def test_launch_configs_are_accelerate_configs():
    for path in (ROOT / "launch").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["compute_environment"] == "LOCAL_MACHINE" and config["num_processes"] >= 1, path
    assert len(RECIPES) >= 3
