"""Batches: padding, masks, token-based batches from length buckets (so padding stays small), and the next
batches collated in a background thread while the device works (`Prefetch`).

What is *not* here: what the ids mean (datasets.py) or what a model does with them.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


class Batch:
    """What every batch offers the training loop: its tensors moved to a device (`to`, asynchronous from pinned
    memory), pinned (`pin_memory`), and its counts as host numbers, `target_tokens` (what the loss is
    normalised by) and `tokens` (for throughput), counted once when the batch is made on the CPU: the loop never
    asks the device for a count."""

    target_tokens: int
    tokens: int

    def to(self, device):
        nb = device.type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=nb))

    def pin_memory(self):
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn):
        """The same batch with `fn` applied to every tensor (the counts carried over, not counted again)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})


@dataclass
class Seq2SeqBatch(Batch):
    """src (B, S) with src_mask (B, S) True on real tokens; tgt_in = <s> y (B, T); tgt_out = y </s> (B, T)."""

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    target_tokens: int = -1  # real target tokens (</s> included)
    tokens: int = -1  # real source + target tokens

    def __post_init__(self) -> None:
        if self.target_tokens < 0:
            self.target_tokens = int((self.tgt_out != PAD_ID).sum())
        if self.tokens < 0:
            self.tokens = int(self.src_mask.sum()) + self.target_tokens


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


class Prefetch:
    """`fetch(g, ahead)`: what `load(g)` gives (the training loop: group g's micro-batches), while `load(ahead)`
    starts in a background thread, so the next group is ready when the device has worked through this one.
    Without `enabled`, every group is loaded when asked for (the same batches: collating draws on no shared
    random state)."""

    def __init__(self, load: Callable[[int], list], enabled: bool):
        self.load, self.pending = load, {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="nmtkit-batches") if enabled else None

    def __enter__(self):
        return self

    def __call__(self, g: int, ahead: int | None) -> list:
        future: Future | None = self.pending.pop(g, None)
        micro = future.result() if future is not None else self.load(g)
        if self.pool is not None and ahead is not None:
            self.pending[ahead] = self.pool.submit(self.load, ahead)
        return micro

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class LMBatch(Batch):
    """ids (B, T) and the next tokens as targets (B, T)."""

    ids: Tensor
    targets: Tensor
    target_tokens: int = -1  # positions with a target (not IGNORE)
    tokens: int = -1

    def __post_init__(self) -> None:
        if self.target_tokens < 0:
            self.target_tokens = int((self.targets != IGNORE).sum())
        if self.tokens < 0:
            self.tokens = self.ids.numel()


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
class ClassifyBatch(Batch):
    """ids (B, T) right-padded; lengths (B,); labels (B,) class indices."""

    ids: Tensor
    lengths: Tensor
    labels: Tensor
    target_tokens: int = -1  # examples
    tokens: int = -1

    def __post_init__(self) -> None:
        if self.target_tokens < 0:
            self.target_tokens = len(self.labels)
        if self.tokens < 0:
            self.tokens = int(self.lengths.sum())


@dataclass
class SpanBatch(Batch):
    """ids (B, T) right-padded; lengths (B,); start and end (B,) answer positions; allowed (B, T) the positions
    an answer may start or end at (the context pieces, and the closing </s> that means "not in this window")."""

    ids: Tensor
    lengths: Tensor
    start: Tensor
    end: Tensor
    allowed: Tensor
    target_tokens: int = -1  # two per example: start and end
    tokens: int = -1

    def __post_init__(self) -> None:
        if self.target_tokens < 0:
            self.target_tokens = 2 * len(self.start)
        if self.tokens < 0:
            self.tokens = int(self.lengths.sum())


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
