"""Every recipe and launch config parses: recipe keys are dataclass fields (unknown keys fail)."""

from pathlib import Path

import pytest
import yaml
from trl import GRPOConfig, ModelConfig, RewardConfig, TrlParser

from trainers.grpo import JudgeRewardArguments
from trainers.judge_args import JudgeArguments
from trainers.train_rm import RMArguments

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {
    "grpo": (JudgeRewardArguments, JudgeArguments, GRPOConfig, ModelConfig),
    "rm": (RMArguments, JudgeArguments, RewardConfig, ModelConfig),
}
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(ROOT / "recipes")) for r in RECIPES])
def test_recipe_parses(recipe, tmp_path):
    parser = TrlParser(PARSERS[recipe.relative_to(ROOT / "recipes").parts[0]])
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU machine: flags override it here.
    cpu = ["--bf16", "false", "--use_cpu", "true"]
    args = parser.parse_args_and_config(args=["--config", str(recipe), *cpu])
    assert args[-2].output_dir and args[-1].model_name_or_path
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text() + "\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):  # unknown keys fail
        parser.parse_args_and_config(args=["--config", str(bad), *cpu])


def test_launch_configs_are_accelerate_configs():
    for path in (ROOT / "launch").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["compute_environment"] == "LOCAL_MACHINE" and config["num_processes"] >= 1, path
    assert len(RECIPES) >= 3
