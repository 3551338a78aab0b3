"""Examples: text turned into id sequences ready for batching (parallel pairs for translation).

What is *not* here: reading files (corpora.py) and batching (batching.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from nmtkit.errors import DataError
from nmtkit.tokenization import BOS_ID, EOS_ID, Tokenizer

log = logging.getLogger("nmtkit")


@dataclass
class ParallelData:
    """Source ids end with </s>; target ids are <s> ... </s>."""

    src: list[list[int]]
    tgt: list[list[int]]
    src_text: list[str]
    tgt_text: list[str]

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> list[int]:
        """The longer side of each pair, which is what bounds a batch's padded size."""
        return [max(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def encode_parallel(
    pairs: Iterable[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer, max_len: int, name: str,
    drop_long: bool = True,
) -> ParallelData:
    """Tokenize pairs. Empty pairs are skipped and pairs longer than `max_len` pieces are left out (training)
    or truncated (evaluation); both are counted and reported, never dropped silently."""
    src_text, tgt_text = [], []
    empty = 0
    for s, t in pairs:
        if not s.strip() or not t.strip():
            empty += 1
            continue
        src_text.append(s)
        tgt_text.append(t)
    if not src_text:
        raise DataError(f"{name}: empty corpus (no non-empty sentence pairs)")
    src_ids = [ids + [EOS_ID] for ids in src_tok.encode(src_text)]
    tgt_ids = [[BOS_ID] + ids + [EOS_ID] for ids in tgt_tok.encode(tgt_text)]
    keep = [i for i in range(len(src_ids)) if max(len(src_ids[i]), len(tgt_ids[i]) - 1) <= max_len]
    long = len(src_ids) - len(keep)
    if empty:
        log.warning("%s: skipped %d pair(s) with an empty side", name, empty)
    if long and drop_long:
        log.warning("%s: left out %d pair(s) longer than %d pieces (raise --max-len to keep them)", name, long, max_len)
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return ParallelData(pick(src_ids), pick(tgt_ids), pick(src_text), pick(tgt_text))
    if long:
        log.warning("%s: truncated %d pair(s) longer than %d pieces", name, long, max_len)
        src_ids = [s[: max_len - 1] + [EOS_ID] if len(s) > max_len else s for s in src_ids]
        tgt_ids = [t[:max_len] + [EOS_ID] if len(t) > max_len + 1 else t for t in tgt_ids]
    return ParallelData(src_ids, tgt_ids, src_text, tgt_text)


# ---------------------------------------------------------------------------------------------------------
# Language modelling: one stream of ids, memory-mapped


def split_documents(documents: Iterable[str], valid_chars: int, total_chars: int):
    """Yield (part, text) with part "train" or "valid": the last `valid_chars` characters are validation text,
    cut at the exact character (as nanoGPT splits tinyshakespeare)."""
    boundary = total_chars - valid_chars
    seen = 0
    for doc in documents:
        if seen + len(doc) <= boundary:
            yield "train", doc
        elif seen >= boundary:
            yield "valid", doc
        else:
            cut = boundary - seen
            yield "train", doc[:cut]
            yield "valid", doc[cut:]
        seen += len(doc)


def encode_stream(
    parts: Iterable[tuple[str, str]], tokenizer: Tokenizer, folder, newline_id: int | None, chunk_chars: int = 1 << 16
) -> dict:
    """Tokenize documents into `folder/train.bin` and `folder/valid.bin` (uint16 or uint32 ids), documents
    separated by </s>, line breaks as the tokenizer's newline piece. Returns token and character counts."""
    import numpy as np
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if len(tokenizer) < 65536 else np.uint32
    files = {name: open(folder / f"{name}.bin.tmp", "wb") for name in ("train", "valid")}
    counts = {"train": {"tokens": 0, "chars": 0}, "valid": {"tokens": 0, "chars": 0}}
    try:
        for part, doc in parts:
            lines = doc.split("\n")
            ids: list[int] = []
            for start in range(0, len(lines), 512):  # encode a few hundred lines at a time
                block = lines[start : start + 512]
                chunks = ["\n".join(block)] if newline_id is not None else block
                for piece_ids in tokenizer.encode(chunks):
                    if ids and newline_id is not None:
                        ids.append(newline_id)
                    ids.extend(piece_ids)
            ids.append(EOS_ID)
            files[part].write(np.asarray(ids, dtype=dtype).tobytes())
            counts[part]["tokens"] += len(ids)
            counts[part]["chars"] += len(doc)
    finally:
        for f in files.values():
            f.close()
    for name in files:
        (folder / f"{name}.bin.tmp").replace(folder / f"{name}.bin")
    return {"dtype": np.dtype(dtype).name, **counts}


def load_stream(folder, part: str, dtype: str):
    """The ids of one part as a read-only memory map (1-D numpy array)."""
    import numpy as np
    from pathlib import Path

    path = Path(folder) / f"{part}.bin"
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
