"""Commands of the vectors group: build-vocab, train-embeddings, similarity, neighbors, analogy
(`nmtkit.workflows.vectors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from nmtkit.cli.core import (AS_JSON, ON_BAD_LINE, OVERWRITE, SETTINGS, TrainingDisplay, check_on_bad_line, command, command_line, config_options, err, log, print_json, run_folder, settings_tables, wide_console, data_options)
from nmtkit.config import Word2VecTrainConfig, with_flags
from nmtkit.models.configs import Word2VecConfig
from nmtkit.workflows.vectors import DATA_DEFAULTS

TABLE_HELP = "A train-embeddings or build-vocab run, a translator or GPT run (its input embeddings; a Hugging Face GPT-2 folder too), or a word2vec text file."
SIDE = typer.Option("source", "--side", help="Translator runs: the source or target embeddings.")


@command("build-vocab")
def build_vocab_cmd(
    inputs: List[str] = typer.Argument(..., help="Corpus files (.gz too), TSV/CSV/JSON(L) with --column, or known corpus files (multi30k/train.en)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="A tokenizer folder, or a run folder holding one."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the vocab file (vocab.tsv) and statistics."),
    embedding_dim: Optional[int] = typer.Option(None, "--embedding-dim", help="Also write an initialised nn.Embedding(len(vocab), D) run folder to --output.", min=1),
    top: int = typer.Option(20, "--top", help="Show the N most frequent pieces.", min=0),
    seed: int = typer.Option(0, "--seed", help="Random seed of the embedding initialisation."),
    as_json: bool = AS_JSON,
    on_bad_line: str = ON_BAD_LINE,
    overwrite: bool = OVERWRITE,
) -> None:
    """A tokenizer's vocabulary over a corpus: frequencies, coverage, unknown rate, pieces per word; the embedding table it sizes."""
    from nmtkit.data.sources import TextSource
    from nmtkit.workflows import vectors

    with err.status("counting pieces..."):
        stats = vectors.build_vocab(tokenizer, TextSource(inputs=tuple(inputs), column=column), output=output,
                                    embedding_dim=embedding_dim, top=top, seed=seed,
                                    on_bad_line=check_on_bad_line(on_bad_line), overwrite=overwrite)
    if as_json:
        print_json(stats)
        return
    out = wide_console()
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    for row in _vocab_rows(stats):
        summary.add_row(*row)
    out.print(summary)
    frequent = Table("id", "piece", "count", "share", title="most frequent pieces", box=None)
    for entry in stats["top"]:
        frequent.add_row(str(entry["id"]), repr(entry["piece"])[1:-1], f"{entry['count']:,}", f"{entry['share']:.2%}")
    out.print(frequent)


def _vocab_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("vocabulary", f"{stats['vocab_size']:,} pieces"),
            ("corpus", f"{stats['sentences']:,} sentences, {stats['words']:,} words, {stats['tokens']:,} pieces"),
            ("coverage", f"{stats['coverage']:.2%} of the vocabulary seen ({stats['pieces_seen']:,} pieces)"),
            ("unknown rate", f"{stats['unknown_rate']:.4%} of the corpus's pieces are <unk> ({stats['unknown_tokens']:,})"),
            ("pieces per word", f"{stats['pieces_per_word']}"), ("pieces per sentence", f"{stats['pieces_per_sentence']}"),
            ("never seen", f"{stats['unseen_pieces']:,} pieces" + (f", e.g. {' '.join(stats['unseen_examples'][:10])}" if stats["unseen_examples"] else ""))]
    if "embedding" in stats:
        shape = stats["embedding"]["shape"]
        rows.append(("embedding", f"nn.Embedding({shape[0]:,}, {shape[1]}): {stats['embedding']['parameters']:,} parameters"))
    if "output" in stats:
        rows.append(("written", stats["output"]))
    return rows


