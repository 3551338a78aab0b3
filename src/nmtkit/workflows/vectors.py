"""Vocabularies and word vectors: a tokenizer's vocabulary over a corpus and the `nn.Embedding` table it sizes;
skip-gram and CBOW word vectors; and the cosine geometry of any embedding table (similarity, neighbours,
analogies), including the input embeddings of translator and GPT runs."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import Word2VecTrainConfig, from_dict, to_dict
from nmtkit.data import corpora
from nmtkit.data.sources import TextSource, describe_files
from nmtkit.errors import CheckpointError, DataError
from nmtkit.files import check_output_folder
from nmtkit.tokenization import Tokenizer, load_tokenizer
from nmtkit.workflows import runs

log = logging.getLogger("nmtkit")
# the data settings a word-vector run keeps (--unit word): lower-cased words, rare ones left out, a size cap
DATA_DEFAULTS = {"unit": "word", "lowercase": True, "min_count": 5, "max_vocab": 0}


def build_vocab(tokenizer: str | Path, source: TextSource, *, output: str | Path | None = None,
                embedding_dim: int | None = None, top: int = 20, seed: int = 0,
                on_bad_line: corpora.OnBadLine = "error", overwrite: bool = False) -> dict[str, Any]:
    """How a corpus uses a tokenizer's vocabulary; with `output`, a folder with the vocab file (and, with
    `embedding_dim`, an initialised `nn.Embedding(len(vocab), D)` run folder ready for `neighbors`)."""
    from nmtkit import vocab

    if not source.inputs:
        raise DataError("no corpus: give text files or known corpus files (multi30k/train.en)")
    if embedding_dim is not None and (embedding_dim < 1 or output is None):
        raise DataError("--embedding-dim needs a positive size and --output, the run folder to write")
    if output is not None:
        check_output_folder(output, checkpoint.is_run_folder, overwrite, "a run", checkpoint.RUN_ENTRIES)
        runs.refuse_existing_run(Path(output))
    tok = load_tokenizer(runs.tokenizer_folder(tokenizer))
    counts = vocab.count_pieces(tok, source.texts(on_bad_line))
    stats = vocab.vocab_stats(tok, counts, top, embedding_dim)
    if output is not None:
        _write_vocab_run(Path(output), tok, counts, source, embedding_dim, seed, stats)
        stats["output"] = str(output)
    return stats


def _write_vocab_run(output: Path, tok: Tokenizer, counts, source: TextSource, embedding_dim: int | None, seed: int,
                     stats: dict[str, Any]) -> None:
    """A vocab run folder: the tokenizer, vocab.tsv and (with `embedding_dim`) an initialised embedding table."""
    import torch

    from nmtkit import vocab

    runs.provide_tokenizer(output, tok.folder)
    vocab.write_vocab_file(output / checkpoint.VOCAB, zip(map(tok.id_to_piece, range(len(tok))), counts.counts))
    model = {"vocab_size": len(tok), "dim": embedding_dim, "init": "normal(0, 1), <pad> row zero"} if embedding_dim else None
    checkpoint.write_config(output, "embeddings" if embedding_dim else "vocab", model=model,
                            data={"text": to_dict(source), "unit": "piece"})
    if embedding_dim:
        torch.manual_seed(seed)
        table = torch.nn.Embedding(len(tok), embedding_dim, padding_idx=tok.pad_id)
        checkpoint.save_weights(output / checkpoint.WEIGHTS, {"embedding.weight": table.weight})
    runs.start_record(output, None, seed, "cpu", describe_files(source.files()), stats=stats)


@runs.one_writer
def train_embeddings(
    *,
    run_dir: Path,
    source: TextSource | None = None,
    unit: str | None = None,
    tokenizer: str | None = None,
    lowercase: bool | None = None,
    min_count: int | None = None,
    max_vocab: int | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    resume: bool = False,
    progress=None,
    command: list[str] | None = None,
    on_bad_line: corpora.OnBadLine = "error",
) -> dict[str, Any]:
    """Skip-gram or CBOW word vectors on words or on a tokenizer's pieces; writes an embedding run folder with
    the vocab file, word2vec text vectors and the two projector TSV files. The data settings (`unit` ...
    `max_vocab`) left as None take `DATA_DEFAULTS`. Returns the run's summary."""
    import torch

    from nmtkit.models.embeddings import Word2Vec
    from nmtkit.training import train_word2vec

    source, data, model_settings, train_cfg = _settings(
        run_dir, resume, source, dict(unit=unit, lowercase=lowercase, min_count=min_count, max_vocab=max_vocab),
        model_settings, train_settings)
    texts = lambda: source.texts(on_bad_line)  # noqa: E731
    if data["unit"] == "piece":
        if not resume and not tokenizer:
            raise DataError("--unit piece needs --tokenizer, the tokenizer whose pieces get vectors")
        entries, stream, counts = _piece_stream(runs.provide_tokenizer(run_dir, tokenizer, resume=resume), texts)
    else:
        entries, stream, counts = _word_stream(texts, data)
    model_cfg = _model_config({**model_settings, "vocab_size": len(entries)})
    log.info("%s %s tokens, %s %ss in the vocabulary; %s, %d dimensions", f"{len(stream):,}", data["unit"],
             f"{len(entries):,}", data["unit"], model_cfg.arch, model_cfg.dim)
    if not resume:
        _write_config(run_dir, entries, model_cfg, train_cfg, source, data, command)
    torch.manual_seed(train_cfg.seed)
    model = Word2Vec(model_cfg)
    result = train_word2vec(model, stream, counts, train_cfg, run_dir=run_dir, resume=resume, progress=progress)
    EmbeddingTable.load(run_dir).export(run_dir)
    summary = {"run": str(run_dir), "arch": model_cfg.arch, "unit": data["unit"], "vocabulary": len(entries), **result}
    runs.append_record(run_dir, "training", summary)
    return summary


