"""The command line: parse options, call one plain function in `nmtkit.workflows`, render the result.

This is the only module that prints, exits, or imports typer and rich. Results go to stdout, progress and
logs to stderr, so commands compose in shell pipelines. A `NmtkitError` becomes `error: <message>` on one line
and exit code 1; Ctrl-C exits 130 (training first saves a checkpoint and says how to resume; SIGTERM: 143); a
closed pipe (`| head`) exits quietly. Line-by-line output never holds a line break inside a line.
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
from rich.markup import escape
from rich.table import Table

from nmtkit import __version__
from nmtkit.errors import Interrupted, NmtkitError

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
            except Interrupted as exc:
                err.print(f"{exc}; continue with: nmtkit {name} --output {exc.run_dir} --resume", highlight=False,
                          markup=False, soft_wrap=True)
                raise typer.Exit(128 + exc.signum) from None
            except NmtkitError as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
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
                err.print(f"[bold red]error:[/] {escape(where + str(exc.strerror or exc))}", markup=True, highlight=False,
                          soft_wrap=True)
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


ON_BAD_LINE = typer.Option("error", "--on-bad-line", help="What to do with invalid UTF-8: error, skip the line (an empty output line in line-by-line commands) or replace the bad bytes with U+FFFD; skips and replacements are counted on stderr.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
COMPUTE_TYPE = typer.Option("default", "--compute-type", help="CTranslate2 exports: int8, int8_float32, float16, float32... (default: as exported).")
TRAIN_SRC = typer.Option(None, "--src", help="Training source file (or known corpus file, e.g. demo/train.en).")
TRAIN_TGT = typer.Option(None, "--tgt", help="Training target file, line-aligned with --src.")
VALID_SRC = typer.Option(None, "--valid-src", help="Validation source file.")
VALID_TGT = typer.Option(None, "--valid-tgt", help="Validation target file.")
VOCAB_SIZE = typer.Option(8000, "--vocab-size", help="Pieces of the tokenizer trained on the fly.")
SETTINGS = typer.Option(None, "--settings", help="TOML/YAML with \\[model] and \\[train] tables; flags override it.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --output exactly where it stopped.")
SEED = typer.Option(None, "--seed", help="Random seed.")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast on GPU (default on).")


def _check_on_bad_line(value: str) -> str:
    from nmtkit.data.corpora import ON_BAD_LINE_CHOICES

    if value not in ON_BAD_LINE_CHOICES:
        raise NmtkitError(f"--on-bad-line {value!r} is not valid; choose {', '.join(ON_BAD_LINE_CHOICES)}")
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
    files: List[str] = typer.Argument(None, help="Input files (.gz too, or known corpus files such as demo/test.en); stdin when none."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="A tokenizer folder, or a run folder holding one."),
    ids: bool = typer.Option(False, "--ids", help="Write (or, with --decode, read) token ids instead of pieces."),
    decode: bool = typer.Option(False, "--decode", "-d", help="Turn pieces (or ids) back into text."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Text to pieces or ids (or back with --decode): exactly one output line per input line."""
    from nmtkit import workflows
    from nmtkit.tokenization import Tokenizer

    tok = Tokenizer(workflows.tokenizer_folder(tokenizer))
    lines = workflows.input_lines(files, sys.stdin.buffer, _check_on_bad_line(on_bad_line))
    _write_lines(workflows.tokenize(tok, lines, ids=ids, decode=decode), output)


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
        block.append(line.replace("\n", " "))  # one output line per input line, whatever the line holds
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


# ---------------------------------------------------------------------------------------------------------
# Translators


class TrainingDisplay:
    """A rich progress bar on stderr with loss, learning rate, tokens/s and ETA; evaluations as log lines."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=err, transient=False,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        if event["event"] == "train":
            stats = f"loss {event['train_loss']:.3f}  lr {event['lr']:.2e}  {event['tokens_per_s']:,} tok/s"
            if "mfu" in event:
                stats += f"  MFU {event['mfu']:.1%}"
            if self.task is None:  # a time budget (compare --budget 5m) has no step total
                total = event["max_steps"] if event["max_steps"] < 10**9 else None
                self.task = self.progress.add_task("train", total=total, completed=event["step"], stats=stats)
            self.progress.update(self.task, completed=event["step"], stats=stats)
        else:
            shown = {k: v for k, v in event.items() if k not in ("event", "epoch", "elapsed_s", "best_step")}
            log.info("eval " + "  ".join(f"{k} {v}" for k, v in shown.items()) + f" (best at step {event['best_step']})")


def _settings_tables(settings_file: Optional[Path], tables: tuple[str, ...]) -> dict[str, Any]:
    """A run's settings file: only the given top-level tables (and keys) are allowed."""
    from nmtkit.config import load_settings_file

    settings = load_settings_file(settings_file) if settings_file else {}
    unknown = sorted(set(settings) - set(tables))
    if unknown:
        raise NmtkitError(f"{settings_file}: unknown table(s) {', '.join(unknown)}; valid: {', '.join(tables)}")
    return settings


