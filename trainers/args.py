"""Command-line flags from argument dataclasses, without importing transformers or TRL.

`audit`, `clean`, `merge`, `score` and `compare` parse their flags here so that a label-only run starts in a
fraction of a second (TRL's parser imports transformers, and that torch). Same conventions as TRL's `TrlParser`:
`--flag_name` and `--flag-name`, lists as several values, booleans as a bare flag or `--flag true|false`, and
`--config FILE.yaml` whose flat keys (field names) are defaults the command line overrides.
"""

from __future__ import annotations

import argparse
import dataclasses

# Field annotations are strings (`from __future__ import annotations`): the few forms argument dataclasses use.
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


class UserError(ValueError):
    """A mistake in the command line or the data: printed as one line, exit status 2 (`--debug`: the traceback)."""


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _kind(annotation: str) -> tuple[type, bool]:
    """(element type, is a list) of an annotation such as `int | None` or `list[str]`."""
    name = annotation.replace(" ", "").replace("|None", "").replace("None|", "")
    if name.startswith("list[") and name.endswith("]"):
        return _TYPES[name[5:-1]], True
    return _TYPES[name], False


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every user error of the CLI
        raise UserError(f"{self.prog}: {message}")


def parse(prog: str, dataclass_types: tuple, argv: list[str]) -> tuple:
    """Instances of `dataclass_types` from `argv` (`--help` prints the flags and exits 0)."""
    parser = _Parser(prog=prog, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of flag defaults (keys: flag names with underscores).")
    owners = {}
    for dc in dataclass_types:
        for f in dataclasses.fields(dc):
            # TRL's parser, once used in a process, replaces string annotations with the types themselves.
            kind, many = _kind(f.type.__name__ if isinstance(f.type, type) else str(f.type))
            names = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            options = {"dest": f.name, "help": f.metadata.get("help"), "default": argparse.SUPPRESS}
            if kind is bool:
                options |= {"type": _bool, "nargs": "?", "const": True}
            else:
                options |= {"type": kind, "nargs": "+" if many else None}
            parser.add_argument(*names, **options)
            owners[f.name] = (dc, required)
    args = vars(parser.parse_args(argv))
    values = {}
    if args.get("config"):
        values = _config(args.pop("config"), owners)
    args.pop("config", None)
    values |= args
    missing = [name for name, (_, required) in owners.items() if required and name not in values]
    if missing:
        raise UserError(f"{prog}: the following arguments are required: {', '.join('--' + m for m in missing)}")
    out = []
    for dc in dataclass_types:
        names = {f.name for f in dataclasses.fields(dc)}
        out.append(dc(**{k: v for k, v in values.items() if k in names}))
    return tuple(out)


def _config(path: str, owners: dict) -> dict:
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config is a mapping of flag names to values")
    unknown = sorted(set(values) - set(owners))
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}")
    return values