def _model_config(settings: dict[str, Any]):
    from nmtkit.models.embeddings import Word2VecConfig

    return from_dict(Word2VecConfig, settings, "model settings")


def _settings(run_dir: Path, resume: bool, source: TextSource | None, data: dict[str, Any], model_settings,
              train_settings):
    """The text, data settings, model settings and training config of a new run, or of a resumed one (those it
    was started with; settings given again must not change, but for --epochs)."""
    data = {k: v for k, v in data.items() if v is not None}
    if not resume:
        runs.refuse_existing_run(run_dir, "embeddings")
        if source is None or not source.inputs:
            raise DataError("no training text: give text files or known corpus files (multi30k/train.en)")
        data = {**DATA_DEFAULTS, **data}
        train_cfg = from_dict(Word2VecTrainConfig, train_settings or {}, "train settings")
        _model_config({k: v for k, v in (model_settings or {}).items() if k != "vocab_size"})
    else:
        saved = runs.saved_config(run_dir, "embeddings")
        source = runs.resumed_source(run_dir, TextSource, TextSource.saved(saved["data"]), source, "data")
        data = runs.resumed_values(run_dir, saved["data"], data, DATA_DEFAULTS)
        model_settings = runs.resumed_model(run_dir, saved["model"], model_settings, _model_config, ("vocab_size",))
        train_cfg = runs.resumed_config(run_dir, Word2VecTrainConfig, saved["train"], train_settings,
                                        "train settings", ("epochs",))
    if data["unit"] not in ("word", "piece"):
        raise DataError(f"--unit {data['unit']!r} is not valid; choose word or piece")
    return source, data, model_settings or {}, train_cfg


def _piece_stream(tok: Tokenizer, texts):
    """A tokenizer's pieces as the vocabulary, and the corpus as a stream of their ids (<unk> left out)."""
    import torch

    from nmtkit.data.datasets import TokenStream

    sentences: list[list[int]] = []
    for batch in _batched(texts(), 4096):
        sentences += [[i for i in ids if i != tok.unk_id] for ids in tok.encode(batch)]  # <unk> gets no vector
    stream = TokenStream.from_sentences(sentences)
    counts = torch.bincount(stream.ids, minlength=len(tok))
    return list(zip(map(tok.id_to_piece, range(len(tok))), counts.tolist())), stream, counts


