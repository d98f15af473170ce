"""Outputs that never destroy data: distinct paths, private temporary files, a set committed with its report last.

A command's outputs (kept rows, rejects, report) are written to temporary siblings first and renamed into place
only when all of them are complete; the old report is removed before the first rename and the new one written
last, naming its siblings. So a directory holds either a complete set with its report, or no report at all:
never a new `kept` next to an earlier run's report that looks complete. Temporary names are unpredictable,
created with `O_EXCL | O_NOFOLLOW` (a planted symlink is never followed), and those left by a killed run are removed
by the next run that writes the same output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from ..args import UserError

FORMATS = ("jsonl", "parquet", "dataset")
_TMP = ".trustreward-"


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format an output path asks for: `--format`, else its extension (`.jsonl`, `.parquet`; none: a folder)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix == "":
        return "dataset"
    raise UserError(f"{path}: unknown output extension {suffix!r}; use .jsonl, .parquet or no extension "
                    "(a save_to_disk folder), or pass --format")  # fmt: skip


def _identity(path: Path):
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def check_distinct(paths: dict[str, str | None]) -> None:
    """Refuses two of `paths` (name -> path) that are the same file or folder, or one inside the other's folder.

    Symlinks and hard links are resolved, so `--report link-to-input` is caught too. Called before reading.
    """
    named = [(name, Path(p), *_identity(Path(p))) for name, p in paths.items() if p]
    for i, (a, pa, ra, ida) in enumerate(named):
        for b, pb, rb, idb in named[i + 1 :]:
            same = ra == rb or (ida is not None and ida == idb)
            inside = ra in rb.parents or rb in ra.parents
            if same or inside:
                how = "the same path" if same else "inside one another"
                raise UserError(f"--{a} {pa} and --{b} {pb} are {how}: refusing to overwrite data")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Removes temporary siblings of `path` left by killed runs (their process is gone); returns them."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}{re.escape(_TMP)}(\d+)-[0-9a-z_]+\.tmp$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    for entry in removed:
        print(f"trustreward: removed {entry}, left by a run that was killed", file=sys.stderr)
    return removed


def file_digest(path: str | Path) -> str:
    """The blake2b hash of a file's bytes (hex), as reports record it."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_not_inputs(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuses an output that is (or is inside, or holds) a file the command reads: `merge --rejects r0.jsonl`."""
    named_in = [(label, Path(p), *_identity(Path(p))) for label, p in inputs.items() if p]
    for name, path in outputs.items():
        if not path:
            continue
        ro, ido = _identity(Path(path))
        for label, pi, ri, idi in named_in:
            if ro == ri or (ido is not None and ido == idi) or ro in ri.parents or ri in ro.parents:
                raise UserError(f"--{name} {path} is {label} {pi}, which this run reads: refusing to overwrite data")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


class OutputSet:
    """The outputs of one run, committed together: `open(name)` / `folder(name)` give temporaries,
    `commit(report)` renames them into place and writes the report last (`report` path under `report_name`).

    ```python
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with OutputSet({"output": d / "kept.jsonl", "report": d / "report.json"}) as out:
    ...     _ = out.open("output").write(b"{}\\n")
    ...     out.commit({"rows": 1})
    >>> json.loads((d / "report.json").read_text())["outputs"]["output"]["bytes"]
    3

    ```
    """

    def __init__(self, paths: dict[str, str | Path], report_name: str = "report", merge_folders=("plots",),
                 hashed=("rejects",)):  # fmt: skip
        self.paths = {name: Path(p) for name, p in paths.items() if p}
        self.hashed = hashed  # outputs whose content hash the report records (`merge` checks shards' rejects)
        self.merge_folders = merge_folders  # committed file by file into the folder, which may hold other files
        self.report_name = report_name
        self.temps: dict[str, Path] = {}
        self.files = []
        self.done = False

    def __enter__(self):
        for path in self.paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path)
        return self

    def _temp_name(self, name: str) -> Path:
        path = self.paths[name]
        return path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(8)}.tmp")

    def open(self, name: str):
        """A new binary file for output `name`: created exclusively, never through a symlink."""
        tmp = self._temp_name(name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        self.temps[name] = tmp
        f = os.fdopen(fd, "wb")
        self.files.append(f)
        return f

    def scratch(self) -> Path:
        """A private folder next to the report for intermediate files (shards); removed on exit, whatever happens."""
        report = self.paths[self.report_name]
        path = Path(tempfile.mkdtemp(prefix=f".{report.name}{_TMP}{os.getpid()}-", suffix=".tmp", dir=report.parent))
        self.temps[f"scratch-{len(self.temps)}"] = path
        return path

    def folder(self, name: str) -> Path:
        """A new empty folder (mode 0700 until committed) for output `name`, e.g. for `save_to_disk`."""
        tmp = self._temp_name(name)
        os.mkdir(tmp, 0o700)
        self.temps[name] = tmp
        return tmp

    def commit(self, report: dict | None = None, rows: dict[str, int] | None = None) -> None:
        """Renames every output into place, then writes `report` (with `outputs`: each sibling's path, bytes, rows)."""
        for f in self.files:
            f.close()
        for name, tmp in list(self.temps.items()):  # intermediate files are no output
            if name.startswith("scratch-"):
                shutil.rmtree(tmp, ignore_errors=True)
                del self.temps[name]
        rows = rows or {}
        siblings = {
            name: {"path": str(self.paths[name]), "bytes": _size(tmp)}
            | ({"rows": rows[name]} if name in rows else {})
            | ({"blake2b": file_digest(tmp)} if name in self.hashed and tmp.is_file() else {})
            for name, tmp in self.temps.items()
        }
        report_path = self.paths.get(self.report_name)
        if report_path is not None and (report_path.exists() or report_path.is_symlink()):
            report_path.unlink()  # from here on, until the new report lands, the set reads as incomplete
        for name, tmp in self.temps.items():
            _replace(tmp, self.paths[name], merge=name in self.merge_folders)
        if report_path is not None and report is not None:
            text = json.dumps(report | {"outputs": siblings}, indent=2, ensure_ascii=False) + "\n"
            tmp = self._temp_name(self.report_name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            self.temps[self.report_name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, report_path)
        self.temps.clear()
        self.done = True

    def __exit__(self, *exc):
        for f in self.files:
            with contextlib.suppress(OSError):  # a full disk fails the flush again: the temporaries still go
                f.close()
        for tmp in self.temps.values():  # an error or an interrupt: nothing half-written stays
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()
        return False


_SAVED = ("dataset_info.json", "dataset_dict.json", "state.json")  # what a save_to_disk folder holds


def check_replaceable(name: str, path: str | Path, folder: bool) -> None:
    """An existing output is replaced only by its own kind: a file by a file, a folder only if it is a saved
    dataset (never a user's folder that happens to have the name)."""
    if not path:
        return
    path = Path(path)
    if not path.exists():
        return
    if folder and not (path.is_dir() and any((path / f).exists() for f in _SAVED)):
        raise UserError(f"--{name} {path} exists and is not a saved dataset: refusing to replace it")
    if not folder and path.is_dir():
        raise UserError(f"--{name} {path} is a folder: refusing to replace it with a file")


def _replace(tmp: Path, path: Path, merge: bool = False) -> None:
    if merge:  # files into an existing folder (plots): the folder and its other files stay
        path.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, path / f.name)
        tmp.rmdir()
        return
    if tmp.is_dir():
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists() or path.is_symlink():  # a folder cannot be renamed over a non-empty one
            aside = path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(8)}.tmp")
            path.rename(aside)
            tmp.rename(path)
            shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()
            return
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
