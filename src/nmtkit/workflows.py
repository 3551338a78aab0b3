"""One plain function per command: wire data, tokenizer, model and training together and return results.

Nothing here prints or exits (that is `nmtkit.cli`); progress goes through the `nmtkit` logger. Heavy
libraries (torch, datasets) are imported inside the functions that need them.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import TokenizerConfig
from nmtkit.data import corpora, registry
from nmtkit.errors import CheckpointError, DataError
from nmtkit.files import file_sha256, read_json
from nmtkit.tokenization import INFO_FILE, Tokenizer, train_tokenizer as _train_tokenizer

log = logging.getLogger("nmtkit")


# ---------------------------------------------------------------------------------------------------------
# Inputs


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, `NAME/FILE` of a known corpus, or a bare known translation corpus name (its train files)."""
    paths: list[Path] = []
    for spec in inputs:
        if not Path(spec).exists() and spec in registry.manifest():
            info = registry.corpus_info(spec)
            folder = registry.corpus_dir(spec)
            train = info.get("splits", {}).get("train")
            if train and info.get("languages"):
                paths += [folder / f"{train}.{lang}" for lang in info["languages"]]
            else:
                paths += [folder / name for name in info.get("files", {})][:1]
        else:
            paths.append(registry.resolve(spec))
    return paths


def describe_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Provenance for run records: each data file with its size and sha256."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths if p.is_file()]


# ---------------------------------------------------------------------------------------------------------
# train-tokenizer / tokenize


def train_tokenizer(
    inputs: list[str],
    out: str | Path,
    cfg: TokenizerConfig,
    *,
    column: str | None = None,
    header: bool = True,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    data_files: list[str] | None = None,
    on_bad_line: corpora.OnBadLine = "error",
) -> dict[str, Any]:
    """Train a SentencePiece tokenizer on files (text, table columns, JSON fields) and/or a HF dataset column."""
    if not inputs and not dataset:
        raise DataError("no training text: give input files, a known corpus name, or --dataset")
    paths = expand_inputs(inputs)
    streams: list[Iterator[str]] = [
        corpora.read_texts(p, column, header=header, on_bad_line=on_bad_line) for p in paths
    ]
    provenance: dict[str, Any] = {"files": describe_files(paths), "column": column}
    if dataset:
        if not column:
            raise DataError(f"dataset {dataset!r}: --column is needed to say which column holds the text")
        ds = corpora.load_hf_dataset(dataset, dataset_config, split, data_files)
        streams.append(corpora.hf_column(ds, column, dataset))
        provenance["dataset"] = {"name": dataset, "config": dataset_config, "split": split, "data_files": data_files}
    names = ", ".join([str(p) for p in paths] + ([dataset] if dataset else []))
    sentences = corpora.nonempty(itertools.chain.from_iterable(streams), names)
    tokenizer = _train_tokenizer(sentences, out, cfg, provenance)
    return {"folder": str(out), **tokenizer.info}


def tokenize(
    tokenizer: Tokenizer, lines: Iterable[str | None], *, ids: bool = False, decode: bool = False, batch_size: int = 4096
) -> Iterator[str]:
    """Map input lines to output lines, exactly one for one, in batches (so memory stays flat).

    `None` stands for a line the reader skipped (invalid UTF-8); it gives an empty output line. Encoding gives
    space-separated pieces (or ids); decoding reads pieces (or ids) and gives text. An empty line stays empty.
    """
    it = iter(lines)
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        texts = [line or "" for line in batch]
        if decode:
            yield from (_decode_line(tokenizer, line, ids) for line in texts)
        elif ids:
            yield from (" ".join(map(str, row)) for row in tokenizer.encode(texts))
        else:
            yield from (" ".join(row) for row in tokenizer.encode_pieces(texts))


def _decode_line(tokenizer: Tokenizer, line: str, ids: bool) -> str:
    fields = line.split()
    if not ids:
        return tokenizer.decode_pieces([fields])[0]
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise DataError(f"--decode --ids: {line[:40]!r} is not a line of integer ids") from None
    bad = [n for n in numbers if not 0 <= n < len(tokenizer)]
    if bad:
        raise DataError(f"--decode --ids: id {bad[0]} is outside the vocabulary (0..{len(tokenizer) - 1})")
    return tokenizer.decode([numbers])[0]


# ---------------------------------------------------------------------------------------------------------
# download / info


def download(name: str, to: str | None = None, source: str | None = None, verify: bool = True) -> Path:
    return registry.download(name, to, source, verify)


def list_corpora() -> list[dict[str, Any]]:
    rows = []
    for name, info in registry.manifest().items():
        folder = registry.corpus_dir(name, must_exist=False)
        rows.append({"name": name, "task": info.get("task"), "local": str(folder) if folder.is_dir() else None,
                     "description": info.get("description")})
    return rows


def info(path: str | Path) -> dict[str, Any]:
    """What a run folder or tokenizer folder holds: kind, settings, parameters, data, scores, files."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run or tokenizer folder")
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if (path / INFO_FILE).is_file() and not (path / checkpoint.CONFIG).is_file():
        tok = read_json(path / INFO_FILE)
        return {"path": str(path), "kind": "tokenizer", **tok, "files": files}
    config = checkpoint.read_config(path)
    result: dict[str, Any] = {"path": str(path), "kind": config["kind"], "config": config, "files": files}
    if (path / checkpoint.WEIGHTS).is_file():
        result["parameters"] = checkpoint.count_parameters(checkpoint.load_weights(path / checkpoint.WEIGHTS))
    if (path / checkpoint.TOKENIZER_DIR / INFO_FILE).is_file():
        tok = read_json(path / checkpoint.TOKENIZER_DIR / INFO_FILE)
        result["tokenizer"] = {"vocab_size": tok.get("vocab_size"), **tok.get("config", {})}
    metrics = checkpoint.read_jsonl(path / checkpoint.METRICS)
    if metrics:
        result["evaluations"] = len(metrics)
        result["last_evaluation"] = metrics[-1]
    if (path / checkpoint.RUN_RECORD).is_file():
        result["run"] = read_json(path / checkpoint.RUN_RECORD)
    return result