def _word_stream(texts, data: dict[str, Any]):
    """The corpus's words (min_count, max_vocab) as the vocabulary, and the corpus as a stream of their ids."""
    import torch

    from nmtkit import vocab
    from nmtkit.data.datasets import TokenStream

    lowercase = data["lowercase"]
    entries = vocab.word_vocab((vocab.split_words(t, lowercase) for t in texts()), data["min_count"], data["max_vocab"])
    index = {w: i for i, (w, _) in enumerate(entries)}
    stream = TokenStream.from_sentences([index[w] for w in vocab.split_words(t, lowercase) if w in index]
                                        for t in texts())
    return entries, stream, torch.tensor([n for _, n in entries])


def _write_config(run_dir: Path, entries, model_cfg, train_cfg, source: TextSource, data, command) -> None:
    from nmtkit import vocab

    run_dir.mkdir(parents=True, exist_ok=True)
    vocab.write_vocab_file(run_dir / checkpoint.VOCAB, entries)
    checkpoint.write_config(run_dir, "embeddings", model=to_dict(model_cfg), train=to_dict(train_cfg),
                            data={"text": to_dict(source), **data})
    runs.start_record(run_dir, command, train_cfg.seed, "cpu", {"files": describe_files(source.files())})


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


EMBEDDING_WEIGHTS = {"embeddings": "embedding.weight", "gpt": "embed.weight"}
TRANSLATOR_SIDES = {"source": "src_embed.weight", "target": "tgt_embed.weight"}


