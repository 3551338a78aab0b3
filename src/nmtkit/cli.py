"""The command line: parse options, call one plain function in `nmtkit.workflows`, render the result.

This is the only module that prints, exits, or imports typer and rich. Results go to stdout, progress and
logs to stderr, so commands compose in shell pipelines. A `NmtkitError` becomes `error: <message>` on one line
and exit code 1; Ctrl-C exits 130; a closed pipe (`| head`) exits quietly.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from nmtkit import __version__
from nmtkit.errors import NmtkitError

app = typer.Typer(
    help="nmtkit: tokenizers, translators and language models for the neural text pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)
log = logging.getLogger("nmtkit")


def _setup_logging(quiet: bool = False) -> None:
    if not log.handlers:
        handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose errors become one line on stderr and an exit code."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            _setup_logging()
            try:
                return fn(*args, **kw)
            except NmtkitError as exc:
                err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("interrupted")
                raise typer.Exit(130) from None
            except BrokenPipeError:
                # the reader of stdout went away (| head): stop quietly, and keep Python from complaining at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(0) from None
            except OSError as exc:  # disk full, permission denied...
                where = f"{exc.filename}: " if exc.filename else ""
                err.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        return app.command(name, **kwargs)(wrapper)

    return register


def _version(value: bool) -> None:
    if value:
        print(f"nmtkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """nmtkit: tokenizers, translators and language models for the neural text pipeline."""


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def _settings(config_file: Optional[Path], flags: dict[str, Any]) -> dict[str, Any]:
    """Settings from a TOML/YAML file, overridden by the flags that were given (not None)."""
    from nmtkit.config import load_settings_file

    settings = load_settings_file(config_file) if config_file else {}
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


ON_BAD_LINE = typer.Option("error", "--on-bad-line", help="What to do with invalid UTF-8: error or skip (counted and reported).")


def _check_on_bad_line(value: str) -> str:
    if value not in ("error", "skip"):
        raise NmtkitError(f"--on-bad-line {value!r} is not valid; choose error or skip")
    return value


# ---------------------------------------------------------------------------------------------------------
# Tokenizers


@command("train-tokenizer")
def train_tokenizer_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (.gz too), TSV/CSV/JSON(L) files with --column, or known corpora (demo, multi30k/train.en)."),
    output: Path = typer.Option(..., "--output", "-o", help="The tokenizer folder to write."),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="bpe, unigram (default), char or word."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Number of pieces, special ones included (default 8000)."),
    character_coverage: Optional[float] = typer.Option(None, "--character-coverage", help="Share of characters covered (default 1.0; 0.9995 for CJK)."),
    max_sentences: Optional[int] = typer.Option(None, "--max-sentences", help="Train on a random sample of this many sentences (default: all)."),
    user_symbols: Optional[List[str]] = typer.Option(None, "--user-symbol", help="A piece never split (repeatable)."),
    byte_fallback: Optional[bool] = typer.Option(None, "--byte-fallback/--no-byte-fallback", help="Unknown characters become byte pieces."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column (name, or number from 1) of TSV/CSV files, or field of JSON(L) records."),
    header: bool = typer.Option(True, "--header/--no-header", help="Whether TSV/CSV files start with a header row."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (name, or a builder like json/csv with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("train", "--split", help="The dataset split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv/text."),
    on_bad_line: str = ON_BAD_LINE,
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="TOML/YAML file with these settings; flags override it."),
) -> None:
    """Train a SentencePiece tokenizer (one joint model over all inputs)."""
    from nmtkit import workflows
    from nmtkit.config import TokenizerConfig, from_dict

    flags = dict(model_type=model_type, vocab_size=vocab_size, character_coverage=character_coverage,
                 max_sentences=max_sentences, user_defined_symbols=user_symbols or None,
                 byte_fallback=byte_fallback, seed=seed)
    cfg = from_dict(TokenizerConfig, _settings(settings_file, flags), "train-tokenizer")
    with err.status("training the tokenizer..."):
        result = workflows.train_tokenizer(
            inputs or [], output, cfg, column=column, header=header, dataset=dataset, dataset_config=dataset_config,
            split=split, data_files=data_files, on_bad_line=_check_on_bad_line(on_bad_line),
        )
    log.info("trained a %s tokenizer with %d pieces on %d sentences: %s", cfg.model_type, result["vocab_size"],
             result["sentences"], output)
    print(output)


@command("tokenize")
def tokenize_cmd(
    files: List[Path] = typer.Argument(None, help="Input files (.gz too); stdin when none."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="A tokenizer folder, or a run folder holding one."),
    ids: bool = typer.Option(False, "--ids", help="Write (or, with --decode, read) token ids instead of pieces."),
    decode: bool = typer.Option(False, "--decode", "-d", help="Turn pieces (or ids) back into text."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Text to pieces or ids (or back with --decode): exactly one output line per input line."""
    from nmtkit import workflows
    from nmtkit.data.corpora import decode_lines, open_binary
    from nmtkit.tokenization import Tokenizer

    tok = Tokenizer(_tokenizer_folder(tokenizer))
    mode = _check_on_bad_line(on_bad_line)

    def lines():
        if not files:
            yield from decode_lines(sys.stdin.buffer, "<stdin>", mode)
        for path in files or []:
            with open_binary(path) as stream:
                yield from decode_lines(stream, str(path), mode)

    _write_lines(workflows.tokenize(tok, lines(), ids=ids, decode=decode), output)


def _tokenizer_folder(path: Path) -> Path:
    return path / "tokenizer" if (path / "tokenizer").is_dir() else path


def _write_lines(lines, output: Optional[Path]) -> None:
    """Write lines as UTF-8, flushing in blocks; to a temporary file renamed into place with --output."""
    if output is not None:
        from nmtkit.files import atomic_write

        atomic_write(output, lambda f: _copy_lines(lines, f))
    else:
        _copy_lines(lines, sys.stdout.buffer)
        sys.stdout.buffer.flush()


def _copy_lines(lines, handle) -> None:
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) >= 1024:
            handle.write(("\n".join(block) + "\n").encode("utf-8"))
            block.clear()
    if block:
        handle.write(("\n".join(block) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------
# Corpora and run folders


@command("download")
def download_cmd(
    name: Optional[str] = typer.Argument(None, help="A known corpus: multi30k, tinyshakespeare, sst2, squad, code_alpaca."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to put it in (default $NMTKIT_DATA/NAME, ~/.cache/nmtkit/corpora/NAME)."),
    source: Optional[Path] = typer.Option(None, "--from", help="Take an existing local copy from this folder instead of the network."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check each file's sha256 against the manifest."),
    list_: bool = typer.Option(False, "--list", help="List the known corpora and where their local copies are."),
) -> None:
    """Fetch and verify a known public corpus (or take a local copy with --from)."""
    from nmtkit import workflows

    if list_ or name is None:
        table = Table("corpus", "task", "local copy", "description", box=None)
        for row in workflows.list_corpora():
            table.add_row(row["name"], row["task"], row["local"] or "-", row["description"])
        Console().print(table)
        return
    folder = workflows.download(name, str(to) if to else None, str(source) if source else None, verify)
    log.info("%s is ready (checksums %s)", name, "verified" if verify else "not checked")
    print(folder)


@command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A run folder or a tokenizer folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What a run or tokenizer folder holds: kind, settings, parameters, data, scores, files."""
    from nmtkit import workflows

    result = workflows.info(path)
    if as_json:
        _print_json(result)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in result.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, default=str)
        table.add_row(key, str(value))
    Console(width=max(100, Console().width)).print(table)


def main() -> None:
    app()
