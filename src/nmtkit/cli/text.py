"""Commands of the text group: train-tokenizer, tokenize, download (`nmtkit.workflows.text`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from nmtkit.cli.core import (ON_BAD_LINE, OVERWRITE, check_on_bad_line, command, config_options, err, log, stdin,
                            write_lines)
from nmtkit.config import TokenizerConfig


@command("train-tokenizer")
@config_options(TokenizerConfig, "settings")
def train_tokenizer_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (.gz too), TSV/CSV/JSON(L) files with --column, or known corpora (demo, multi30k/train.en)."),
    output: Path = typer.Option(..., "--output", "-o", help="The tokenizer folder to write."),
    columns: Optional[List[str]] = typer.Option(None, "--column", "-c", help="Column (name, or number from 1) of TSV/CSV files, or field of JSON(L) records; repeat it to read several (a joint tokenizer over both sides of a parallel table)."),
    header: bool = typer.Option(True, "--header/--no-header", help="Whether TSV/CSV files start with a header row."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (name, or a builder like json/csv with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("train", "--split", help="The dataset split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv/text."),
    on_bad_line: str = ON_BAD_LINE,
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="TOML/YAML file with these settings; flags override it."),
    overwrite: bool = OVERWRITE,
    settings: Optional[dict[str, Any]] = None,
) -> None:
    """Train a SentencePiece tokenizer (one joint model over all inputs)."""
    from nmtkit.config import from_dict, load_settings_file, with_flags
    from nmtkit.data.sources import TextSource
    from nmtkit.workflows import text

    cfg = from_dict(TokenizerConfig, with_flags(load_settings_file(settings_file) if settings_file else {}, settings, (TokenizerConfig,), str(settings_file)),
                    "train-tokenizer")
    sources = [TextSource(inputs=tuple(inputs or ()), column=column, header=header, dataset=dataset,
                          config=dataset_config, split=split, data_files=tuple(data_files) if data_files else None)
               for column in columns or [None]]
    with err.status("training the tokenizer..."):
        result = text.train_tokenizer(sources, output, cfg, on_bad_line=check_on_bad_line(on_bad_line),
                                      overwrite=overwrite)
    log.info("trained a %s tokenizer with %d pieces on %d sentences: %s", cfg.model_type, result["vocab_size"],
             result["sentences"], output)
    print(output)


@command("tokenize")
def tokenize_cmd(
    files: List[str] = typer.Argument(None, help="Input files (.gz too, or known corpus files such as demo/test.en); stdin when none."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="A tokenizer folder, or a run folder holding one."),
    ids: bool = typer.Option(False, "--ids", help="Write (or, with --decode, read) token ids instead of pieces."),
    decode: bool = typer.Option(False, "--decode", "-d", help="Turn pieces (or ids) back into text."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Text to pieces or ids (or back with --decode): exactly one output line per input line."""
    from nmtkit.data.sources import input_lines
    from nmtkit.tokenization import load_tokenizer
    from nmtkit.workflows import text
    from nmtkit.workflows.runs import tokenizer_folder

    tok = load_tokenizer(tokenizer_folder(tokenizer))
    lines = input_lines(files, stdin(), check_on_bad_line(on_bad_line))
    write_lines(text.tokenize(tok, lines, ids=ids, decode=decode), output)


@command("download")
def download_cmd(
    name: Optional[str] = typer.Argument(None, help="A known corpus: multi30k, tinyshakespeare, sst2, squad, code_alpaca."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to put it in (default $NMTKIT_DATA/NAME, ~/.cache/nmtkit/corpora/NAME)."),
    source: Optional[Path] = typer.Option(None, "--from", help="Take an existing local copy from this folder instead of the network."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check each file's sha256 against the manifest."),
    list_: bool = typer.Option(False, "--list", help="List the known corpora and where their local copies are."),
) -> None:
    """Fetch and verify a known public corpus (or take a local copy with --from)."""
    from nmtkit.workflows import text

    if list_ or name is None:
        table = Table("corpus", "task", "local copy", "description", box=None)
        for row in text.list_corpora():
            table.add_row(row["name"], row["task"], row["local"] or "-", row["description"])
        Console().print(table)
        return
    folder = text.download(name, str(to) if to else None, str(source) if source else None, verify)
    log.info("%s is ready (checksums %s)", name, "verified" if verify else "not checked")
    print(folder)
