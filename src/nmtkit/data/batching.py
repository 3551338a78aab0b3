"""Batches: padding, masks, and token-based batches from length buckets (so padding stays small).

What is *not* here: what the ids mean (datasets.py) or what a model does with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from nmtkit.tokenization import PAD_ID

IGNORE = -100  # a target position no loss is taken on (cross_entropy's ignore_index)


def pad(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> Tensor:
    """Right-pad a list of id lists into a (B, L) long tensor."""
    out = torch.full((len(seqs), max((len(s) for s in seqs), default=0)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class Seq2SeqBatch:
    """src (B, S) with src_mask (B, S) True on real tokens; tgt_in = <s> y (B, T); tgt_out = y </s> (B, T)."""

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    @property
    def tokens(self) -> int:
        """Real (non-pad) source + target tokens, for throughput figures."""
        return int(self.src_mask.sum()) + self.target_tokens

    def to(self, device) -> "Seq2SeqBatch":
        nb = device.type == "cuda"
        return Seq2SeqBatch(*(t.to(device, non_blocking=nb) for t in (self.src, self.src_mask, self.tgt_in, self.tgt_out)))


def collate_pairs(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Seq2SeqBatch:
    """src: ids + </s>; tgt: <s> + ids + </s>."""
    s = pad(src)
    t = pad(tgt)
    return Seq2SeqBatch(s, s != PAD_ID, t[:, :-1], t[:, 1:])


def token_batches(lengths, max_tokens: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> "IndexBatches":
    """Group example indices into batches whose padded size (count x longest) stays within `max_tokens`.

    Examples are sorted by length (ties broken at random when shuffling) so each batch holds similar lengths;
    the batch order is then shuffled. All of it is numpy arrays over the lengths (a few bytes per example, no
    Python object per example). Deterministic for a given (seed, epoch), which is what makes `--resume`
    continue with exactly the batches an uninterrupted run would have seen.
    """
    import numpy as np

    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order, counts = _by_length(lengths, rng if shuffle else None)
    bounds = _bucket_bounds(counts, max_tokens)
    return IndexBatches(order, bounds, rng.permutation(len(bounds) - 1) if shuffle else np.arange(len(bounds) - 1))


def _by_length(lengths, rng, block: int = 1 << 18):
    """Example indices sorted by length, ties in random order when `rng` is given (a stable sort of a random
    permutation), and how many examples have each length. A counting sort over the few hundred lengths there
    are, a block at a time, so that sorting millions of examples takes the order array (int32) and one block."""
    import numpy as np

    n = len(lengths)
    index_type = np.int32 if n < 2**31 else np.int64
    if lengths.dtype.kind not in "iu":  # no examples at all (an empty list is float)
        lengths = lengths.astype(np.int64)
    counts = np.bincount(lengths, minlength=1)
    free = np.r_[0, np.cumsum(counts)[:-1]]  # where the next example of each length goes
    ids = np.arange(n, dtype=index_type)
    if rng is not None:
        rng.shuffle(ids)
    order = np.empty(n, dtype=index_type)
    for start in range(0, n, block):
        chunk = ids[start : start + block]
        by_length = np.argsort(lengths[chunk], kind="stable")
        values = lengths[chunk][by_length]
        rank = np.arange(len(values)) - np.searchsorted(values, values)  # place among the block's equal lengths
        order[free[values] + rank] = chunk[by_length]
        free += np.bincount(lengths[chunk], minlength=len(counts))
    return order, counts


def _bucket_bounds(counts, max_tokens: int):
    """Where batches start in the examples sorted by length (`counts[v]` of length v): each batch takes examples
    while (count x the last one's length) stays within max_tokens (an example longer than that is a batch of
    its own). The sorted lengths are runs of equal values, a few hundred; a batch ends at the first example of a
    run it cannot reach."""
    import numpy as np

    values = np.flatnonzero(counts)
    run_ends = np.cumsum(counts[values])
    run_starts = run_ends - counts[values]
    n = int(run_ends[-1]) if len(values) else 0
    room = max_tokens // np.maximum(values, 1)  # examples a batch of each length holds
    bounds, i, r = [0], 0, 0
    while i < n:
        while run_ends[r] <= i:
            r += 1
        # the first example a batch starting at i cannot take, in each run from the current one on
        stop = np.maximum(run_starts[r:], i + room[r:])
        stop = stop[stop < run_ends[r:]]
        i = max(int(stop[0]) if len(stop) else n, i + 1)
        bounds.append(i)
    return np.asarray(bounds, dtype=np.int64)


class IndexBatches(Sequence):
    """Batches of example indices: batch b is order[bounds[k]:bounds[k + 1]] for k = batch_order[b]."""

    def __init__(self, order, bounds, batch_order):
        self.order, self.bounds, self.batch_order = order, bounds, batch_order

    def __len__(self) -> int:
        return len(self.batch_order)

    def __getitem__(self, b):  # type: ignore[override]
        if not -len(self) <= b < len(self):
            raise IndexError(b)
        k = self.batch_order[b]
        return self.order[self.bounds[k] : self.bounds[k + 1]]


class LazyBatches(Sequence):
    """A list of index batches that collates each one only when it is asked for."""

    def __init__(self, index_batches: list[list[int]], collate: Callable[[list[int]], object]):
        self.index_batches, self.collate = index_batches, collate

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, i):  # type: ignore[override]
        return self.collate(self.index_batches[i])


@dataclass
class LMBatch:
    """ids (B, T) and the next tokens as targets (B, T)."""

    ids: Tensor
    targets: Tensor

    @property
    def target_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def tokens(self) -> int:
        return self.ids.numel()

    def to(self, device) -> "LMBatch":
        return _to(self, device)


def _to(batch, device):
    """The same batch with every tensor moved to `device`."""
    nb = device.type == "cuda"
    return type(batch)(*(getattr(batch, f.name).to(device, non_blocking=nb) for f in dataclasses.fields(batch)))


def lm_windows(stream, starts: Sequence[int], block: int) -> LMBatch:
    """Windows of `block` ids starting at `starts`, with targets shifted by one."""
    import numpy as np

    rows = np.stack([np.asarray(stream[s : s + block + 1], dtype=np.int64) for s in starts])
    x = torch.from_numpy(rows)
    return LMBatch(x[:, :-1].contiguous(), x[:, 1:].contiguous())


def random_windows(stream, block: int, batch_size: int, *, seed: int, epoch: int) -> LazyBatches:
    """One epoch of random windows: as many batches as the stream has `batch_size x block` tokens. Each batch's
    starts come from (seed, epoch, index), so the same epoch always gives the same batches (exact resume)."""
    n = len(stream) - block - 1
    if n < 1:
        raise ValueError(f"the training text has {len(stream)} tokens, fewer than one window of {block + 1}")
    per_epoch = max(1, len(stream) // (batch_size * block))

    def collate(i: list[int]) -> LMBatch:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + i[0])
        return lm_windows(stream, torch.randint(0, n, (batch_size,), generator=g).tolist(), block)

    return LazyBatches([[i] for i in range(per_epoch)], collate)


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning batches


def example_batches(lengths, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> IndexBatches:
    """Batches of `batch_size` examples of similar length (ties broken at random), in random order when
    shuffling; deterministic for a given (seed, epoch). numpy arrays over the lengths, as `token_batches`."""
    import numpy as np

    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order, _ = _by_length(lengths, rng if shuffle else None)
    bounds = np.r_[np.arange(0, len(lengths), batch_size), len(lengths)]
    return IndexBatches(order, bounds, rng.permutation(len(bounds) - 1) if shuffle else np.arange(len(bounds) - 1))


@dataclass
class ClassifyBatch:
    """ids (B, T) right-padded; lengths (B,); labels (B,) class indices."""

    ids: Tensor
    lengths: Tensor
    labels: Tensor

    @property
    def target_tokens(self) -> int:
        return len(self.labels)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device) -> "ClassifyBatch":
        return _to(self, device)


@dataclass
class SpanBatch:
    """ids (B, T) right-padded; lengths (B,); start and end (B,) answer positions; allowed (B, T) the positions
    an answer may start or end at (the context pieces, and the closing </s> that means "not in this window")."""

    ids: Tensor
    lengths: Tensor
    start: Tensor
    end: Tensor
    allowed: Tensor

    @property
    def target_tokens(self) -> int:
        return 2 * len(self.start)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device) -> "SpanBatch":
        return _to(self, device)


def collate_classify(seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> ClassifyBatch:
    return ClassifyBatch(pad(seqs), torch.tensor([len(s) for s in seqs]), torch.tensor(list(labels)))


def collate_spans(features) -> SpanBatch:
    """QA features (see `nmtkit.data.datasets.QAFeature`) into a batch."""
    ids = pad([f.ids for f in features])
    allowed = torch.zeros(ids.shape, dtype=torch.bool)
    for b, f in enumerate(features):
        allowed[b, f.offset : f.offset + len(f.starts)] = True
        allowed[b, f.null] = True
    return SpanBatch(ids, torch.tensor([len(f.ids) for f in features]), torch.tensor([f.start for f in features]),
                     torch.tensor([f.end for f in features]), allowed)


def collate_instructions(seqs: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> LMBatch:
    """Next-token batches whose targets are only the response tokens (the prompt and padding are IGNORE)."""
    x = pad(seqs)
    targets = torch.full_like(x, IGNORE)
    for b, (s, n) in enumerate(zip(seqs, prompt_lengths)):
        targets[b, n - 1 : len(s) - 1] = torch.as_tensor(s[n:])  # position t predicts token t + 1
    return LMBatch(x[:, :-1].contiguous(), targets[:, :-1].contiguous())
