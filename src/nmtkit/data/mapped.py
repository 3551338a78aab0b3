"""Prepared training data opened for training (`nmtkit.data.prepared` writes it): the pairs of a translator
(`PreparedPairs`) and the labelled texts of a classifier (`PreparedTexts`), memory-mapped, with the batches
made from them.

Only the lengths (2 bytes a side) are read into memory; ids and offsets stay mapped, and each batch, once
copied out, releases the pages it read, so resident memory stays flat however large the files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nmtkit.data.prepared import MAX_LENGTH, META, SIDES
from nmtkit.errors import DataError
from nmtkit.files import read_json
from nmtkit.tokenization import BOS_ID, EOS_ID, PAD_ID

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("nmtkit")


class PreparedPairs:
    """A prepared folder opened for training: pairs of at most `max_len` pieces a side (the longer ones are
    counted and left out, as `encode_parallel` does), their batching lengths, and batches made from them."""

    def __init__(self, folder: str | Path, max_len: int, name: str = "training data"):
        import numpy as np

        self.folder = Path(folder)
        self.meta = read_json(self.folder / META)
        dtype = self.meta["dtype"]
        self.maps: list = []
        self.ids = {side: _mapped(self.folder / f"{side}.bin", dtype, self.maps) for side in SIDES}
        self.offsets = {side: _mapped(self.folder / f"{side}.idx", "int64", self.maps) for side in SIDES}
        src, tgt = (_mapped(self.folder / f"{side}.len", "uint16") for side in SIDES)
        n, limit = len(src), min(max_len, MAX_LENGTH)
        lengths = np.empty(n, dtype=np.uint16 if max_len < MAX_LENGTH else np.int32)
        keep = np.empty(n, dtype=bool)
        for a in range(0, n, 1 << 20):  # a block at a time: no temporary array of the corpus's size
            s, t = src[a : a + (1 << 20)].astype(np.int32), tgt[a : a + (1 << 20)].astype(np.int32)
            lengths[a : a + len(s)] = np.maximum(s + 1, t + 2)  # padded size in a batch: the longer side, with </s>, <s>
            keep[a : a + len(s)] = np.maximum(s, t) + 1 <= limit
        del src, tgt
        if self.meta["empty"]:
            log.warning("%s: skipped %d pair(s) with an empty side", name, self.meta["empty"])
        long = len(keep) - int(keep.sum())
        self.index = None  # the prepared pair of each kept pair, when some are left out
        if long:
            log.warning("%s: left out %d pair(s) longer than %d pieces (raise --max-len to keep them)", name, long,
                        max_len)
            self.index = np.flatnonzero(keep).astype(np.int64 if len(keep) >= 2**31 else np.int32)
            lengths = lengths[keep]
        if not len(lengths):
            raise DataError(f"{name}: no pair of at most {max_len} pieces (raise --max-len)")
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def lengths(self) -> "np.ndarray":
        """Each pair's padded size: the longer of source + </s> and <s> + target + </s>."""
        return self._lengths

    def mean_lengths(self) -> tuple[float, float]:
        """Mean source (+ </s>) and target (<s> + ... + </s>) lengths of all prepared pairs."""
        n = max(self.meta["pairs"], 1)
        return self.meta["tokens"]["src"] / n + 1, self.meta["tokens"]["tgt"] / n + 2

    def pair(self, i: int) -> tuple["np.ndarray", "np.ndarray"]:
        """The source and target piece ids (no <s> or </s>) of kept pair i."""
        j = int(self.index[i]) if self.index is not None else int(i)
        return tuple(self.ids[s][self.offsets[s][j] : self.offsets[s][j + 1]] for s in SIDES)  # type: ignore[return-value]

    def collate(self, indices: Sequence[int]):
        """The batch of these pairs: source + </s>, <s> + target + </s>, padded."""
        import numpy as np
        import torch

        from nmtkit.data.batching import Seq2SeqBatch

        pairs = [self.pair(i) for i in indices]
        src = np.full((len(pairs), max(len(s) for s, _ in pairs) + 1), PAD_ID, dtype=np.int64)
        tgt = np.full((len(pairs), max(len(t) for _, t in pairs) + 2), PAD_ID, dtype=np.int64)
        for row, (s, t) in enumerate(pairs):
            src[row, : len(s)] = s
            src[row, len(s)] = EOS_ID
            tgt[row, 0] = BOS_ID
            tgt[row, 1 : len(t) + 1] = t
            tgt[row, len(t) + 1] = EOS_ID
        _release(self.maps)
        s, t = torch.from_numpy(src), torch.from_numpy(tgt)
        return Seq2SeqBatch(s, s != PAD_ID, t[:, :-1], t[:, 1:])


