"""Known corpora: the manifest in `corpora/manifest.json`, `download`, and resolving names to files.

A known corpus is named where a file is expected: `multi30k/train.en` is the file `train.en` of the local
copy of Multi30k, and `demo` is the English-Korean corpus that ships with nmtkit. Local copies live in
`$NMTKIT_DATA` (default `~/.cache/nmtkit/corpora`), one folder per corpus. What is *not* here: parsing the
files (`corpora.py`).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from nmtkit.errors import DataError
from nmtkit.files import atomic_write, file_sha256, read_json

log = logging.getLogger("nmtkit")


def corpora_dir() -> Path:
    """The folder holding the manifest and the demo corpus (inside the wheel, or the source tree's `corpora/`)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "corpora"
    return packaged if packaged.is_dir() else here.parent.parent / "corpora"


def data_home() -> Path:
    return Path(os.environ.get("NMTKIT_DATA") or Path.home() / ".cache" / "nmtkit" / "corpora")


def manifest() -> dict[str, dict[str, Any]]:
    return read_json(corpora_dir() / "manifest.json")["corpora"]


def corpus_info(name: str) -> dict[str, Any]:
    known = manifest()
    if name not in known:
        raise DataError(f"unknown corpus {name!r}; known corpora: {', '.join(known)}")
    return known[name]


def corpus_dir(name: str, must_exist: bool = True) -> Path:
    """The local folder of a known corpus."""
    info = corpus_info(name)
    folder = corpora_dir() / name if info.get("embedded") else data_home() / name
    if must_exist and not folder.is_dir():
        raise DataError(
            f"corpus {name!r} is not downloaded; run: nmtkit download {name} (or nmtkit download {name} --from DIR)"
        )
    return folder


def resolve(spec: str | Path) -> Path:
    """A path as given, or `NAME/FILE` of a known corpus resolved to its local copy."""
    path = Path(spec)
    if path.exists():
        return path
    parts = Path(spec).parts
    if len(parts) == 2 and parts[0] in manifest():
        found = corpus_dir(parts[0]) / parts[1]
        if not found.is_file():
            files = sorted(p.name for p in found.parent.iterdir() if not p.name.startswith("."))
            raise DataError(f"{spec}: corpus {parts[0]!r} has no file {parts[1]!r}; it has: {', '.join(files)}")
        return found
    return path  # let the reader report "no such file" with the name as the user wrote it


def parallel_files(name: str, src_lang: str, tgt_lang: str, split: str) -> tuple[Path, Path]:
    """The source and target files of a split (train, valid, test) of a known translation corpus."""
    info = corpus_info(name)
    languages, splits = info.get("languages", []), info.get("splits", {})
    if info.get("task") != "translation":
        raise DataError(f"corpus {name!r} is not a translation corpus")
    for lang in (src_lang, tgt_lang):
        if lang not in languages:
            raise DataError(f"corpus {name!r} has no language {lang!r}; it has: {', '.join(languages)}")
    if split not in splits:
        raise DataError(f"corpus {name!r} has no split {split!r}; it has: {', '.join(splits)}")
    folder = corpus_dir(name)
    return folder / f"{splits[split]}.{src_lang}", folder / f"{splits[split]}.{tgt_lang}"


def download(name: str, to: str | Path | None = None, source: str | Path | None = None, verify: bool = True) -> Path:
    """Fetch a known corpus (or copy a local copy from `source`), check each file's sha256, return its folder."""
    info = corpus_info(name)
    if info.get("embedded"):
        return corpus_dir(name)
    folder = Path(to) if to else corpus_dir(name, must_exist=False)
    files: dict[str, dict[str, Any]] = info["files"]
    if source is None and info.get("prepared"):
        raise DataError(
            f"corpus {name!r}: nmtkit's layout is a prepared split of the official data "
            f"({info['source']['url']}); take a prepared copy with: nmtkit download {name} --from DIR"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for fname, meta in files.items():
        target = folder / fname
        if source is not None:
            origin = Path(source) / fname
            if not origin.is_file():
                raise DataError(f"{origin}: missing; --from must be a folder holding {', '.join(files)}")
            atomic_write(target, lambda f, o=origin: shutil.copyfileobj(open(o, "rb"), f))
        elif not (target.is_file() and file_sha256(target) == meta.get("sha256")):
            log.info("downloading %s", meta["url"])
            _fetch(meta["url"], target, gunzip=bool(meta.get("gunzip")))
        if verify and meta.get("sha256") and file_sha256(target) != meta["sha256"]:
            raise DataError(f"{target}: checksum mismatch (expected sha256 {meta['sha256'][:12]}...); the copy differs")
    return folder


def _fetch(url: str, target: Path, gunzip: bool) -> None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise DataError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); use --from DIR with a local copy") from None
    if gunzip:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{url}: not a valid gzip file ({exc})") from None
    atomic_write(target, lambda f: f.write(data))

