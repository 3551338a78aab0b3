"""Files that are never half-written, output folders that never lose a user's files, and the small JSON helpers
every layer uses.

`atomic_write` writes to a temporary name in the same folder, flushes to disk and renames, so a crash leaves
either the old file or the new one; a write that fails (disk full, permission denied) raises `WriteError` naming
the file and leaves the old one in place. A path that is not a regular file (a device such as /dev/null, a
FIFO, /dev/stdout) is written through instead, a symbolic link is followed to its file, and a new file gets the
mode the umask gives (a replaced one keeps its own).

`check_output_folder` is the one rule of every command that writes a folder: a missing or empty folder is
written, a folder holding only that command's own kind of output is replaced, and anything else is refused
unless the user says `--overwrite`, which writes beside what is there. nmtkit deletes nothing it did not create.
Bottom layer: imports nothing from nmtkit but `errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from nmtkit.errors import CheckpointError, WriteError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it over `path` (a path that
    is not a regular file is written through; a symbolic link is followed)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise WriteError(f"{path}: is a folder; give the name of a file to write")
    if path.exists() and not path.is_file():  # a device, a FIFO, /dev/stdout: written through
        return _write_through(path, write, mode)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o666 & ~_umask())
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
            raise write_error(path, exc) from None
        raise


def _write_through(path: Path, write: Callable[[Any], None], mode: str) -> None:
    try:
        with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise WriteError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-line error of a write that failed, the file on disk (if any) left as it was."""
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
        raise write_error(Path(path), exc) from None


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


# ---------------------------------------------------------------------------------------------------------
# Output folders

TEMPORARY = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp")  # what atomic_write leaves when it is killed


def temporary_target(name: str) -> str | None:
    """The file a temporary name of `atomic_write` was for, or None for any other name."""
    found = TEMPORARY.fullmatch(name)
    return found["target"] if found else None


def check_output_folder(path: str | Path, own: Callable[[Path], bool], overwrite: bool, what: str,
                        writes: Iterable[str] = ()) -> None:
    """Refuse to write the folder `path` when it is a file, or a folder holding anything but `what` (`own`
    says whether a folder is one), unless `overwrite`: then the command writes beside what is there, never over
    it: a folder that holds one of the names the command `writes` is refused all the same, naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{path}: is a file; --output names the folder to write")
    if not path.is_dir() or not any(path.iterdir()) or own(path):
        return
    if not overwrite:
        raise WriteError(f"{path}: holds files that are not {what}; choose another --output, or add --overwrite to "
                         "write into it (nothing there is deleted)")
    taken = sorted(name for name in writes if (path / name).exists())
    if taken:
        raise WriteError(f"{path}: holds {', '.join(taken)}, which {what} would replace; --overwrite writes beside "
                         "a folder's files, never over them: choose another --output")
