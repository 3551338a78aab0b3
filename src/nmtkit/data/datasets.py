"""Examples: text turned into id sequences ready for batching (parallel pairs for translation, in memory:
validation sets; training sets are prepared once and memory-mapped, prepared.py).

What is *not* here: reading files (corpora.py) and batching (batching.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from nmtkit.errors import DataError
from nmtkit.files import write_error
from nmtkit.tokenization import BOS_ID, EOS_ID, Tokenizer

if TYPE_CHECKING:
    import torch

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

    def collate(self, indices):
        from nmtkit.data.batching import collate_pairs

        return collate_pairs([self.src[i] for i in indices], [self.tgt[i] for i in indices])


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
    tmp = {name: folder / f".{name}.bin.tmp" for name in ("train", "valid")}
    files = {name: open(path, "wb") for name, path in tmp.items()}
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
            ids.append(tokenizer.eos_id)
            _written(folder / f"{part}.bin", lambda: files[part].write(np.asarray(ids, dtype=dtype).tobytes()))
            counts[part]["tokens"] += len(ids)
            counts[part]["chars"] += len(doc)
        for name, f in files.items():
            _written(folder / f"{name}.bin", lambda: (f.flush(), os.fsync(f.fileno())))
    except BaseException:
        for f, path in zip(files.values(), tmp.values()):
            try:
                f.close()
            except OSError:  # what it still held could not be written either: the file goes anyway
                pass
            path.unlink(missing_ok=True)
        raise
    for f in files.values():
        f.close()
    for name, path in tmp.items():
        path.replace(folder / f"{name}.bin")
    return {"dtype": np.dtype(dtype).name, **counts}


def _written(path, write) -> None:
    """Run `write`; a full disk or a refused write is one line naming the file (written under a temporary name,
    removed, so nothing half-written is left)."""
    try:
        write()
    except OSError as exc:
        raise write_error(path, exc) from None


def load_stream(folder, part: str, dtype: str):
    """The ids of one part as a read-only memory map (1-D numpy array)."""
    import numpy as np
    from pathlib import Path

    path = Path(folder) / f"{part}.bin"
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


# ---------------------------------------------------------------------------------------------------------
# Word vectors: a corpus as one stream of ids with sentence numbers; skip-gram pairs and CBOW windows


@dataclass
class TokenStream:
    """A corpus as ids (L,) and the sentence each token belongs to (L,); windows never cross sentences."""

    ids: "torch.Tensor"
    sentences: "torch.Tensor"

    @classmethod
    def from_sentences(cls, sentences: Iterable[list[int]]) -> "TokenStream":
        import numpy as np
        import torch

        ids: list[int] = []
        lengths: list[int] = []
        for sentence in sentences:
            if sentence:
                ids.extend(sentence)
                lengths.append(len(sentence))
        if not ids:
            raise DataError("empty corpus (no token of the vocabulary)")
        numbers = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        return cls(torch.tensor(ids, dtype=torch.long), torch.from_numpy(numbers))

    def __len__(self) -> int:
        return len(self.ids)


def keep_probabilities(counts: "torch.Tensor", sample: float) -> "torch.Tensor":
    """word2vec's subsampling of frequent words: a word of corpus frequency f is kept with probability
    (sqrt(f / sample) + 1) * sample / f (capped at 1); `sample <= 0` keeps every word."""
    import torch

    counts = counts.double()
    if sample <= 0:
        return torch.ones_like(counts)
    f = counts / counts.sum()
    return ((torch.sqrt(f / sample) + 1) * sample / f.clamp(min=1e-30)).clamp(max=1.0)


def skipgram_pairs(stream: TokenStream, window: int, generator) -> tuple["torch.Tensor", "torch.Tensor"]:
    """All (centre, context) pairs: each centre draws its window b from 1..window (word2vec's reduced window,
    which weights near words more) and pairs with the words up to b positions away in its sentence."""
    import torch

    ids, sent = stream.ids, stream.sentences
    reach = torch.randint(1, window + 1, (len(ids),), generator=generator)  # (L,)
    centers, contexts = [], []
    for j in range(1, min(window, len(ids) - 1) + 1):
        same = sent[:-j] == sent[j:]  # token i and token i+j share a sentence
        right = same & (reach[:-j] >= j)  # centre i, context i+j
        left = same & (reach[j:] >= j)  # centre i+j, context i
        centers += [ids[:-j][right], ids[j:][left]]
        contexts += [ids[j:][right], ids[:-j][left]]
    if not centers:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(centers), torch.cat(contexts)


def cbow_examples(stream: TokenStream, window: int, generator):
    """CBOW examples: for each centre, its context slots (L, 2*window) with a mask of the real ones (same
    sentence, within the centre's reduced window b in 1..window). Centres with no context are left out."""
    import torch

    ids, sent = stream.ids, stream.sentences
    L = len(ids)
    reach = torch.randint(1, window + 1, (L,), generator=generator)
    offsets = [o for o in range(-window, window + 1) if o != 0]
    position = torch.arange(L).unsqueeze(1) + torch.tensor(offsets)  # (L, 2W)
    inside = (position >= 0) & (position < L)
    position = position.clamp(0, L - 1)
    mask = inside & (sent[position] == sent.unsqueeze(1)) & (torch.tensor(offsets).abs() <= reach.unsqueeze(1))
    has_context = mask.any(1)
    return ids[position][has_context], mask[has_context], ids[has_context]


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning: classification, extractive QA, instructions


def encode_texts(tok: Tokenizer, texts: list[str], max_len: int,
                 truncated: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Each text as its pieces and a closing </s> (the token whose representation a classifier reads); a text
    longer than `max_len` keeps its first max_len - 1 pieces, and `truncated(index, pieces)` is told."""
    seqs = []
    for k, ids in enumerate(tok.encode(texts)):
        if truncated and len(ids) >= max_len:
            truncated(k, len(ids))
        seqs.append(ids[: max_len - 1] + [tok.eos_id])
    return seqs


# The Alpaca prompt template (Taori et al., 2023), with and without an input. The model learns to write the
# response after "### Response:\n"; the loss covers the response and its closing </s> only.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(instruction: str, input: str = "") -> str:
    template = PROMPT_WITH_INPUT if input.strip() else PROMPT_NO_INPUT
    return template.format(instruction=instruction.strip(), input=input.strip())


def prompt_budget(max_len: int) -> int:
    """The most prompt pieces an instruction example keeps (its last ones): half the context."""
    return max_len // 2


def encode_instruction(tok: Tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], int]:
    """</s> prompt response </s> (</s> starts a document, as in pretraining), and how many leading ids are not
    the response. A prompt longer than `prompt_budget` keeps its last pieces; the response is cut to fit."""
    p, r = tok.encode([prompt, response])
    p = p[-prompt_budget(max_len) :]
    ids = ([tok.eos_id] + p + r + [tok.eos_id])[: max_len + 1]
    return ids, 1 + len(p)


@dataclass
class QAFeature:
    """One window of one question: </s> question </s> context-window </s>. `starts`/`ends` are the character
    offsets in the original context of the window's pieces (ids[offset + k] is piece k of the window); `start`
    and `end` are the answer's positions in ids, or both `null` (the last </s>) when the window lacks it."""

    example: int
    ids: list[int]
    offset: int
    starts: list[int]
    ends: list[int]
    start: int
    end: int

    @property
    def null(self) -> int:
        return len(self.ids) - 1


def answer_pieces(starts: list[int], ends: list[int], answer: tuple[str, int]) -> tuple[int, int] | None:
    """The first and last piece overlapping the answer's characters [a, a + len(text)), or None if none does."""
    a, b = answer[1], answer[1] + len(answer[0])
    inside = [k for k in range(len(starts)) if ends[k] > a and starts[k] < b]
    return (inside[0], inside[-1]) if inside else None


def qa_features(tok: Tokenizer, examples, max_len: int, stride: int, max_question: int = 64) -> list[QAFeature]:
    """Windows over each example's context with `stride` pieces shared by neighbouring windows, labelled with
    the first reference answer's piece span where the window holds all of it."""
    features = []
    questions = tok.encode([ex.question for ex in examples])
    contexts: dict[str, tuple] = {}  # SQuAD asks several questions about each paragraph
    for n, (ex, q) in enumerate(zip(examples, questions)):
        q = q[:max_question]
        if ex.context not in contexts:
            contexts[ex.context] = tok.offsets(ex.context)
        ids, starts, ends = contexts[ex.context]
        room = max_len - len(q) - 3
        if room < 8:
            raise DataError(f"question {ex.id!r}: no room for the context in {max_len} positions (raise --max-len)")
        step = max(1, room - stride)
        span = answer_pieces(starts, ends, ex.answers[0]) if ex.answers else None
        for lo in range(0, max(len(ids), 1), step):
            hi = min(len(ids), lo + room)
            eos = tok.eos_id
            seq = [eos] + q + [eos] + ids[lo:hi] + [eos]
            offset = len(q) + 2
            start = end = len(seq) - 1
            if span is not None and lo <= span[0] and span[1] < hi:
                start, end = offset + span[0] - lo, offset + span[1] - lo
            features.append(QAFeature(n, seq, offset, starts[lo:hi], ends[lo:hi], start, end))
            if hi == len(ids):
                break
    return features