def _mapped(path: Path, dtype: str, maps: list | None = None) -> "np.ndarray":
    """A read-only memory map of a file of `dtype` values, as an array (empty files map to nothing); its mmap is
    added to `maps`, for `_release`."""
    import mmap

    import numpy as np

    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if maps is not None:
        maps.append(mapped)
    return np.frombuffer(mapped, dtype=dtype)


def _release(maps: list) -> None:
    """Drop this process's page-table entries of mapped files once a batch is copied out of them (the pages stay
    in the page cache, for the next reader). Each random read maps the pages around it too, so without this the
    process's resident memory would grow towards the files' size over an epoch."""
    import mmap

    if hasattr(mmap, "MADV_DONTNEED"):
        for mapped in maps:
            mapped.madvise(mmap.MADV_DONTNEED)


class PreparedTexts:
    """A prepared classification data set (kind "labelled") opened for training, rows [start, stop) of it: each
    text cut to its first max_len - 1 pieces and closed by </s> (as `datasets.encode_texts`), each label as its
    index in the run's `labels`. `eos`: the tokenizer's end-of-text id."""

    def __init__(self, folder: str | Path, max_len: int, labels: list[str], rows: tuple[int, int] | None = None,
                 name: str = "training data", eos: int = EOS_ID):
        import numpy as np

        self.folder, self.max_len, self.eos = Path(folder), max_len, eos
        self.meta = read_json(self.folder / META)
        self.start, stop = rows or (0, self.meta["pairs"])
        self.maps: list = []
        self.ids = _mapped(self.folder / "text.bin", self.meta["dtype"], self.maps)
        self.offsets = _mapped(self.folder / "text.idx", "int64", self.maps)
        lengths = _mapped(self.folder / "text.len", "uint16")[self.start : stop]  # only these rows are read
        self._lengths = (np.minimum(lengths, max_len - 1) + 1).astype(np.int32)
        index = {label: i for i, label in enumerate(labels)}
        names = self.meta["labels"]
        unknown = [name_ for name_ in names if name_ not in index]
        remap = np.asarray([index.get(name_, -1) for name_ in names], dtype=np.int32)
        self.labels = remap[_mapped(self.folder / "labels.bin", "uint16")[self.start : stop]]
        if unknown and (self.labels < 0).any():
            raise DataError(f"{name}: label {unknown[0]!r} is not one of the run's labels ({', '.join(labels)})")

    def __len__(self) -> int:
        return len(self._lengths)

    def lengths(self):
        return self._lengths

    def seq(self, i: int) -> list[int]:
        j = self.start + int(i)
        return self.ids[self.offsets[j] : self.offsets[j + 1]][: self.max_len - 1].tolist() + [self.eos]

    def collate(self, indices: Sequence[int]):
        from nmtkit.data.batching import collate_classify

        import numpy as np

        batch = collate_classify([self.seq(i) for i in indices], self.labels[np.asarray(indices)].tolist())
        _release(self.maps)
        return batch

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0):
        from nmtkit.data.batching import LazyBatches, example_batches

        return LazyBatches(example_batches(self._lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch),
                           self.collate)


def labels_present(folder: str | Path, rows: tuple[int, int]) -> list[str]:
    """The label names that rows [start, stop) of a prepared classification data set use."""
    import numpy as np

    folder = Path(folder)
    names = read_json(folder / META)["labels"]
    return [names[i] for i in np.unique(_mapped(folder / "labels.bin", "uint16")[rows[0] : rows[1]])]