@command("train-embeddings")
@config_options(Word2VecConfig, "model_flags", exclude=("vocab_size",))
@config_options(Word2VecTrainConfig, "train_flags")
def train_embeddings_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (.gz too), TSV/CSV/JSON(L) with --column, or known corpus files (multi30k/train.en tinyshakespeare)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/embeddings-DATE-TIME)."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON)."),
    unit: Optional[str] = typer.Option(None, "--unit", help=f"word (lower-cased words and punctuation) or piece (a tokenizer's pieces, with --tokenizer) (default {DATA_DEFAULTS['unit']})."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="The tokenizer whose pieces get vectors (--unit piece)."),
    lowercase: Optional[bool] = typer.Option(None, "--lowercase/--keep-case", help="Lower-case words (--unit word; default lower-case)."),
    min_count: Optional[int] = typer.Option(None, "--min-count", help=f"Leave out words seen fewer times (--unit word; default {DATA_DEFAULTS['min_count']}).", min=0),
    max_vocab: Optional[int] = typer.Option(None, "--max-vocab", help=f"Keep only the N most frequent words (0: all; default {DATA_DEFAULTS['max_vocab']}).", min=0),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores).", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output after its last finished epoch (--epochs may raise the total)."),
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
    overwrite: bool = OVERWRITE,
    model_flags: Optional[dict[str, Any]] = None,
    train_flags: Optional[dict[str, Any]] = None,
) -> None:
    """Word vectors with skip-gram or CBOW and negative sampling, as an nn.Embedding run folder (+ word2vec and projector files)."""
    from nmtkit.data.sources import TextSource
    from nmtkit.workflows import vectors

    if threads:
        import torch

        torch.set_num_threads(threads)
    file_settings = settings_tables(settings_file, ("data", "model", "train"))
    d = data_options(settings_file, file_settings, inputs=inputs or None, column=column, unit=unit, tokenizer=tokenizer,
                     lowercase=lowercase, min_count=min_count, max_vocab=max_vocab)
    output = run_folder(output, resume, "embeddings")
    with TrainingDisplay() as display:
        summary = vectors.train_embeddings(
            run_dir=output, source=TextSource(inputs=tuple(d["inputs"]), column=d["column"]) if d["inputs"] else None,
            unit=d["unit"], tokenizer=str(d["tokenizer"]) if d["tokenizer"] else None, lowercase=d["lowercase"],
            min_count=d["min_count"], max_vocab=d["max_vocab"], model_settings=with_flags(file_settings.get("model", {}), model_flags, (Word2VecConfig,), f"{settings_file}: [model]"),
            train_settings=with_flags(file_settings.get("train", {}), train_flags, (Word2VecTrainConfig,), f"{settings_file}: [train]"), resume=resume, progress=display,
            command=command_line(), on_bad_line=check_on_bad_line(on_bad_line), overwrite=overwrite)
    log.info("trained %s vectors for %s %ss on %s tokens in %.1f s", summary["arch"], f"{summary['vocabulary']:,}",
             summary["unit"], f"{summary['tokens']:,}", summary["seconds"])
    print(output)


def _note_pieces(*described: dict) -> None:
    for d in described:
        if d["averaged"]:
            log.info("%r is made of %d pieces (%s); their vectors are averaged", d["word"], len(d["pieces"]), " ".join(d["pieces"]))


def _print_ranked(rows: list[dict]) -> None:
    for row in rows:
        print(f"{row['entry']}\t{row['cosine']:.4f}")


@command("similarity")
def similarity_cmd(
    a: str = typer.Argument(..., help="A word."),
    b: str = typer.Argument(..., help="Another word."),
    model: Path = typer.Option(..., "--model", "-m", help=TABLE_HELP),
    side: str = SIDE,
    as_json: bool = AS_JSON,
) -> None:
    """Cosine similarity of two words' vectors."""
    from nmtkit.workflows.vectors import EmbeddingTable

    result = EmbeddingTable.load(model, side).similarity(a, b)
    if as_json:
        print_json(result)
        return
    _note_pieces(result["a"], result["b"])
    print(f"{result['cosine']:.4f}")


@command("neighbors")
def neighbors_cmd(
    word: str = typer.Argument(..., help="A word."),
    model: Path = typer.Option(..., "--model", "-m", help=TABLE_HELP),
    k: int = typer.Option(10, "-k", help="How many neighbours.", min=1),
    side: str = SIDE,
    as_json: bool = AS_JSON,
) -> None:
    """The nearest neighbours of a word by cosine similarity: one `entry<TAB>cosine` line each."""
    from nmtkit.workflows.vectors import EmbeddingTable

    result = EmbeddingTable.load(model, side).neighbors(word, k)
    if as_json:
        print_json(result)
        return
    _note_pieces(result["query"])
    _print_ranked(result["neighbors"])


@command("analogy")
def analogy_cmd(
    a: str = typer.Argument(..., help="A (man)."),
    b: str = typer.Argument(..., help="is to B (king)."),
    c: str = typer.Argument(..., help="as C (woman) is to ?"),
    model: Path = typer.Option(..., "--model", "-m", help=TABLE_HELP),
    k: int = typer.Option(5, "-k", help="How many answers.", min=1),
    side: str = SIDE,
    as_json: bool = AS_JSON,
) -> None:
    """A is to B as C is to ?: the words nearest to B - A + C (king - man + woman = queen)."""
    from nmtkit.workflows.vectors import EmbeddingTable

    result = EmbeddingTable.load(model, side).analogy(a, b, c, k)
    if as_json:
        print_json(result)
        return
    _note_pieces(*result["query"])
    _print_ranked(result["answers"])