class EmbeddingTable:
    """Any embedding table, ready for cosine geometry: the vectors of a train-embeddings or build-vocab run, the
    input embeddings of a translator or GPT run, or a word2vec text file (gensim's, GloVe's with a header)."""

    def __init__(self, entries: list[str], vectors, allowed, source: str, tokenizer: Tokenizer | None = None,
                 lowercase: bool = False, counts: list[int] | None = None):
        self.entries, self.vectors, self.allowed, self.source = entries, vectors, allowed, source
        self.tokenizer, self.lowercase, self.counts = tokenizer, lowercase, counts
        self.index = {e: i for i, e in enumerate(entries)} if tokenizer is None else {}

    @classmethod
    def load(cls, spec: str | Path, side: str = "source") -> "EmbeddingTable":
        import torch

        from nmtkit import vocab

        path = Path(spec)
        if path.is_file():
            return cls.read_word2vec(path)
        run = runs.open_run(path)
        path = run.path
        key = cls._weights_name(run, side)
        weights = runs.run_weights(run)
        if key not in weights:
            raise CheckpointError(f"{path / checkpoint.WEIGHTS}: no {key!r} tensor")
        listed = vocab.read_vocab_file(path / checkpoint.VOCAB) if (path / checkpoint.VOCAB).is_file() else None
        counts = [n for _, n in listed] if listed is not None else None
        data = run.config.get("data", {})
        if run.kind == "embeddings" and data.get("unit") == "word":
            entries = [w for w, _ in listed]
            allowed = torch.ones(len(entries), dtype=torch.bool)
            return cls(entries, weights[key].float(), allowed, str(path), lowercase=data.get("lowercase", False), counts=counts)
        tok = load_tokenizer(runs.tokenizer_folder(path))
        vectors = weights[key][: len(tok)].float()  # tables are padded to a multiple of 64 rows
        allowed = ~torch.isin(torch.arange(len(tok)), torch.tensor([i for i in (tok.pad_id, tok.unk_id, tok.bos_id,
                                                                                 tok.eos_id) if i is not None]))
        if counts is not None and run.kind == "embeddings" and run.config.get("train"):
            allowed &= torch.tensor(counts) > 0  # pieces never seen in training kept their random vectors
        entries = [tok.id_to_piece(i) for i in range(len(tok))]
        return cls(entries, vectors, allowed, str(path), tokenizer=tok, counts=counts)

    @staticmethod
    def _weights_name(run: runs.Run, side: str) -> str:
        """The name of a run's embedding table among its weights."""
        if run.kind == "translator":
            if side not in TRANSLATOR_SIDES:
                raise DataError(f"--side {side!r} is not valid; choose source or target")
            return TRANSLATOR_SIDES[side]
        if run.kind in EMBEDDING_WEIGHTS:
            return EMBEDDING_WEIGHTS[run.kind]
        if run.kind == "finetune":  # a task head on a GPT body, or (generate) the GPT itself
            return "embed.weight" if run.task == "generate" else "body.embed.weight"
        raise CheckpointError(f"{run.path}: a {run.kind!r} run has no embedding table (use a train-embeddings, "
                              "build-vocab --embedding-dim, translator, GPT or finetune run)")

    @classmethod
    def read_word2vec(cls, path: Path) -> "EmbeddingTable":
        """word2vec text format: an optional `count dim` header, then `word v1 v2 ...` per line."""
        import torch

        entries, rows = [], []
        for lineno, line in enumerate(corpora.read_lines(path), 1):
            fields = line.rstrip().split(" ")
            if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                continue
            try:
                rows.append([float(x) for x in fields[1:]])
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected a word and numbers, got {line[:40]!r}") from None
            if len(rows[-1]) != len(rows[0]) or not rows[-1]:
                raise DataError(f"{path}:{lineno}: {len(rows[-1])} numbers, but the first vector has {len(rows[0])}")
            entries.append(fields[0])
        if not rows:
            raise DataError(f"{path}: no vectors")
        return cls(entries, torch.tensor(rows), torch.ones(len(rows), dtype=torch.bool), str(path))

    def lookup(self, word: str) -> tuple[Any, list[int]]:
        """The vector of a word and the rows it was made from; a word of several pieces is their average."""
        if self.tokenizer is None:
            key = word.lower() if self.lowercase else word
            if key not in self.index:
                raise DataError(f"{word!r} is not in the vocabulary of {self.source} ({len(self.entries):,} entries)")
            return self.vectors[self.index[key]], [self.index[key]]
        rows = self.tokenizer.encode([word])[0]
        if not rows:
            raise DataError(f"{word!r} gives no pieces")
        if self.tokenizer.unk_id in rows:
            raise DataError(f"{word!r} has characters the tokenizer of {self.source} does not know (it gives <unk>)")
        return self.vectors[rows].mean(0), rows

    def describe(self, word: str, rows: list[int]) -> dict[str, Any]:
        pieces = [self.entries[r] for r in rows]
        return {"word": word, "pieces": pieces, "averaged": len(rows) > 1}

    def similarity(self, a: str, b: str) -> dict[str, Any]:
        from nmtkit.models.embeddings import cosine

        (va, ra), (vb, rb) = self.lookup(a), self.lookup(b)
        return {"a": self.describe(a, ra), "b": self.describe(b, rb), "cosine": round(cosine(va, vb), 4)}

    def neighbors(self, word: str, k: int = 10) -> dict[str, Any]:
        from nmtkit.models.embeddings import nearest

        vector, rows = self.lookup(word)
        found = nearest(self.vectors, vector, k, self.allowed, rows)
        return {"query": self.describe(word, rows), "neighbors": [{"entry": self.entries[i], "cosine": s} for i, s in found]}

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> dict[str, Any]:
        """A is to B as C is to ?: the entries nearest to b - a + c, the three words themselves left out."""
        from nmtkit.models.embeddings import analogy_query, nearest

        (va, ra), (vb, rb), (vc, rc) = self.lookup(a), self.lookup(b), self.lookup(c)
        found = nearest(self.vectors, analogy_query(va, vb, vc), k, self.allowed, ra + rb + rc)
        return {"query": [self.describe(w, r) for w, r in ((a, ra), (b, rb), (c, rc))],
                "answers": [{"entry": self.entries[i], "cosine": s} for i, s in found]}

    def export(self, folder: Path) -> None:
        """`vectors.txt` in word2vec text format, and `projector/vectors.tsv` + `projector/metadata.tsv` for
        embedding projectors; the rows are the entries that `neighbors` searches."""
        from nmtkit.files import write_lines
        from nmtkit.vocab import escape

        rows = self.allowed.nonzero().flatten().tolist()
        names = [escape(e).replace(" ", "\\s") for e in self.entries]
        vectors = [" ".join(f"{x:.6g}" for x in self.vectors[r].tolist()) for r in rows]
        write_lines(folder / "vectors.txt",
                    [f"{len(rows)} {self.vectors.shape[1]}", *(f"{names[r]} {v}" for r, v in zip(rows, vectors))])
        write_lines(folder / "projector" / "vectors.tsv", (v.replace(" ", "\t") for v in vectors))
        counts = self.counts or [0] * len(self.entries)
        write_lines(folder / "projector" / "metadata.tsv", ["word\tcount", *(f"{names[r]}\t{counts[r]}" for r in rows)])
