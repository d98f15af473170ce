"""Other projects' own code, installed beside the environment for the tests that run it.

Letting pip resolve `openrlhf` or `verl` would pull vllm and another (CUDA) torch, so each is installed with
`pip install --no-deps --target` together with its whole import closure: every module the files the tests import
need that the `dev` extra does not bring (found by importing them in a fresh virtual environment). A module missing
from a list fails the test that needs it, naming the list to extend; it never skips.

The installs live in `$TRUSTREWARD_CACHE` (default `~/.cache/trustreward`); a folder is reused only when it was
completed with exactly the list below, so a changed list is never hidden by an older install. A lock file makes
the test processes of one run (`pytest -n 2`) install a folder once, one after the other.
"""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

AIOHTTP = ["aiohttp==3.14.5", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0", "attrs==26.1.0", "frozenlist==1.8.0",
           "multidict==7.2.1", "propcache==0.5.4", "yarl==1.25.1"]  # fmt: skip
# ray imports jsonschema (its runtime-env schemas), cloudpickle and orjson at import time.
RAY = ["ray==2.60.0", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0",
       "rpds-py==2026.9.1", "cloudpickle==3.1.3", "orjson==3.13.0"]  # fmt: skip
VERL = ["verl==0.9.1", "tensordict==0.15.3", "pyvers==0.2.3", "omegaconf==2.4.0", "codetiming==1.4.0"]
ASIDE = {
    "openrlhf-0.11.2": ["openrlhf==0.11.2", *AIOHTTP],
    "verl-0.9.1": VERL + RAY + AIOHTTP,
    "trl-1.12.0": ["trl==1.12.0"],
    "aiohttp-3.14.5": AIOHTTP,  # slime's HTTP client
}


def install(name: str) -> Path:
    """The folder holding `ASIDE[name]`, installed there first if it is not complete."""
    target = Path(os.environ.get("TRUSTREWARD_CACHE", Path.home() / ".cache" / "trustreward")) / name
    done, wanted = target / ".installed", "\n".join(ASIDE[name])
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if pip fails
        if not done.exists() or done.read_text() != wanted:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                            str(target), *ASIDE[name]], check=True)  # fmt: skip
            done.write_text(wanted)
    return target


def missing(name: str, error: ModuleNotFoundError):
    """Fails (never skips) the test whose aside install lacks a module."""
    pytest.fail(f"{error}: add the package that provides it to ASIDE[{name!r}] in tests/aside.py", pytrace=False)
