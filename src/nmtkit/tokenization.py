"""Tokenizers: SentencePiece (trained by nmtkit) and byte-level BPE (a Hugging Face GPT-2 tokenizer, through the
`tokenizers` library), behind one interface: encode, decode, pieces, offsets, special ids, vocabulary size.
`load_tokenizer(path)` opens either.

Special ids are fixed for every tokenizer nmtkit trains, so models never guess them:

    PAD_ID = 0  <pad>   padding (never predicted; ignored by losses)
    UNK_ID = 1  <unk>   an unknown piece
    BOS_ID = 2  <s>     beginning of a sequence (the decoder's first input)
    EOS_ID = 3  </s>    end of a sequence

A tokenizer folder holds `tokenizer.model` (the SentencePiece model), `tokenizer.vocab` (piece and score
per line) and `tokenizer.json` (how it was trained). A byte-level BPE folder holds Hugging Face's `tokenizer.json`
(or `vocab.json` and `merges.txt`) and its `tokenizer_config.json`; its special ids are its own (GPT-2's
`<|endoftext|>` ends and begins documents; it has no padding token, so padding takes that id, masked by length).
What is *not* here: reading corpora (`nmtkit.data`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from nmtkit.config import TokenizerConfig, to_dict
from nmtkit.errors import CheckpointError, DataError
from nmtkit.files import check_output_folder, read_json, temporary_target, write_json

log = logging.getLogger("nmtkit")

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
MODEL_FILE, VOCAB_FILE, INFO_FILE = "tokenizer.model", "tokenizer.vocab", "tokenizer.json"
FORMAT_VERSION = 1


def is_tokenizer_folder(path: Path) -> bool:
    """Whether a folder holds nothing but a tokenizer's files."""
    return all(p.name in (MODEL_FILE, VOCAB_FILE, INFO_FILE) or temporary_target(p.name) for p in path.iterdir())