def _run_folder(output: Optional[Path], resume: bool, prefix: str) -> Path:
    """The run folder: --output, or checkpoints/PREFIX-DATE-TIME for a new run."""
    import datetime

    if resume and output is None:
        raise NmtkitError("--resume needs --output, the run folder to continue")
    return output or Path("checkpoints") / f"{prefix}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _translation_data(src, tgt, valid_src, valid_tgt, corpus, src_lang, tgt_lang, dataset: dict | None = None):
    """The training and validation data specs of train-translator and compare, from their data options."""
    if src or tgt:
        if not (src and tgt):
            raise NmtkitError("--src and --tgt go together")
        if bool(valid_src) != bool(valid_tgt):
            raise NmtkitError("--valid-src and --valid-tgt go together")
        train_spec = {"src": src, "tgt": tgt, "src_lang": src_lang or Path(src).suffix.lstrip("."),
                      "tgt_lang": tgt_lang or Path(tgt).suffix.lstrip(".")}
        return train_spec, ({"src": valid_src, "tgt": valid_tgt} if valid_src else None)
    if corpus:
        if not (src_lang and tgt_lang):
            raise NmtkitError("--corpus needs --src-lang and --tgt-lang")
        train_spec = {"corpus": corpus, "src_lang": src_lang, "tgt_lang": tgt_lang, "split": "train"}
        return train_spec, {**train_spec, "split": "valid"}
    if dataset and dataset.get("dataset"):
        split, valid_split = dataset.pop("split"), dataset.pop("valid_split")
        base = {**dataset, "src_lang": src_lang, "tgt_lang": tgt_lang}
        return {**base, "split": split}, ({**base, "split": valid_split} if valid_split else None)
    return None, None


