"""Shared fixtures: a tiny digit-split judge built from configs in-process (no hub), and fake backends."""

from __future__ import annotations

import math
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from reward import Judge
from reward.backends import JudgeBackend
from reward.templates import PAIRWISE_SYSTEM, PAIRWISE_USER, POINTWISE_SYSTEM, POINTWISE_USER

if "PYTEST_XDIST_WORKER" in os.environ:
    # `pytest -n 2` on a 2-core machine: one thread per test process (and the processes they start), so the two
    # workers' OpenMP threads never spin against each other.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "You are a judge. Score: [1] Score: [5] Score: [47] Score: [100] Verdict: [A] Verdict: [B] Verdict: [C]",
    "[User Question] [The Start of Assistant's Answer] [The End of Assistant's Answer] Assistant A B",
    "The quick brown fox jumps over the lazy dog. What is two plus two? It is four. Paris is in France.",
    "0 1 2 3 4 5 6 7 8 9 10 42 99 answer question response helpful accurate relevant a b c d e f g h",
    POINTWISE_SYSTEM,
    PAIRWISE_SYSTEM,
    POINTWISE_USER,
    PAIRWISE_USER,
]


def build_tiny_model_dir(path, seed: int = 0, layers: int = 2, max_positions: int = 2048):
    """A tiny Llama with a byte-level BPE tokenizer that splits digits (like SmolLM2), saved to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    # Larger random logits than the default init, so label probabilities differ clearly between prompts.
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-judge"))


@pytest.fixture(scope="session")
def tiny_judge(tiny_model_dir):
    from reward import load_judge

    return load_judge(tiny_model_dir, device="cpu", progress=False)


class FakeBackend(JudgeBackend):
    """A JudgeBackend whose verdicts come from a rule, for testing what Judge does with them.

    `rule(prompt) -> {"A": p, "B": p, "C": p}` for pairwise prompts; pointwise prompts get `points` (a dict, or
    a function of the prompt returning one).
    """

    max_length = 4096

    def __init__(self, tokenizer, rule=None, points=None):
        self.tokenizer = tokenizer
        self.rule = rule
        self.points = points or {}
        self.prompts: list[str] = []

    def label_logprobs(self, prompts, labels):
        self.prompts += prompts
        out = []
        for p in prompts:
            probs = self.rule(p) if set(labels) == {"A", "B", "C"} else self.points
            probs = probs(p) if callable(probs) else probs
            out.append({label: math.log(probs[label]) if probs.get(label, 0) > 0 else -math.inf for label in labels})
        return out

    def generate(self, prompts, max_new_tokens, stop):
        return [("fine.", -1.0, 2) for _ in prompts]


@pytest.fixture
def fake_judge(tiny_judge):
    """Factory: a Judge over a FakeBackend with the tiny judge's tokenizer. Its pointwise rewards read the score
    slot (`score_reading="direct"`), whose numbers a test sets with `points`, unless the test asks otherwise; the
    library's default (anchored) is checked in tests/test_anchored.py."""

    def make(rule=None, points=None, **options):
        options.setdefault("score_reading", "direct")
        return Judge(FakeBackend(tiny_judge.tokenizer, rule, points), progress=False, **options)

    return make


def answer_in_slot(prompt: str, which: str) -> str:
    """The text shown as Assistant A's or B's answer in a rendered pairwise prompt."""
    start = f"[The Start of Assistant {which}'s Answer]\n"
    return prompt.split(start, 1)[1].split(f"\n[The End of Assistant {which}'s Answer]", 1)[0]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode writing under tmp_path; returns that directory.

    wandb keeps process-wide settings (the run directory among them) from its first use, so it is torn down
    around each test that uses it.
    """
    import wandb

    wandb.teardown()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "trustreward-test"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    yield tmp_path
    wandb.teardown()


def tiny_grpo_config(output_dir, **overrides):
    """GRPO on CPU in seconds: 2 steps, one group of 4 completions of 6 tokens per process, no saving, no logger."""
    from trl import GRPOConfig

    options = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 6,
        "bf16": False,
        "use_cpu": True,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
    }
    options["seed"] = 0
    return GRPOConfig(output_dir=str(output_dir), **options | overrides)


class RecordingMonitor:
    """Mixin for a JudgeMonitor that keeps every check's numbers in `checks` (tests compare what was logged)."""

    def _check(self, *args, **kwargs):
        super()._check(*args, **kwargs)
        self.__dict__.setdefault("checks", []).append(dict(self.last))
