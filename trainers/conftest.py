"""pytest only (doctest collection of `trainers/`): a module whose optional extra is not installed is left out
rather than failing collection, so a base install still runs the other modules' examples."""

import importlib.util

# module -> the optional packages it imports at the top (the `server` extra)
OPTIONAL = {"server": ("fastapi", "pydantic", "uvicorn")}

collect_ignore = [path for path, needs in OPTIONAL.items() if any(importlib.util.find_spec(n) is None for n in needs)]