class Tokenizer:
    """A loaded SentencePiece model with nmtkit's fixed special ids."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    kind = "sentencepiece"

    def __init__(self, folder: str | Path):
        import sentencepiece as spm

        self.folder = Path(folder)
        model = self.folder / MODEL_FILE if self.folder.is_dir() else self.folder
        if not model.is_file():
            raise CheckpointError(f"{self.folder}: no tokenizer here (expected {MODEL_FILE})")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(model))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{model}: not a SentencePiece model ({exc})") from None
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise CheckpointError(f"{model}: special ids (pad, unk, bos, eos) are {ids}, not nmtkit's "
                                  f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train the tokenizer with nmtkit train-tokenizer")
        if model.parent == self.folder and (self.folder / INFO_FILE).is_file():
            self.info: dict[str, Any] = read_json(self.folder / INFO_FILE)
        else:
            self.info = {}
        self.threads = os.cpu_count() or 1

    def __len__(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def model_file(self) -> Path:
        """The file that is the tokenizer (its hash names prepared data; worker processes load it)."""
        return self.folder / MODEL_FILE if self.folder.is_dir() else self.folder

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        return self.sp.Encode(list(texts), add_bos=add_bos, add_eos=add_eos, num_threads=self.threads)

    def encode_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return self.sp.Encode(list(texts), out_type=str, num_threads=self.threads)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.Decode([list(x) for x in ids], num_threads=self.threads)

    def decode_pieces(self, pieces: Sequence[Sequence[str]]) -> list[str]:
        return self.sp.DecodePieces([list(p) for p in pieces])

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(i)

    @property
    def newline_id(self) -> int | None:
        """The id of the newline piece (nmtkit's GPT tokenizers have one), or None."""
        i = self.sp.PieceToId("\n")
        return None if i == UNK_ID else i

    def piece_to_id(self, piece: str) -> int:
        return self.sp.PieceToId(piece)

    def offsets(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """The text's piece ids with each piece's character span [start, end) in the text. Words (runs of
        non-space characters) are encoded one by one, as SentencePiece splits them anyway; inside a word the
        pieces' own lengths give exact offsets, unless normalisation or byte fallback changed the length, in
        which case each piece gets the whole word's span (so a span never cuts a character wrongly)."""
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        ids, starts, ends = [], [], []
        for (a, b), word_ids in zip(words, self.encode([text[a:b] for a, b in words])):
            lengths = [len(self.id_to_piece(i).lstrip("\u2581")) for i in word_ids]
            exact = sum(lengths) == b - a and all(not self.id_to_piece(i).startswith("<0x") for i in word_ids)
            position = a
            for i, length in zip(word_ids, lengths):
                ids.append(i)
                starts.append(position if exact else a)
                position += length
                ends.append(position if exact else b)
        return ids, starts, ends

    def copy_to(self, folder: str | Path) -> None:
        """Copy this tokenizer's files into `folder` (a run folder's `tokenizer/`)."""
        _copy_files(self.folder, (MODEL_FILE, VOCAB_FILE, INFO_FILE), folder)

    def charsmap(self) -> bytes:
        """The model's compiled normalisation table (NormalizerSpec.precompiled_charsmap: field 2 of field 3 of
        the model's protobuf), which `tokenizers.normalizers.Precompiled` applies exactly as SentencePiece does.
        Read with a walk over protobuf's wire format: sentencepiece's Python API does not give it, and its
        generated protobuf module needs the protobuf package, which nmtkit does not depend on."""
        spec = next((v for f, v in _protobuf_fields(self.model_file.read_bytes()) if f == 3), b"")
        return next((v for f, v in _protobuf_fields(spec) if f == 2), b"")


def _protobuf_fields(buf: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, bytes of a length-delimited field, else None) of each field of a protobuf message."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            value, i, shift = value | (buf[i] & 0x7F) << shift, i + 1, shift + 7
            if buf[i - 1] < 0x80:
                return value, i

    i = 0
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 2:
            n, i = varint(i)
            yield key >> 3, buf[i : i + n]
            i += n
        elif wire in (0, 1, 5):
            i = varint(i)[1] if wire == 0 else i + (8 if wire == 1 else 4)
            yield key >> 3, None
        else:
            raise CheckpointError(f"not a SentencePiece model (protobuf wire type {wire})")


def _copy_files(source: Path, names: Iterable[str], folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


BPE_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def is_hf_tokenizer_json(path: Path) -> bool:
    """Whether `path` is a Hugging Face tokenizer.json (nmtkit's own tokenizer.json records how it was trained)."""
    if not path.is_file():
        return False
    try:
        data = read_json(path)
    except (CheckpointError, DataError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict)


class BPETokenizer:
    """A byte-level BPE tokenizer (GPT-2's) from a Hugging Face tokenizer folder, through `tokenizers`. Every
    string has ids (every byte is a piece), so there is no <unk> (`unk_id` None); without a padding token
    (GPT-2 has none) `pad_id` is None and batches are padded with 0, masked by their lengths."""

    kind = "bpe"

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        self.folder = Path(folder)
        source = self.folder if self.folder.is_dir() else self.folder.parent
        main = source / "tokenizer.json"
        try:
            if is_hf_tokenizer_json(main):
                self.hf = HFTokenizer.from_file(str(main))
            elif (source / "vocab.json").is_file() and (source / "merges.txt").is_file():
                self.hf = HFTokenizer(models.BPE.from_file(str(source / "vocab.json"), str(source / "merges.txt")))
                self.hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                self.hf.decoder = decoders.ByteLevel()
            else:
                raise CheckpointError(f"{self.folder}: no tokenizer here (expected {MODEL_FILE}, or a Hugging Face "
                                      "tokenizer.json, or vocab.json and merges.txt)")
        except Exception as exc:  # the tokenizers library raises its own Exception subclass
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{main if main.is_file() else source / 'vocab.json'}: not a tokenizer the "
                                  f"tokenizers library reads ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.source = source
        self.info = {"kind": "bpe", "vocab_size": len(self)}
        self.threads = os.cpu_count() or 1
        special = {}
        for path in (source / "special_tokens_map.json", source / "tokenizer_config.json"):
            if path.is_file():
                found = read_json(path)
                special.update({k: v for k, v in found.items() if k.endswith("_token")} if isinstance(found, dict) else {})
        names = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in special.items()}
        eos = self._id(names.get("eos_token")) if names.get("eos_token") else self._id("<|endoftext|>")
        if eos is None:
            raise CheckpointError(f"{source}: the tokenizer has no end-of-text token (no eos_token in "
                                  "tokenizer_config.json, no <|endoftext|>); a GPT needs one to end documents")
        self.eos_id = eos
        self.bos_id = self._id(names.get("bos_token")) if names.get("bos_token") else eos
        self.pad_id = self._id(names.get("pad_token")) if names.get("pad_token") else None
        unk = self._id(names.get("unk_token")) if names.get("unk_token") else None
        self.unk_id = unk if unk is not None and unk != eos else None
        if self.bos_id is None:
            raise CheckpointError(f"{source}: tokenizer_config.json names a special token the vocabulary lacks")

    def _id(self, token: str | None) -> int | None:
        return self.hf.token_to_id(token) if token else None

    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    @property
    def model_file(self) -> Path:
        main = self.source / "tokenizer.json"
        return main if is_hf_tokenizer_json(main) else self.source / "vocab.json"

    def _encode(self, texts: Sequence[str]):
        return self.hf.encode_batch(list(texts), add_special_tokens=False)

    def encode(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        return [[self.bos_id] * add_bos + e.ids + [self.eos_id] * add_eos for e in self._encode(texts)]

    def encode_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return [e.tokens for e in self._encode(texts)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.hf.decode_batch([list(x) for x in ids], skip_special_tokens=False)

    def decode_pieces(self, pieces: Sequence[Sequence[str]]) -> list[str]:
        unknown = [p for row in pieces for p in row if self.hf.token_to_id(p) is None]
        if unknown:
            raise DataError(f"{unknown[0]!r} is not a piece of this tokenizer")
        return self.decode([[self.hf.token_to_id(p) for p in row] for row in pieces])

    def id_to_piece(self, i: int) -> str:
        return self.hf.id_to_token(i)

    def piece_to_id(self, piece: str) -> int | None:
        return self.hf.token_to_id(piece)

    @property
    def newline_id(self) -> int | None:
        ids = self.hf.encode("\n", add_special_tokens=False).ids
        return ids[0] if len(ids) == 1 else None

    def offsets(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """The text's ids and each one's character span [start, end) (from the tokenizers library; a byte-level
        piece inside a character spans the whole character), without the space a piece such as "Ġmat" opens with
        (an answer is "mat", not " mat")."""
        e = self.hf.encode(text, add_special_tokens=False)
        starts = [a + len(text[a:b]) - len(text[a:b].lstrip()) for a, b in e.offsets]
        return list(e.ids), starts, [b for _, b in e.offsets]

    def copy_to(self, folder: str | Path) -> None:
        _copy_files(self.source, BPE_FILES, folder)


def load_tokenizer(path: str | Path):
    """The tokenizer at `path`: a SentencePiece tokenizer folder (or .model file) or a byte-level BPE one (a
    Hugging Face tokenizer folder, or a model folder holding one)."""
    path = Path(path)
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (
            is_hf_tokenizer_json(path / "tokenizer.json") or (path / "vocab.json").is_file()):
        return BPETokenizer(path)
    if path.is_file() and path.suffix == ".json":
        return BPETokenizer(path)
    return Tokenizer(path)


def train_tokenizer(
    sentences: Iterable[str], out_dir: str | Path, cfg: TokenizerConfig, provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Tokenizer:
    """Train a SentencePiece model on `sentences` and write a tokenizer folder to `out_dir`.

    The folder is assembled under a temporary name and renamed into place, so it is never half-written; into an
    existing folder (an earlier tokenizer, or with `overwrite` a folder of other files) its three files are
    moved one by one, and nothing else there is touched (`files.check_output_folder`).
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    check_output_folder(out_dir, is_tokenizer_folder, overwrite, "a tokenizer")
    target = out_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    counted = _Counter(sentences)
    spm.set_random_generator_seed(cfg.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    options: dict[str, Any] = dict(
        sentence_iterator=iter(counted),
        model_prefix=str(tmp / "tokenizer"),
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece=SPECIAL_PIECES["pad"], unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["bos"], eos_piece=SPECIAL_PIECES["eos"],
        user_defined_symbols=list(cfg.user_defined_symbols),
        byte_fallback=cfg.byte_fallback,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    if cfg.model_type == "char":
        options["hard_vocab_limit"] = False
    elif cfg.model_type == "word":
        options["split_by_whitespace"] = True
    if cfg.max_sentences:
        options.update(input_sentence_size=cfg.max_sentences, shuffle_input_sentence=True)
    try:
        spm.SentencePieceTrainer.Train(**options)
        if counted.error is not None:
            raise counted.error
    except RuntimeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if counted.error is not None:
            raise counted.error from None
        message = str(exc).strip().splitlines()[-1]
        if counted.nonblank == 0:
            raise DataError("empty corpus: no non-blank sentences to train a tokenizer on") from None
        limit = re.search(r"value <= (\d+)", message)
        if limit:
            raise DataError(
                f"the corpus is too small for --vocab-size {cfg.vocab_size} with --model-type {cfg.model_type}; "
                f"it supports at most {limit.group(1)} pieces"
            ) from None
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
        if need:
            raise DataError(
                f"--vocab-size {cfg.vocab_size} is too small: this corpus needs at least {need.group(1)} pieces for its "
                "characters (and byte pieces with --byte-fallback); raise it or lower --character-coverage"
            ) from None
        raise DataError(f"sentencepiece could not train: {message}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if counted.long:
        log.info("%d line(s) longer than sentencepiece's %s bytes were trained on in pieces", counted.long,
                 f"{MAX_SENTENCE_BYTES:,}")
    try:
        _write_info(tmp, cfg, counted, provenance)
        if target.is_dir():
            for name in (VOCAB_FILE, INFO_FILE, MODEL_FILE):
                os.replace(tmp / name, target / name)
            tmp.rmdir()
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Tokenizer(out_dir)


def _write_info(folder: Path, cfg: TokenizerConfig, counted: "_Counter", provenance: dict[str, Any] | None) -> None:
    """tokenizer.json: how the tokenizer was trained (settings, data, sentence count, versions)."""
    import sentencepiece as spm

    write_json(folder / INFO_FILE, {
        "format_version": FORMAT_VERSION,
        "kind": "tokenizer",
        "config": to_dict(cfg),
        "vocab_size": spm.SentencePieceProcessor(model_file=str(folder / MODEL_FILE)).GetPieceSize(),
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "sentences": counted.count,
        "long_lines_in_pieces": counted.long,
        "data": provenance or {},
        "sentencepiece_version": spm.__version__,
    })


MAX_SENTENCE_BYTES = 4192  # sentencepiece's limit on a training sentence: it drops longer ones without a word


class _Counter:
    """Counts what flows into the trainer (for the record and for the empty-corpus message). A line longer than
    sentencepiece takes is trained on in pieces (cut at spaces where there are any), counted in `long`."""

    def __init__(self, sentences: Iterable[str]):
        self.sentences = sentences
        self.count = 0
        self.nonblank = 0
        self.long = 0
        self.error: Exception | None = None

    def __iter__(self):
        try:
            for s in self.sentences:
                self.count += 1
                if s.strip():
                    self.nonblank += 1
                    if len(s) * 4 < MAX_SENTENCE_BYTES or len(s.encode("utf-8")) <= MAX_SENTENCE_BYTES:
                        yield s
                    else:
                        self.long += 1
                        yield from _pieces(s, MAX_SENTENCE_BYTES // 4)
        except Exception as exc:  # sentencepiece would bury a reader's error in its own; keep it for the caller
            self.error = exc


def _pieces(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of at most `size` characters (so at most 4 x size bytes), each cut after its last space
    when it has one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space + 1 if space > start else end
        if text[start:end].strip():
            yield text[start:end]
        start = end
