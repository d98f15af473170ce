"""Doctest collection of the library (`reward/`, `trainers/`): modules whose optional extras are not installed are
left out rather than failing collection (a base install runs the rest)."""

import importlib.util

# module path -> the optional packages it imports at the top (the `server` extra, ...)
OPTIONAL = {"trainers/server.py": ("fastapi", "pydantic"), "reward/backends/deepspeed.py": ("deepspeed",)}

collect_ignore = [path for path, needs in OPTIONAL.items() if any(importlib.util.find_spec(n) is None for n in needs)]
