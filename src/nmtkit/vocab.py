"""Vocabularies: how a tokenizer's pieces (or a corpus's words) are used by a corpus, and the embedding table
that vocabulary implies.

The lecture's first step, sentence -> tokens -> token ids -> vectors: `nn.Embedding(len(vocab), D)` has one
row per vocabulary entry, so its size is `len(vocab) * D` parameters. A vocab file is a TSV of `piece<TAB>count`
lines, one per id, in id order (line 1 is id 0). What is *not* here: reading files (`nmtkit.data`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from nmtkit.errors import DataError
from nmtkit.files import write_lines
from nmtkit.tokenization import Tokenizer

# A word: letters/digits with inner apostrophes (don't, o'er), or one punctuation mark.
WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
SPECIAL_IDS = 4  # <pad> <unk> <s> </s>


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """The words of a text, as `train-embeddings --unit word` sees them."""
    return WORD_RE.findall(text.lower() if lowercase else text)


@dataclass
class PieceCounts:
    """How often each piece id occurs in a corpus, and the corpus's size in sentences and words."""

    counts: list[int]
    sentences: int
    words: int

    @property
    def tokens(self) -> int:
        return sum(self.counts)


def count_pieces(tok: Tokenizer, lines: Iterable[str], batch_size: int = 4096) -> PieceCounts:
    """Encode the corpus in batches (memory stays flat) and count every piece id; blank lines are not sentences."""
    import numpy as np

    counts = np.zeros(len(tok), dtype=np.int64)
    sentences = words = 0
    it = iter(lines)
    while batch := [line for line in itertools.islice(it, batch_size) if line.strip()]:
        sentences += len(batch)
        words += sum(len(line.split()) for line in batch)
        ids = tok.encode(batch)
        counts += np.bincount(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64), minlength=len(tok))
    return PieceCounts(counts.tolist(), sentences, words)


def vocab_stats(tok: Tokenizer, counts: PieceCounts, top: int = 20, embedding_dim: int | None = None) -> dict:
    """Coverage, unknown rate, unseen pieces, pieces per word and sentence, the most frequent pieces."""
    if counts.sentences == 0:
        raise DataError("empty corpus (no non-blank text)")
    c = counts.counts
    specials = {tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id}
    ordinary = [i for i in range(len(tok)) if i not in specials]
    unseen = [i for i in ordinary if c[i] == 0]
    total = counts.tokens
    stats = {
        "vocab_size": len(tok),
        "sentences": counts.sentences,
        "words": counts.words,
        "tokens": total,
        "pieces_seen": len(ordinary) - len(unseen),
        "coverage": round((len(ordinary) - len(unseen)) / max(len(ordinary), 1), 4),  # share of the vocab used
        "unknown_tokens": c[tok.unk_id] if tok.unk_id is not None else 0,  # byte-level BPE has no <unk>
        "unknown_rate": round((c[tok.unk_id] if tok.unk_id is not None else 0) / max(total, 1), 6),  # share of the corpus's tokens that are <unk>
        "pieces_per_word": round(total / max(counts.words, 1), 3),
        "pieces_per_sentence": round(total / counts.sentences, 2),
        "unseen_pieces": len(unseen),
        "unseen_examples": [tok.id_to_piece(i) for i in unseen[:20]],
        "top": [{"id": i, "piece": tok.id_to_piece(i), "count": c[i], "share": round(c[i] / max(total, 1), 4)}
                for i in sorted(range(len(c)), key=lambda i: (-c[i], i))[:top] if c[i]],
    }
    if embedding_dim:
        stats["embedding"] = {"shape": [len(tok), embedding_dim], "parameters": len(tok) * embedding_dim}
    return stats


ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(entry: str) -> str:
    """An entry safe on one line of a TSV file (a tokenizer may have a newline piece): \\n, \\t, \\r, \\\\."""
    return entry.translate(str.maketrans(ESCAPES))


def unescape(text: str) -> str:
    return re.sub(r"\\[\\ntr]", lambda m: {"\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\r": "\r"}[m.group()], text)


def write_vocab_file(path: str | Path, entries: Iterable[tuple[str, int]]) -> None:
    """`entry<TAB>count` lines in id order (line N is id N-1), written atomically; entries escaped."""
    write_lines(path, (f"{escape(entry)}\t{count}" for entry, count in entries))


def read_vocab_file(path: str | Path) -> list[tuple[str, int]]:
    path = Path(path)
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").removesuffix("\n").split("\n")  # not splitlines: \x1c is a piece
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the vocab file ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        entry, _, count = line.rpartition("\t")
        if not entry or not count.isdigit():
            raise DataError(f"{path}:{lineno}: expected 'entry<TAB>count', got {line[:40]!r}")
        entries.append((unescape(entry), int(count)))
    return entries


def word_vocab(words: Iterator[list[str]], min_count: int = 5, max_size: int = 0) -> list[tuple[str, int]]:
    """Words seen at least `min_count` times, most frequent first (ties alphabetical), at most `max_size` (0: all)."""
    counter: Counter[str] = Counter()
    for sentence in words:
        counter.update(sentence)
    entries = sorted(((w, n) for w, n in counter.items() if n >= min_count), key=lambda e: (-e[1], e[0]))
    if not entries:
        raise DataError(f"no word occurs {min_count} times or more (lower --min-count)")
    return entries[:max_size] if max_size else entries
