"""Random-weight judges for `gpu_check.py` where real weights cannot travel (the device machines here take 64 MiB).

    python launch/random_judge.py SOURCE_DIR OUT_DIR

Writes OUT_DIR/small (SOURCE_DIR's architecture, e.g. the embedded judge's cache directory) and OUT_DIR/big (a
1.1B Llama with the same tokenizer). Embeddings are scaled up x10 so that label probabilities differ between
prompts; throughput and backend agreement mean something on such weights, the verdicts do not.
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

src, out = Path(sys.argv[1]), Path(sys.argv[2])
small = AutoConfig.from_pretrained(src)
big = LlamaConfig(**{**small.to_dict(), "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64})  # fmt: skip
for name, config in (("small", small), ("big", big)):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10)
    model.save_pretrained(out / name)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation")):
            shutil.copy(f, out / name / f.name)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {out / name}")
