"""Files that are never half-written, and the small JSON helpers every layer uses.

`atomic_write` writes to a temporary name in the same folder, flushes to disk and renames, so a crash leaves
either the old file or the new one; a write that fails (disk full, permission denied) raises `WriteError` naming
the file and leaves the old one in place. Bottom layer: imports nothing from nmtkit but `errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from nmtkit.errors import CheckpointError, WriteError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # an error of this write (not of reading what is written): on the file, a temporary beside it, or a folder above
        if isinstance(exc, OSError) and (exc.filename is None or Path(exc.filename).parent == path.parent
                                         or str(path).startswith(str(exc.filename))):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> WriteError:
    return WriteError(f"{path}: cannot write: {exc.strerror or exc} (the file on disk, if any, is unchanged)")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n"), mode="w")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Lines of UTF-8 text, each ended by "\n", atomically."""
    atomic_write(path, lambda f: f.writelines((line + "\n").encode("utf-8") for line in lines))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one line; a torn last line (crash mid-write) is ignored by `read_jsonl`."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _write_error(Path(path), exc) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