@command("train-translator")
def train_translator_cmd(
    arch: Optional[str] = typer.Option(None, "--arch", help="rnn (fixed context vector), attention, or transformer (default)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/ARCH-DATE-TIME)."),
    src: Optional[str] = TRAIN_SRC,
    tgt: Optional[str] = TRAIN_TGT,
    valid_src: Optional[str] = VALID_SRC,
    valid_tgt: Optional[str] = VALID_TGT,
    corpus: Optional[str] = typer.Option(None, "--corpus", help="A known translation corpus (demo, multi30k): its train and valid splits."),
    src_lang: Optional[str] = typer.Option(None, "--src-lang", help="Source language code (with --corpus or --dataset)."),
    tgt_lang: Optional[str] = typer.Option(None, "--tgt-lang", help="Target language code (with --corpus or --dataset)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset with a 'translation' column (or --src-column/--tgt-column)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("train", "--split", help="The dataset's training split."),
    valid_split: Optional[str] = typer.Option(None, "--valid-split", help="The dataset's validation split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv."),
    src_column: Optional[str] = typer.Option(None, "--src-column", help="Dataset column holding source text."),
    tgt_column: Optional[str] = typer.Option(None, "--tgt-column", help="Dataset column holding target text."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="Use this tokenizer (else train a joint one on the training data)."),
    vocab_size: int = VOCAB_SIZE,
    tokenizer_type: str = typer.Option("unigram", "--tokenizer-type", help="bpe or unigram, for the tokenizer trained on the fly."),
    # model
    d_model: Optional[int] = typer.Option(None, "--d-model", help="Transformer width."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Transformer attention heads."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Layers (Transformer: encoder and decoder each; RNN: stacked)."),
    ff_dim: Optional[int] = typer.Option(None, "--ff-dim", help="Transformer feed-forward width."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Transformer positions: sinusoidal or learned."),
    norm: Optional[str] = typer.Option(None, "--norm", help="Transformer layer norm: pre or post."),
    cell: Optional[str] = typer.Option(None, "--cell", help="RNN cell: gru or lstm."),
    embed_dim: Optional[int] = typer.Option(None, "--embed-dim", help="RNN embedding size."),
    hidden_dim: Optional[int] = typer.Option(None, "--hidden-dim", help="RNN hidden size."),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--unidirectional", help="RNN encoder direction."),
    attention: Optional[str] = typer.Option(None, "--attention", help="bahdanau, luong-dot or luong-general (--arch attention)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout."),
    # training
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default 10000)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Stop after this many epochs (0: no limit)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Batch size in padded tokens per micro-batch (default 4096)."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 5e-4)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="inverse-sqrt (default), cosine or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps (default 1000)."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Label smoothing (default 0.1)."),
    teacher_forcing: Optional[float] = typer.Option(None, "--teacher-forcing", help="RNNs: share of steps fed the reference token (default 1.0)."),
    clip_norm: Optional[float] = typer.Option(None, "--clip-norm", help="Gradient clipping norm (0: off)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations and checkpoints."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Steps between training-loss lines in metrics.jsonl."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping after this many validations without a better BLEU."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Leave out training pairs longer than this (pieces)."),
    seed: Optional[int] = SEED,
    compile_: Optional[bool] = COMPILE,
    bf16: Optional[bool] = BF16,
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Train a translator: RNN encoder-decoder, RNN with attention, or Transformer."""
    from nmtkit import workflows
    from nmtkit.config import TokenizerConfig, from_dict

    file_settings = _settings_tables(settings_file, ("arch", "model", "train"))
    arch = arch or file_settings.get("arch", "transformer")
    model_settings = {**file_settings.get("model", {}), **_given(
        d_model=d_model, heads=heads, ff_dim=ff_dim, positions=positions, norm=norm, cell=cell, embed_dim=embed_dim,
        hidden_dim=hidden_dim, bidirectional=bidirectional, attention=attention, dropout=dropout)}
    if layers is not None:
        model_settings.update({"encoder_layers": layers, "decoder_layers": layers} if arch == "transformer" else {"layers": layers})
    train_settings = {**file_settings.get("train", {}), **_given(
        max_steps=max_steps, max_epochs=max_epochs, max_tokens=max_tokens, accumulate=accumulate, lr=lr,
        schedule=schedule, warmup_steps=warmup, label_smoothing=label_smoothing, teacher_forcing=teacher_forcing,
        clip_norm=clip_norm, weight_decay=weight_decay, eval_every=eval_every, log_every=log_every, patience=patience, max_len=max_len,
        seed=seed, compile=compile_, bf16=bf16)}
    train_spec, valid_spec = _translation_data(src, tgt, valid_src, valid_tgt, corpus, src_lang, tgt_lang, dict(
        dataset=dataset, config=dataset_config, data_files=data_files, src_column=src_column, tgt_column=tgt_column,
        split=split, valid_split=valid_split))
    if train_spec is None and not resume:
        raise NmtkitError("no training data: give --src/--tgt files, --corpus NAME, or --dataset NAME")
    output = _run_folder(output, resume, arch)
    tok_cfg = from_dict(TokenizerConfig, {"model_type": tokenizer_type, "vocab_size": vocab_size}, "tokenizer")
    with TrainingDisplay() as display:
        summary = workflows.train_translator(
            run_dir=output, arch=arch, train_spec=train_spec, valid_spec=valid_spec, model_settings=model_settings,
            train_settings=train_settings,
            tokenizer=str(tokenizer) if tokenizer else None, tokenizer_cfg=tok_cfg, device=device, resume=resume,
            on_bad_line=_check_on_bad_line(on_bad_line), progress=display, command=["nmtkit", *sys.argv[1:]],
        )
    best = summary["best"] or {}
    log.info("trained %s (%s parameters) for %d steps in %.0f s; best %s at step %s", summary["arch"],
             f"{summary['parameters']:,}", summary["steps"], summary["seconds"],
             ", ".join(f"{k} {best[k]}" for k in ("bleu", "chrf", "valid_loss") if k in best) or "-", summary["best_step"])
    print(output)


@command("translate")
def translate_cmd(
    files: List[str] = typer.Argument(None, help="Input files (or known corpus files); stdin when none."),
    model: Path = typer.Option(..., "--model", "-m", help="A translator run folder, or its CTranslate2 export."),
    input_: Optional[List[str]] = typer.Option(None, "--input", "-i", help="Input file (repeatable); same as the arguments."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    beam: int = typer.Option(5, "--beam", "-b", help="Beam size (1: greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Scores divided by length ** this (0: raw log-probability)."),
    n_best: int = typer.Option(1, "--n-best", help="Write the K best translations with scores, as one JSON object per line."),
    with_scores: bool = typer.Option(False, "--scores", help="Append a tab and the score to each translation."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sentences per batch (sorted by length)."),
    max_len_ratio: float = typer.Option(2.0, "--max-len-ratio", help="Longest output: ratio x source length + --max-len-extra pieces."),
    max_len_extra: int = typer.Option(10, "--max-len-extra", help="See --max-len-ratio."),
    compute_type: str = COMPUTE_TYPE,
    device: str = DEVICE,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Translate stdin or files: exactly one output line per input line. -m takes a run folder or its
    CTranslate2 export (nmtkit export)."""
    from nmtkit import workflows

    translator = workflows.open_translator(model, device, compute_type)
    lines = workflows.translate(
        translator, workflows.input_lines(list(files or []) + list(input_ or []), sys.stdin.buffer, _check_on_bad_line(on_bad_line)),
        beam=beam,
        batch_size=batch_size, length_penalty=length_penalty, n_best=n_best, with_scores=with_scores,
        max_len_ratio=max_len_ratio, max_len_extra=max_len_extra, buffer_lines=max(batch_size * 8, 64),
    )
    if output is None and sys.stdout.isatty():
        for line in lines:  # interactive: answer each line as soon as it is translated
            print(line, flush=True)
        return
    _write_lines(lines, output)


def _print_scores(scores: dict, as_json: bool) -> None:
    if as_json:
        _print_json(scores)
        return
    for name, entry in scores.items():
        print(f"{name.upper():5} {entry['score']:6.2f}  {entry['signature']}")


TOKENIZE_HELP = "sacrebleu tokenizer: 13a, intl, zh, char, ja-mecab, ko-mecab... (default: chosen for the target language)."


@command("score")
def score_cmd(
    ref: List[str] = typer.Option(..., "--ref", "-r", help="Reference file (repeat for several references)."),
    input_: Optional[str] = typer.Option(None, "--input", "-i", help="Hypotheses (default stdin)."),
    metrics: str = typer.Option("bleu,chrf,ter", "--metrics", help="Comma-separated: bleu, chrf, ter."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help=TOKENIZE_HELP),
    lowercase: bool = typer.Option(False, "--lowercase", "-lc", help="Case-insensitive scores."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Target language (default: the reference file's extension)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """BLEU, chrF and TER with sacrebleu, printed with their signatures."""
    from nmtkit import workflows

    hyps = [line or "" for line in workflows.input_lines([input_] if input_ else [], sys.stdin.buffer)]
    refs = [[line or "" for line in workflows.input_lines([r], None)] for r in ref]
    scores = workflows.score(hyps, refs, (str(input_ or "<stdin>"), [str(r) for r in ref]),
                             metrics=[m.strip() for m in metrics.split(",") if m.strip()], tokenize=tokenize,
                             lowercase=lowercase, target_lang=lang or Path(ref[0]).suffix.lstrip("."))
    _print_scores(scores, as_json)


@command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A translator or fine-tuned run folder, or a translator's CTranslate2 export."),
    src: Optional[str] = typer.Option(None, "--src", help="Translators: test source file (or known corpus file, e.g. demo/test.en)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Translators: test reference file."),
    data: Optional[str] = typer.Option(None, "--data", help="Fine-tuned runs: test data in the task's format (sst2/valid.tsv, squad/valid.json...)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Fine-tuned runs: a Hugging Face dataset instead of --data."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("validation", "--split", help="The dataset split."),
    beam: int = typer.Option(5, "--beam", "-b", help="Beam size."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Length penalty."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sentences per batch."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help=TOKENIZE_HELP),
    lowercase: bool = typer.Option(False, "--lowercase", "-lc", help="Case-insensitive scores."),
    device: str = DEVICE,
    compute_type: str = COMPUTE_TYPE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score a run on test data with its task's metric (translators: BLEU, chrF, TER; classify: accuracy and
    macro-F1; qa: exact match and F1; generate: chrF and BLEU); the result is recorded in its run.json."""
    from nmtkit import checkpoint, workflows
    from nmtkit.export import is_ctranslate2_folder

    if not is_ctranslate2_folder(model) and checkpoint.read_config(model)["kind"] == "finetune":
        if not (data or dataset):
            raise NmtkitError("a fine-tuned run is evaluated on --data FILE or --dataset NAME")
        spec = {"file": data} if data else {"dataset": dataset, "config": dataset_config, "split": split}
        result = workflows.evaluate_finetuned(model, spec, device)
        if as_json:
            _print_json(result)
            return
        shown = {k: result[k] for k in ("accuracy", "macro_f1", "exact_match", "f1", "chrf", "bleu", "valid_loss") if k in result}
        print("  ".join(f"{k} {v}" for k, v in shown.items()))
        if "confusion" in result:
            table = Table("gold \\ predicted", *result["labels"], box=None)
            for name, row in zip(result["labels"], result["confusion"]):
                table.add_row(name, *map(str, row))
            Console().print(table)
        return
    if not (src and ref):
        raise NmtkitError("a translator is evaluated on --src FILE and --ref FILE")
    result = workflows.evaluate_translator(model, src, ref, device=device, beam=beam, batch_size=batch_size,
                                           length_penalty=length_penalty, tokenize=tokenize, lowercase=lowercase,
                                           compute_type=compute_type)
    if as_json:
        _print_json(result)
        return
    log.info("%d sentences translated in %.1f s (beam %d)", result["sentences"], result["seconds"], beam)
    _print_scores(result["scores"], False)


@command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A Transformer translator or GPT run folder."),
    output: Path = typer.Argument(..., help="The folder to write (must not exist or be empty)."),
    format_: str = typer.Option("ctranslate2", "--format", help="ctranslate2 (the only format so far)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="Store weights as int8, int8_float32, float16... (default float32)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a run for CTranslate2, the C++ inference engine (pip install ctranslate2); nmtkit translate
    runs an exported translator with -m."""
    from nmtkit.export import export_ctranslate2

    if format_ != "ctranslate2":
        raise NmtkitError(f"--format {format_!r} is not supported; choose ctranslate2")
    result = export_ctranslate2(run, output, quantization)
    if as_json:
        _print_json(result)
    else:
        print(result["output"])
        log.info("exported the %s as CTranslate2 (%s, %.1f MB)", result["kind"], result["quantization"],
                 result["bytes"] / 1e6)


@command("average")
def average_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A run folder with step checkpoints."),
    last: int = typer.Option(5, "--last", help="Average the last N step checkpoints."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="New run folder (default RUN-avgN)."),
) -> None:
    """Average the weights of a run's last N checkpoints into a new run folder."""
    from nmtkit import workflows

    output = output or model.with_name(f"{model.name}-avg{last}")
    result = workflows.average_checkpoints(model, last, output)
    log.info("averaged %s", ", ".join(result["checkpoints"]))
    print(output)


# ---------------------------------------------------------------------------------------------------------
# Upstream: GPT


@command("pretrain")
def pretrain_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (one document each), TSV/CSV/JSON(L) with --column, or known corpora (tinyshakespeare)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/gpt-DATE-TIME)."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON, datasets)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (or json/csv/text with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("train", "--split", help="The dataset split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv/text."),
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="The last share of the text (in characters) kept for validation."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="Use this tokenizer (else train one on the text)."),
    vocab_size: int = VOCAB_SIZE,
    tokenizer_type: str = typer.Option("unigram", "--tokenizer-type", help="bpe, unigram or char, for the tokenizer trained on the fly."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Context length in tokens (default 256)."),
    d_model: Optional[int] = typer.Option(None, "--d-model", help="Width (default 384)."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Attention heads (default 6)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Layers (default 6)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout (default 0.2)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Windows per micro-batch."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default 5000)."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine (default), inverse-sqrt or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps (default 100)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay on matrices (default 0.1)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations and checkpoints (default 250)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Steps between training-loss lines."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping after this many validations without a lower loss."),
    seed: Optional[int] = SEED,
    compile_: Optional[bool] = COMPILE,
    bf16: Optional[bool] = BF16,
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
) -> None:
    """Pretrain a GPT-style decoder on raw text: next-token prediction (upstream)."""
    from nmtkit import workflows
    from nmtkit.config import TokenizerConfig, from_dict

    file_settings = _settings_tables(settings_file, ("model", "train"))
    model_settings = {**file_settings.get("model", {}), **_given(block_size=block_size, d_model=d_model, heads=heads,
                                                                  layers=layers, dropout=dropout)}
    train_settings = {**file_settings.get("train", {}), **_given(
        max_steps=max_steps, accumulate=accumulate, lr=lr, schedule=schedule, warmup_steps=warmup,
        weight_decay=weight_decay, eval_every=eval_every, log_every=log_every, patience=patience, seed=seed,
        compile=compile_, bf16=bf16)}
    output = _run_folder(output, resume, "gpt")
    tok_cfg = from_dict(TokenizerConfig, {"model_type": tokenizer_type, "vocab_size": vocab_size}, "tokenizer")
    ds = {"name": dataset, "config": dataset_config, "split": split, "data_files": data_files} if dataset else None
    with TrainingDisplay() as display:
        summary = workflows.pretrain(
            run_dir=output, inputs=list(inputs or []), column=column, dataset=ds, valid_fraction=valid_fraction,
            model_settings=model_settings, train_settings=train_settings,
            batch_size=batch_size, tokenizer=str(tokenizer) if tokenizer else None, tokenizer_cfg=tok_cfg,
            device=device, resume=resume, progress=display, command=["nmtkit", *sys.argv[1:]],
        )
    best = summary["best"] or {}
    log.info("pretrained a GPT (%s parameters) for %d steps in %.0f s; best %s at step %s", f"{summary['parameters']:,}",
             summary["steps"], summary["seconds"],
             ", ".join(f"{k} {best[k]}" for k in ("valid_loss", "bits_per_char", "valid_ppl") if k in best) or "-",
             summary["best_step"])
    print(output)


@command("generate")
def generate_cmd(
    prompts: List[str] = typer.Argument(None, help="Prompts; with none, one prompt per line of --prompts-file or stdin."),
    model: Path = typer.Option(..., "--model", "-m", help="A GPT run (nmtkit pretrain), an instruction-tuned one (finetune --task generate), or a CTranslate2 export of either."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", "-f", help="A file of prompts, one per line."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate at most."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature; 0 means greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample from the smallest set of tokens whose probability reaches p."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    num_samples: int = typer.Option(1, "--num-samples", help="Samples per prompt."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt and sample: prompt, sample, text."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="An instruction, put into the prompt template of finetune --task generate."),
    instruction_input: Optional[str] = typer.Option(None, "--input", help="With --instruction: its input (the context it works on), if any."),
    device: str = DEVICE,
    compute_type: str = COMPUTE_TYPE,
) -> None:
    """Continue prompts with a pretrained decoder (sampling with temperature, top-k and top-p, and a KV cache), or
    answer an --instruction with an instruction-tuned one."""
    from nmtkit import workflows

    if instruction_input is not None and instruction is None:
        raise NmtkitError("--input goes with --instruction (a file of prompts is --prompts-file)")
    lm = workflows.open_language_model(model, device, compute_type)
    if instruction is not None:
        from nmtkit.data.datasets import format_prompt

        if prompts or prompts_file:
            raise NmtkitError("--instruction and prompts (arguments or --prompts-file) do not go together")
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        for piece in workflows.generate_stream(lm, format_prompt(instruction, instruction_input or ""), **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    if prompts:
        texts = [p.replace("\\n", "\n") for p in prompts]
    else:
        texts = [line or "" for line in workflows.input_lines([prompts_file] if prompts_file else [], sys.stdin.buffer)]
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if len(texts) == 1 and num_samples == 1 and not as_json:  # one prompt: stream tokens as they come
        sys.stdout.write(texts[0])
        for piece in workflows.generate_stream(lm, texts[0], **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    for i, record in enumerate(workflows.generate(lm, texts, num_samples=num_samples, **options)):
        if as_json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(("\n" if i else "") + f"--- prompt {record['index']}, sample {record['sample']}\n"
                  + record["prompt"] + record["text"], flush=True)


# ---------------------------------------------------------------------------------------------------------
# Downstream: fine-tuning


@command("finetune")
def finetune_cmd(
    task: str = typer.Option(..., "--task", help="classify, qa or generate."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="The pretrain run to start from (weights and tokenizer)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="New weights: -m's architecture and tokenizer, or --tokenizer and model flags."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="With --from-scratch and no -m: the tokenizer."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/TASK-DATE-TIME)."),
    train_file: Optional[str] = typer.Option(None, "--train", help="Training data: TSV/CSV/JSON(L) (classify), SQuAD JSON (qa), Alpaca JSON (generate); or a known corpus file (sst2/train.tsv)."),
    valid_file: Optional[str] = typer.Option(None, "--valid", help="Validation data, same format (default: the last 5% of --train)."),
    text_column: str = typer.Option("text", "--text-column", help="classify: the column or field holding the text."),
    label_column: str = typer.Option("label", "--label-column", help="classify: the column or field holding the label."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (or json/csv with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: str = typer.Option("train", "--split", help="The dataset's training split."),
    valid_split: Optional[str] = typer.Option(None, "--valid-split", help="The dataset's validation split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv."),
    max_len: int = typer.Option(256, "--max-len", help="Longest input in pieces (at most the model's context)."),
    stride: int = typer.Option(64, "--stride", help="qa: pieces shared by neighbouring windows of a long context."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples (qa: windows) per micro-batch."),
    freeze_body: bool = typer.Option(False, "--freeze-body", help="Train the task head only; the pretrained body stays fixed."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="generate: longest response when scoring chrF/BLEU."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="--from-scratch with --tokenizer: context length."),
    d_model: Optional[int] = typer.Option(None, "--d-model", help="--from-scratch with --tokenizer: width."),
    heads: Optional[int] = typer.Option(None, "--heads", help="--from-scratch with --tokenizer: attention heads."),
    layers: Optional[int] = typer.Option(None, "--layers", help="--from-scratch with --tokenizer: layers."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout (may change a pretrained model's)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default 1000)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Stop after this many epochs (0: no limit)."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 3e-4)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine (default), inverse-sqrt or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps (default 50)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay on matrices (default 0.01)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations and checkpoints (default 100)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Steps between training-loss lines."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping after this many validations without a better task metric."),
    seed: Optional[int] = SEED,
    compile_: Optional[bool] = COMPILE,
    bf16: Optional[bool] = BF16,
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Fine-tune a pretrained decoder: classify texts, answer questions (extractive QA), or follow instructions."""
    from nmtkit import workflows

    file_settings = _settings_tables(settings_file, ("model", "train"))
    model_settings = {**file_settings.get("model", {}), **_given(block_size=block_size, d_model=d_model, heads=heads,
                                                                  layers=layers, dropout=dropout)}
    train_settings = {**file_settings.get("train", {}), **_given(
        max_steps=max_steps, max_epochs=max_epochs, accumulate=accumulate, lr=lr, schedule=schedule,
        warmup_steps=warmup, weight_decay=weight_decay, eval_every=eval_every, log_every=log_every,
        patience=patience, seed=seed, compile=compile_, bf16=bf16)}
    columns = {"text_column": text_column, "label_column": label_column}
    train_spec = valid_spec = None
    if train_file:
        train_spec = {"file": train_file, **columns}
        valid_spec = {"file": valid_file, **columns} if valid_file else None
    elif dataset:
        base = {"dataset": dataset, "config": dataset_config, "data_files": data_files, **columns}
        train_spec = {**base, "split": split}
        valid_spec = {**base, "split": valid_split} if valid_split else None
    elif not resume:
        raise NmtkitError("no training data: give --train FILE or --dataset NAME")
    output = _run_folder(output, resume, task)
    with TrainingDisplay() as display:
        summary = workflows.finetune(
            run_dir=output, task=task, pretrained=str(model) if model else None, from_scratch=from_scratch,
            tokenizer=str(tokenizer) if tokenizer else None, train_spec=train_spec, valid_spec=valid_spec,
            model_settings=model_settings, train_settings=train_settings,
            max_len=max_len, stride=stride, batch_size=batch_size, freeze=freeze_body, max_new_tokens=max_new_tokens,
            device=device, resume=resume, on_bad_line=_check_on_bad_line(on_bad_line), progress=display,
            command=["nmtkit", *sys.argv[1:]])
    best = summary["best"] or {}
    shown = ", ".join(f"{k} {best[k]}" for k in ("accuracy", "macro_f1", "exact_match", "f1", "valid_loss") if k in best)
    generation = summary.get("generation")
    if generation:
        shown += f"; greedy responses: chrF {generation['chrf']}, BLEU {generation['bleu']}"
    log.info("fine-tuned for %s (%s parameters, %d steps, %.0f s); best %s at step %s", task,
             f"{summary['parameters']:,}", summary["steps"], summary["seconds"], shown or "-", summary["best_step"])
    print(output)


@command("classify")
def classify_cmd(
    files: List[str] = typer.Argument(None, help="Input files, one text per line; stdin when none."),
    model: Path = typer.Option(..., "--model", "-m", help="A finetune --task classify run."),
    probs: bool = typer.Option(False, "--probs", help="Append a tab and each label's probability."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: label and probabilities."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per batch."),
    device: str = DEVICE,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Label each input line: exactly one output line per input line (an empty line gives an empty line)."""
    from nmtkit import workflows

    ft = workflows.FineTuned(model, device, ("classify",))
    results = workflows.classify(ft, workflows.input_lines(files, sys.stdin.buffer, _check_on_bad_line(on_bad_line)),
                                 batch_size)

    def render(result) -> str:
        if result is None:
            return "{}" if as_json else ""
        if as_json:
            return json.dumps(result, ensure_ascii=False)
        if probs:
            return result["label"] + "\t" + " ".join(f"{k}:{v:.4f}" for k, v in result["probs"].items())
        return result["label"]

    _write_lines((render(r) for r in results), None)


@command("answer")
def answer_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A finetune --task qa run."),
    context: Optional[Path] = typer.Option(None, "--context", help="A text file holding the context."),
    question: Optional[List[str]] = typer.Option(None, "--question", "-q", help="A question about the context (repeatable)."),
    input_: Optional[Path] = typer.Option(None, "--input", "-i", help="Batch mode: a JSONL (or JSON list) file of records with context and question (and id)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: answer, character offsets, score."),
    device: str = DEVICE,
) -> None:
    """Extractive question answering: the span of the context that answers the question."""
    from nmtkit import workflows
    from nmtkit.data import corpora

    ft = workflows.FineTuned(model, device, ("qa",))
    if input_:
        if context or question:
            raise NmtkitError("--input (batch mode) and --context/--question do not go together")
        triples = [(str(rec.get("id", i)), corpora.record_field(rec, "context", where), corpora.record_field(rec, "question", where))
                   for i, (where, rec) in enumerate(corpora.read_records(input_), 1)]
        for result in workflows.answer(ft, triples):  # one JSON line per record, in input order
            print(json.dumps(result, ensure_ascii=False))
        return
    if not context or not question:
        raise NmtkitError("give --context FILE and --question, or --input FILE.jsonl")
    text = "\n".join(corpora.read_lines(context))
    for result in workflows.answer(ft, [(str(i + 1), text, q) for i, q in enumerate(question)]):
        print(json.dumps(result, ensure_ascii=False) if as_json else result["answer"])


# ---------------------------------------------------------------------------------------------------------
# See it: attention maps, training curves, the three translators compared


def _shade(weight: float) -> str:
    """A rich style for a heatmap cell: dark for 0, bright yellow for 1 (viridis-like)."""
    w = max(0.0, min(1.0, weight))
    r, g, b = int(68 + w * (253 - 68)), int(1 + w * (231 - 1)), int(84 + w * (37 - 84))
    return f"{'black' if w > 0.55 else 'white'} on rgb({r},{g},{b})"


@command("attention")
def attention_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A translator or GPT run folder."),
    src: str = typer.Option(..., "--src", help="The source sentence (a GPT: the text)."),
    tgt: Optional[str] = typer.Option(None, "--tgt", help="The target sentence (default: the model's own translation)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="cross (translators' default: decoder over source) or self (encoder; a GPT's only kind)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Layer, from 0 (default: the last)."),
    head: Optional[int] = typer.Option(None, "--head", help="Head, from 0 (default: the mean over heads)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the heatmap as PNG or SVG."),
    as_json: bool = typer.Option(False, "--json", help="Print the weights as JSON."),
    device: str = DEVICE,
) -> None:
    """Show attention as a heatmap: each query token's weights over the key tokens (in the terminal, or PNG/SVG)."""
    from nmtkit import workflows

    result = workflows.attention(model, src, tgt, kind=kind, layer=layer, head=head, device=device)
    what = f"{result['kind']}-attention, layer {result['layer']} of 0..{result['layers'] - 1}, " + (
        f"head {result['head']}" if result["head"] is not None else f"mean of {result['heads']} heads")
    if output:
        from nmtkit import plots

        plots.heatmap(result["weights"], result["rows"], result["cols"], output, title=what)
        log.info("wrote %s", output)
    if as_json:
        _print_json(result)
        return
    if result["translation"] is not None and tgt is None:
        log.info("translation: %s", result["translation"])
    table = Table("", *result["cols"], title=what, box=None, pad_edge=False)
    for token, row in zip(result["rows"], result["weights"]):
        table.add_row(token, *(f"[{_shade(w)}]{round(100 * w):>3}[/]" for w in row))
    Console(width=max(100, Console().width)).print(table)


@command("plot")
def plot_cmd(
    runs: List[Path] = typer.Argument(..., help="Run folders (their metrics.jsonl)."),
    metric: str = typer.Option("loss", "--metric", help="loss (training), valid_loss, bleu, chrf, lr, tokens_per_s, accuracy, f1, bits_per_char..."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the chart as PNG or SVG."),
) -> None:
    """Training curves of one or more runs: a compact chart in the terminal, and a PNG/SVG with --output."""
    from nmtkit import plots, workflows

    series = workflows.training_curves(runs, metric)
    if output:
        plots.curves(series, metric, output)
        log.info("wrote %s", output)
    table = Table("run", metric, "first", "best", "last", "steps", box=None)
    best = min if "loss" in metric else max
    for name, (steps, values) in series.items():
        table.add_row(name, plots.sparkline(values), f"{values[0]:.4g}", f"{best(values):.4g}", f"{values[-1]:.4g}",
                      f"{steps[0]}..{steps[-1]}")
    Console(width=max(100, Console().width)).print(table)


@command("compare")
def compare_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the runs (rnn/, attention/, transformer/), the tokenizer and curves.png."),
    src: Optional[str] = TRAIN_SRC,
    tgt: Optional[str] = TRAIN_TGT,
    valid_src: Optional[str] = VALID_SRC,
    valid_tgt: Optional[str] = VALID_TGT,
    test_src: Optional[str] = typer.Option(None, "--test-src", help="Test source file (default: the corpus's test split, else validation)."),
    test_ref: Optional[str] = typer.Option(None, "--test-ref", help="Test reference file."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="A known translation corpus (demo, multi30k): train, valid and test splits."),
    src_lang: Optional[str] = typer.Option(None, "--src-lang", help="Source language code."),
    tgt_lang: Optional[str] = typer.Option(None, "--tgt-lang", help="Target language code."),
    budget: str = typer.Option("300", "--budget", help="Each architecture's training budget: steps (300) or minutes (5m)."),
    archs: str = typer.Option("rnn,attention,transformer", "--archs", help="Which architectures, comma-separated."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="One tokenizer for all (else a joint one is trained)."),
    vocab_size: int = VOCAB_SIZE,
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="TOML/YAML with \\[rnn], \\[attention], \\[transformer] model tables and a \\[train] table."),
    device: str = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """RNN vs attention vs Transformer on the same data, tokenizer and budget: one table, and their validation curves."""
    from nmtkit import workflows
    from nmtkit.config import TokenizerConfig

    chosen = tuple(a.strip() for a in archs.split(",") if a.strip())
    settings = _settings_tables(settings_file, ("rnn", "attention", "transformer", "train"))
    train_spec, valid_spec = _translation_data(src, tgt, valid_src, valid_tgt, corpus, src_lang, tgt_lang)
    if train_spec is None or valid_spec is None:
        raise NmtkitError("compare needs training and validation data: --src/--tgt with --valid-src/--valid-tgt, or --corpus")
    if bool(test_src) != bool(test_ref):
        raise NmtkitError("--test-src and --test-ref go together")
    test_spec = {"src": test_src, "tgt": test_ref} if test_src else None
    if test_spec is None and corpus:
        test_spec = {**train_spec, "split": "test"}
    with TrainingDisplay() as display:
        result = workflows.compare(
            out_dir=output, train_spec=train_spec, valid_spec=valid_spec, test_spec=test_spec, archs=chosen, budget=budget,
            model_settings={a: settings.get(a, {}) for a in chosen}, train_settings=settings.get("train", {}),
            tokenizer=str(tokenizer) if tokenizer else None,
            tokenizer_cfg=TokenizerConfig(vocab_size=vocab_size), device=device, progress=display)
    if as_json:
        _print_json(result)
        return
    rows = result["rows"]
    table = Table(*rows[0].keys(), box=None)
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    Console(width=max(140, Console().width)).print(table)
    if result["curves"]:
        log.info("validation curves: %s", result["curves"])



# ---------------------------------------------------------------------------------------------------------
# Vocabularies and word vectors


@command("build-vocab")
def build_vocab_cmd(
    inputs: List[str] = typer.Argument(..., help="Corpus files (.gz too), TSV/CSV/JSON(L) with --column, or known corpus files (multi30k/train.en)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="A tokenizer folder, or a run folder holding one."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the vocab file (vocab.tsv) and statistics."),
    embedding_dim: Optional[int] = typer.Option(None, "--embedding-dim", help="Also write an initialised nn.Embedding(len(vocab), D) run folder to --output."),
    top: int = typer.Option(20, "--top", help="Show the N most frequent pieces."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the embedding initialisation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """A tokenizer's vocabulary over a corpus: frequencies, coverage, unknown rate, pieces per word; the embedding table it sizes."""
    from nmtkit import workflows

    with err.status("counting pieces..."):
        stats = workflows.build_vocab(tokenizer, inputs, column=column, output=output, embedding_dim=embedding_dim,
                                      top=top, seed=seed, on_bad_line=_check_on_bad_line(on_bad_line))
    if as_json:
        _print_json(stats)
        return
    out = Console(width=max(100, Console().width))
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
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
    for row in rows:
        summary.add_row(*row)
    out.print(summary)
    frequent = Table("id", "piece", "count", "share", title="most frequent pieces", box=None)
    for entry in stats["top"]:
        frequent.add_row(str(entry["id"]), repr(entry["piece"])[1:-1], f"{entry['count']:,}", f"{entry['share']:.2%}")
    out.print(frequent)


@command("train-embeddings")
def train_embeddings_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (.gz too), TSV/CSV/JSON(L) with --column, or known corpus files (multi30k/train.en tinyshakespeare)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/embeddings-DATE-TIME)."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="skipgram (default) or cbow."),
    unit: str = typer.Option("word", "--unit", help="word (lower-cased words and punctuation) or piece (a tokenizer's pieces, with --tokenizer)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="The tokenizer whose pieces get vectors (--unit piece)."),
    lowercase: bool = typer.Option(True, "--lowercase/--keep-case", help="Lower-case words (--unit word)."),
    min_count: int = typer.Option(5, "--min-count", help="Leave out words seen fewer times (--unit word)."),
    max_vocab: int = typer.Option(0, "--max-vocab", help="Keep only the N most frequent words (0: all)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Vector size (default 100)."),
    window: Optional[int] = typer.Option(None, "--window", help="Context words on each side (default 5)."),
    negative: Optional[int] = typer.Option(None, "--negative", help="Noise words per true word (default 5)."),
    sample: Optional[float] = typer.Option(None, "--sample", help="Subsampling threshold of frequent words (default 1e-3; 0: off)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the corpus (default 5)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate, decaying linearly (default 0.025)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per update, a multiple of 8 (default 2048 for skipgram, 512 for cbow)."),
    seed: Optional[int] = SEED,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output after its last finished epoch."),
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Word vectors with skip-gram or CBOW and negative sampling, as an nn.Embedding run folder (+ word2vec and projector files)."""
    from nmtkit import workflows

    if threads:
        import torch

        torch.set_num_threads(threads)
    file_settings = _settings_tables(settings_file, ("model", "train"))
    model_settings = {**file_settings.get("model", {}), **_given(dim=dim, arch=arch)}
    train_settings = {**file_settings.get("train", {}), **_given(
        window=window, negative=negative, sample=sample, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)}
    output = _run_folder(output, resume, "embeddings")
    with TrainingDisplay() as display:
        summary = workflows.train_embeddings(
            run_dir=output, inputs=list(inputs or []), column=column, unit=unit,
            tokenizer=str(tokenizer) if tokenizer else None, lowercase=lowercase, min_count=min_count,
            max_vocab=max_vocab, model_settings=model_settings, train_settings=train_settings,
            resume=resume, progress=display, command=["nmtkit", *sys.argv[1:]], on_bad_line=_check_on_bad_line(on_bad_line))
    log.info("trained %s vectors for %s %ss on %s tokens in %.1f s", summary["arch"], f"{summary['vocabulary']:,}",
             summary["unit"], f"{summary['tokens']:,}", summary["seconds"])
    print(output)


TABLE_HELP = "A train-embeddings or build-vocab run, a translator or GPT run (its input embeddings), or a word2vec text file."
SIDE = typer.Option("source", "--side", help="Translator runs: the source or target embeddings.")


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Cosine similarity of two words' vectors."""
    from nmtkit import workflows

    result = workflows.EmbeddingTable.load(model, side).similarity(a, b)
    if as_json:
        _print_json(result)
        return
    _note_pieces(result["a"], result["b"])
    print(f"{result['cosine']:.4f}")


@command("neighbors")
def neighbors_cmd(
    word: str = typer.Argument(..., help="A word."),
    model: Path = typer.Option(..., "--model", "-m", help=TABLE_HELP),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
    side: str = SIDE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The nearest neighbours of a word by cosine similarity: one `entry<TAB>cosine` line each."""
    from nmtkit import workflows

    result = workflows.EmbeddingTable.load(model, side).neighbors(word, k)
    if as_json:
        _print_json(result)
        return
    _note_pieces(result["query"])
    _print_ranked(result["neighbors"])


@command("analogy")
def analogy_cmd(
    a: str = typer.Argument(..., help="A (man)."),
    b: str = typer.Argument(..., help="is to B (king)."),
    c: str = typer.Argument(..., help="as C (woman) is to ?"),
    model: Path = typer.Option(..., "--model", "-m", help=TABLE_HELP),
    k: int = typer.Option(5, "-k", help="How many answers."),
    side: str = SIDE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A is to B as C is to ?: the words nearest to B - A + C (king - man + woman = queen)."""
    from nmtkit import workflows

    result = workflows.EmbeddingTable.load(model, side).analogy(a, b, c, k)
    if as_json:
        _print_json(result)
        return
    _note_pieces(*result["query"])
    _print_ranked(result["answers"])


def main() -> None:
    """Entry point: like `app()`, but a command line that does not parse also gets one line (and exit 2)."""
    # typer may vendor its own click: find its UsageError through a class it exports
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        rc = app(standalone_mode=False, prog_name="nmtkit")
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `nmtkit`: show the help
            print(exc.ctx.get_help() if exc.ctx else exc)
            sys.exit(0)
        where = f"; see {exc.ctx.command_path} --help" if exc.ctx else ""
        err.print(f"error: {exc.format_message().rstrip('.')}{where}", markup=False, highlight=False, soft_wrap=True)
        rc = 2
    except typer.Abort:
        err.print("interrupted")
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)
