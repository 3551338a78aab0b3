"""Text: train a SentencePiece tokenizer, tokenize text (and back), fetch known corpora."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit.config import TokenizerConfig
from nmtkit.data import corpora, registry
from nmtkit.data.sources import TextSource, describe_files
from nmtkit.errors import DataError
from nmtkit.tokenization import Tokenizer, train_tokenizer as _train_tokenizer


def train_tokenizer(sources: list[TextSource], out: str | Path, cfg: TokenizerConfig,
                    on_bad_line: corpora.OnBadLine = "error", overwrite: bool = False) -> dict[str, Any]:
    """Train one SentencePiece tokenizer on files (text, table columns, JSON fields) and/or HF dataset columns:
    one source per column, so a joint tokenizer reads both sides of a parallel table."""
    first = sources[0]
    if not first.inputs and not first.dataset:
        raise DataError("no training text: give input files, a known corpus name, or --dataset")
    if first.dataset and not first.column:
        raise DataError(f"dataset {first.dataset!r}: --column is needed to say which column holds the text")
    provenance: dict[str, Any] = {"files": describe_files(first.files()), "column": first.column}
    if len(sources) > 1:
        provenance["columns"] = [s.column for s in sources]
    if first.dataset:
        provenance["dataset"] = {"name": first.dataset, "config": first.config, "split": first.split,
                                 "data_files": first.data_files}
    sentences = corpora.nonempty(itertools.chain.from_iterable(s.texts(on_bad_line) for s in sources), first.name())
    tokenizer = _train_tokenizer(sentences, out, cfg, provenance, overwrite)
    return {"folder": str(out), **tokenizer.info}


def tokenize(
    tokenizer: Tokenizer, lines: Iterable[str | None], *, ids: bool = False, decode: bool = False, batch_size: int = 4096
) -> Iterator[str]:
    """Map input lines to output lines, exactly one for one, in batches (so memory stays flat).

    `None` stands for a line the reader skipped (invalid UTF-8); it gives an empty output line. Encoding gives
    space-separated pieces (or ids); decoding reads pieces (or ids) and gives text. An empty line stays empty.
    """
    it = iter(lines)
    done = 0
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        texts = [line or "" for line in batch]
        if decode:
            yield from (_decode_line(tokenizer, line, ids, done + i + 1) for i, line in enumerate(texts))
        elif ids:
            yield from (" ".join(map(str, row)) for row in tokenizer.encode(texts))
        else:
            yield from (" ".join(row) for row in tokenizer.encode_pieces(texts))
        done += len(batch)


def _decode_line(tokenizer: Tokenizer, line: str, ids: bool, lineno: int) -> str:
    fields = line.split()
    if not ids:
        try:
            return tokenizer.decode_pieces([fields])[0]
        except DataError as exc:  # a piece the tokenizer does not have (a byte-level BPE one has no <unk>)
            raise DataError(f"input line {lineno}: {exc}") from None
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise DataError(f"input line {lineno}: {line[:40]!r} is not a line of integer ids (--decode --ids)") from None
    bad = [n for n in numbers if not 0 <= n < len(tokenizer)]
    if bad:
        raise DataError(f"input line {lineno}: id {bad[0]} is outside the vocabulary (0..{len(tokenizer) - 1})")
    return tokenizer.decode([numbers])[0]


def download(name: str, to: str | None = None, source: str | None = None, verify: bool = True) -> Path:
    return registry.download(name, to, source, verify)


def list_corpora() -> list[dict[str, Any]]:
    rows = []
    for name, info in registry.manifest().items():
        folder = registry.corpus_dir(name, must_exist=False)
        rows.append({"name": name, "task": info.get("task"), "local": str(folder) if folder.is_dir() else None,
                     "description": info.get("description")})
    return rows
