"""Commands of the translation group: train-translator, translate, score, evaluate
(`nmtkit.workflows.translation`; evaluate of a fine-tuned run: `nmtkit.workflows.finetune`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from nmtkit.cli.core import (AS_JSON, COMPUTE_TYPE, DEVICE, ON_BAD_LINE, OVERWRITE, RESUME, SETTINGS, TrainingDisplay, check_on_bad_line, command, command_line, config_options, log, log_trained, print_json, run_folder, settings_tables, stdin, tokenizer_config, tokenizer_options, with_progress, write_blocks, input_wait, wide_console, data_options, choice)
from nmtkit.config import TrainConfig, with_flags
from nmtkit.errors import NmtkitError
from nmtkit.evaluation import METRICS, TOKENIZERS
from nmtkit.models import ARCHS
from nmtkit.models.configs import RNNConfig, TransformerConfig

TRAIN_SRC = typer.Option(None, "--src", help="Training source file (or known corpus file, e.g. demo/train.en).")
TRAIN_TGT = typer.Option(None, "--tgt", help="Training target file, line-aligned with --src.")
VALID_SRC = typer.Option(None, "--valid-src", help="Validation source file.")
VALID_TGT = typer.Option(None, "--valid-tgt", help="Validation target file.")
CORPUS = typer.Option(None, "--corpus", help="A known translation corpus (demo, multi30k): its train and valid splits (compare: and test).")
SRC_LANG = typer.Option(None, "--src-lang", help="Source language code (with --corpus or --dataset; else --src's extension).")
TGT_LANG = typer.Option(None, "--tgt-lang", help="Target language code (with --corpus or --dataset; else --tgt's extension).")
DATASET = typer.Option(None, "--dataset", help="A Hugging Face dataset with a 'translation' column (or --src-column/--tgt-column).")
DATASET_CONFIG = typer.Option(None, "--config", help="The dataset's configuration name.")
DATA_FILES = typer.Option(None, "--data-files", help="Local files for --dataset json/csv.")
SRC_COLUMN = typer.Option(None, "--src-column", help="The column (name, or number from 1) of --train or --dataset holding source text.")
TGT_COLUMN = typer.Option(None, "--tgt-column", help="The column of --train or --dataset holding target text.")
VOCAB_SIZE, TOKENIZER_TYPE = tokenizer_options()
CACHE_DIR = typer.Option(None, "--cache-dir", help="Where prepared (tokenized, memory-mapped) training data is kept (default: $NMTKIT_CACHE/prepared, else ~/.cache/nmtkit/prepared).")
WORKERS = typer.Option(None, "--workers", help="Processes that tokenize the training data the first time (default: one per core; 1: in this process).", min=1)
TOKENIZE_HELP = "sacrebleu tokenizer: 13a, intl, zh, char, ja-mecab, ko-mecab... (default: chosen for the target language)."


def translation_data(src, tgt, valid_src, valid_tgt, corpus, src_lang, tgt_lang, dataset: dict | None = None,
                     table: dict | None = None):
    """The training and validation `ParallelSource`s of train-translator and compare, from their data options
    (None, None when none was given)."""
    from nmtkit.data.sources import ParallelSource

    if table and table.get("table"):
        valid = table.pop("valid")
        columns = (table["src_column"], table["tgt_column"])
        langs = {"src_lang": src_lang or _language(columns[0]), "tgt_lang": tgt_lang or _language(columns[1])}
        return ParallelSource(**table, **langs), (ParallelSource(**{**table, "table": valid}, **langs) if valid else None)
    if src or tgt:
        if not (src and tgt):
            raise NmtkitError("--src and --tgt go together")
        if bool(valid_src) != bool(valid_tgt):
            raise NmtkitError("--valid-src and --valid-tgt go together")
        train = ParallelSource(src=src, tgt=tgt, src_lang=src_lang or Path(src).suffix.lstrip("."),
                               tgt_lang=tgt_lang or Path(tgt).suffix.lstrip("."))
        return train, (ParallelSource(src=valid_src, tgt=valid_tgt) if valid_src else None)
    if corpus:
        if not (src_lang and tgt_lang):
            raise NmtkitError("--corpus needs --src-lang and --tgt-lang")
        train = ParallelSource(corpus=corpus, src_lang=src_lang, tgt_lang=tgt_lang, split="train")
        return train, ParallelSource(corpus=corpus, src_lang=src_lang, tgt_lang=tgt_lang, split="valid")
    if dataset and dataset.get("dataset"):
        valid_split = dataset.pop("valid_split")
        train = ParallelSource(**dataset, src_lang=src_lang, tgt_lang=tgt_lang)
        return train, (ParallelSource(**{**dataset, "split": valid_split}, src_lang=src_lang, tgt_lang=tgt_lang)
                       if valid_split else None)
    return None, None


VOCABULARY = ("src_vocab", "tgt_vocab")  # set from the tokenizer
BY_ARCH = {"dropout": "0.1 (transformer), 0.2 (rnn, attention)",
           "share_embeddings": "true (transformer), false (rnn, attention)"}


def _language(column: str | None) -> str | None:
    """A column named like a language code (en, de, pt_br) names the language; a number does not."""
    return column if column and not column.isdigit() and len(column) <= 5 else None


@command("train-translator")
@config_options(TransformerConfig, "model_flags", exclude=VOCABULARY, defaults=BY_ARCH)
@config_options(RNNConfig, "model_flags", exclude=(*VOCABULARY, *BY_ARCH))
@config_options(TrainConfig, "train_flags", exclude=("best_metric",))
def train_translator_cmd(
    arch: Optional[str] = typer.Option(None, "--arch", help="rnn (fixed context vector), attention, or transformer (default).",
                                       **choice(*ARCHS)),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/ARCH-DATE-TIME)."),
    src: Optional[str] = TRAIN_SRC,
    tgt: Optional[str] = TRAIN_TGT,
    valid_src: Optional[str] = VALID_SRC,
    valid_tgt: Optional[str] = VALID_TGT,
    train_table: Optional[str] = typer.Option(None, "--train", help="Training pairs as two columns of one TSV/CSV/JSON(L) file: --src-column and --tgt-column."),
    valid_table: Optional[str] = typer.Option(None, "--valid", help="Validation pairs, two columns of a file like --train."),
    header: Optional[bool] = typer.Option(None, "--header/--no-header", help="Whether the --train/--valid tables start with a header row (default: they do; without one, columns are numbered from 1)."),
    delimiter: Optional[str] = typer.Option(None, "--delimiter", help="The tables' delimiter (default: tab for .tsv, comma for .csv)."),
    corpus: Optional[str] = CORPUS,
    src_lang: Optional[str] = SRC_LANG,
    tgt_lang: Optional[str] = TGT_LANG,
    dataset: Optional[str] = DATASET,
    dataset_config: Optional[str] = DATASET_CONFIG,
    split: Optional[str] = typer.Option(None, "--split", help="The dataset's training split (default train)."),
    valid_split: Optional[str] = typer.Option(None, "--valid-split", help="The dataset's validation split."),
    data_files: Optional[List[str]] = DATA_FILES,
    src_column: Optional[str] = SRC_COLUMN,
    tgt_column: Optional[str] = TGT_COLUMN,
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="Use this tokenizer (else train a joint one on the training data)."),
    vocab_size: Optional[int] = VOCAB_SIZE,
    tokenizer_type: Optional[str] = TOKENIZER_TYPE,
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
    overwrite: bool = OVERWRITE,
    cache_dir: Optional[Path] = CACHE_DIR,
    workers: Optional[int] = WORKERS,
    model_flags: Optional[dict[str, Any]] = None,
    train_flags: Optional[dict[str, Any]] = None,
) -> None:
    """Train a translator: RNN encoder-decoder, RNN with attention, or Transformer. The training pairs are
    tokenized once into memory-mapped files in the cache (see nmtkit prepare) and reused by later runs."""
    from nmtkit.workflows import translation

    file_settings = settings_tables(settings_file, ("arch", "data", "model", "train"))
    d = data_options(settings_file, file_settings, src=src, tgt=tgt, valid_src=valid_src, valid_tgt=valid_tgt,
                     train=train_table, valid=valid_table, header=header, delimiter=delimiter, corpus=corpus,
                     src_lang=src_lang, tgt_lang=tgt_lang, dataset=dataset, config=dataset_config, split=split,
                     valid_split=valid_split, data_files=data_files, src_column=src_column, tgt_column=tgt_column,
                     tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_type=tokenizer_type)
    train_source, valid_source = translation_data(
        d["src"], d["tgt"], d["valid_src"], d["valid_tgt"], d["corpus"], d["src_lang"], d["tgt_lang"], dict(
            dataset=d["dataset"], config=d["config"], data_files=tuple(d["data_files"]) if d["data_files"] else None,
            src_column=d["src_column"], tgt_column=d["tgt_column"], split=d["split"] or "train",
            valid_split=d["valid_split"]), dict(
            table=d["train"], valid=d["valid"], src_column=d["src_column"], tgt_column=d["tgt_column"],
            header=d["header"] is not False, delimiter=d["delimiter"]))
    if d["valid"] and not d["train"]:
        raise NmtkitError("--valid goes with --train (files of one sentence per line: --valid-src/--valid-tgt)")
    if train_source is None and not resume:
        raise NmtkitError("no training data: give --src/--tgt files, --corpus NAME, or --dataset NAME")
    arch = arch or file_settings.get("arch")
    output = run_folder(output, resume, arch or "transformer")
    with TrainingDisplay() as display:
        summary = translation.train_translator(
            run_dir=output, arch=arch, train_source=train_source, valid_source=valid_source,
            model_settings=with_flags(file_settings.get("model", {}), model_flags, (TransformerConfig, RNNConfig), f"{settings_file}: [model]"),
            train_settings=with_flags(file_settings.get("train", {}), train_flags, (TrainConfig,), f"{settings_file}: [train]"),
            tokenizer=str(d["tokenizer"]) if d["tokenizer"] else None,
            tokenizer_cfg=tokenizer_config(d["vocab_size"], d["tokenizer_type"]), device=device, resume=resume,
            on_bad_line=check_on_bad_line(on_bad_line), cache_dir=cache_dir, workers=workers, progress=display,
            command=command_line(), overwrite=overwrite)
    log_trained(f"trained {summary['arch']}", summary, ("bleu", "chrf", "valid_loss"))
    print(output)


@command("prepare")
def prepare_cmd(
    src: Optional[str] = TRAIN_SRC,
    tgt: Optional[str] = TRAIN_TGT,
    train_table: Optional[str] = typer.Option(None, "--train", help="Pairs as two columns of one TSV/CSV/JSON(L) file: --src-column and --tgt-column."),
    header: bool = typer.Option(True, "--header/--no-header", help="Whether the --train table starts with a header row."),
    delimiter: Optional[str] = typer.Option(None, "--delimiter", help="The table's delimiter (default: tab for .tsv, comma for .csv)."),
    corpus: Optional[str] = CORPUS,
    src_lang: Optional[str] = SRC_LANG,
    tgt_lang: Optional[str] = TGT_LANG,
    dataset: Optional[str] = DATASET,
    dataset_config: Optional[str] = DATASET_CONFIG,
    split: str = typer.Option("train", "--split", help="The dataset's split."),
    data_files: Optional[List[str]] = DATA_FILES,
    src_column: Optional[str] = SRC_COLUMN,
    tgt_column: Optional[str] = TGT_COLUMN,
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="The tokenizer (a tokenizer folder, or a run holding one)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    workers: Optional[int] = WORKERS,
    on_bad_line: str = ON_BAD_LINE,
    as_json: bool = AS_JSON,
) -> None:
    """Tokenize a parallel corpus once into memory-mapped id files that train-translator reuses (as
    fairseq-preprocess does): train-translator with the same data and -t then starts at once. Prints the
    prepared folder."""
    from nmtkit.workflows import translation

    train_source, _ = translation_data(src, tgt, None, None, corpus, src_lang, tgt_lang, dict(
        dataset=dataset, config=dataset_config, data_files=tuple(data_files) if data_files else None,
        src_column=src_column, tgt_column=tgt_column, split=split, valid_split=None), dict(
        table=train_table, valid=None, src_column=src_column, tgt_column=tgt_column, header=header,
        delimiter=delimiter))
    if train_source is None:
        raise NmtkitError("no data: give --src/--tgt files, --train TABLE, --corpus NAME, or --dataset NAME")
    with TrainingDisplay() as display:
        result = translation.prepare(train_source, tokenizer, on_bad_line=check_on_bad_line(on_bad_line),
                                     cache_dir=cache_dir, workers=workers, progress=display)
    if as_json:
        print_json(result)
        return
    log.info("%s pairs, %s + %s pieces%s", f"{result['pairs']:,}", f"{result['tokens']['src']:,}",
             f"{result['tokens']['tgt']:,}", f" ({result['empty']} with an empty side left out)" if result["empty"] else "")
    print(result["folder"])


@command("translate")
def translate_cmd(
    files: List[str] = typer.Argument(None, help="Input files (or known corpus files); stdin when none."),
    model: Path = typer.Option(..., "--model", "-m", help="A translator run folder, or its CTranslate2 export."),
    input_: Optional[List[str]] = typer.Option(None, "--input", "-i", help="Input file (repeatable); same as the arguments."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    beam: int = typer.Option(5, "--beam", "-b", help="Beam size (1: greedy).", min=1, max=1024),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Scores divided by length ** this (0: raw log-probability)."),
    n_best: int = typer.Option(1, "--n-best", help="Write the K best translations with scores, as one JSON object per line.", min=1),
    with_scores: bool = typer.Option(False, "--scores", help="Append a tab and the score to each translation (an empty input line gives a lone tab: no translation, no score)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sentences per batch (sorted by length).", min=1),
    max_len_ratio: float = typer.Option(2.0, "--max-len-ratio", help="Longest output: ratio x source length + --max-len-extra pieces.", min=0.0),
    max_len_extra: int = typer.Option(10, "--max-len-extra", help="See --max-len-ratio.", min=0),
    compute_type: str = COMPUTE_TYPE,
    device: str = DEVICE,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Translate stdin or files: exactly one output line per input line. -m takes a run folder or its
    CTranslate2 export (nmtkit export)."""
    from nmtkit.data.sources import input_lines
    from nmtkit.workflows import translation

    translator = translation.open_translator(model, device, compute_type)
    inputs = list(files or []) + list(input_ or [])
    blocks = translation.translate_blocks(
        translator, input_lines(inputs, stdin(), check_on_bad_line(on_bad_line)),
        beam=beam, batch_size=batch_size, length_penalty=length_penalty, n_best=n_best, with_scores=with_scores,
        max_len_ratio=max_len_ratio, max_len_extra=max_len_extra, buffer_lines=max(batch_size * 8, 64),
        wait=input_wait(inputs))
    write_blocks(with_progress(blocks, "translate", inputs, lines=len), output)


def print_scores(scores: dict, as_json: bool) -> None:
    if as_json:
        print_json(scores)
        return
    for name, entry in scores.items():
        print(f"{name.upper():5} {entry['score']:6.2f}  {entry['signature']}")


@command("score")
def score_cmd(
    refs: List[str] = typer.Argument(None, help="Reference files (as sacrebleu takes them); or --ref."),
    ref: Optional[List[str]] = typer.Option(None, "--ref", "-r", help="Reference file (repeat for several references)."),
    inputs: Optional[List[str]] = typer.Option(None, "--input", "-i", help="Hypotheses (default stdin); repeat for several systems, the first the baseline of --paired-bs/--paired-ar."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated: bleu, chrf, ter (default all three; "
                                          "TER left out, with a warning, when a line has over 200 words: it takes "
                                          "seconds to minutes on such lines).", **choice(*METRICS, many=True)),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help=TOKENIZE_HELP, **choice(*TOKENIZERS)),
    lowercase: bool = typer.Option(False, "--lowercase", "-lc", help="Case-insensitive BLEU and chrF (TER is, as in sacrebleu)."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Target language (default: the reference file's extension)."),
    paired_bs: bool = typer.Option(False, "--paired-bs", help="Several systems: sacrebleu's paired bootstrap resampling against the first."),
    paired_ar: bool = typer.Option(False, "--paired-ar", help="Several systems: sacrebleu's approximate randomization against the first."),
    samples: int = typer.Option(0, "--samples", help="Resamples (--paired-bs, default 1000) or trials (--paired-ar, default 10000).", min=0),
    as_json: bool = AS_JSON,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """BLEU, chrF and TER with sacrebleu, printed with their signatures; with several systems, whether their
    differences are significant (--paired-bs, --paired-ar)."""
    from nmtkit.data.sources import input_lines
    from nmtkit.workflows import translation

    check_on_bad_line(on_bad_line)
    references = list(refs or []) + list(ref or [])
    if not references:
        raise NmtkitError("give the reference file(s): nmtkit score REF -i HYP (or --ref REF)")
    if paired_bs and paired_ar:
        raise NmtkitError("--paired-bs and --paired-ar: choose one")
    names = list(inputs or []) or ["<stdin>"]
    systems = [(name, [line or "" for line in input_lines([] if name == "<stdin>" else [name], stdin(), on_bad_line)])
               for name in names]
    ref_lines = [[line or "" for line in input_lines([r], None, on_bad_line)] for r in references]
    options = dict(metrics=[m.strip() for m in metrics.split(",") if m.strip()] if metrics else None, tokenize=tokenize,
                   lowercase=lowercase,
                   target_lang=lang or Path(references[0]).suffix.lstrip("."))
    if paired_bs or paired_ar:
        result = translation.significance(systems, ref_lines, references, test="bs" if paired_bs else "ar",
                                          samples=samples, **options)
        print_json(result) if as_json else _print_significance(result)
        return
    for i, (name, hyps) in enumerate(systems):
        scores = translation.score(hyps, ref_lines, (name, references), **options)
        if len(systems) > 1 and not as_json:
            print(("\n" if i else "") + f"--- {name}")
        print_scores(scores, as_json)


def _print_significance(result: dict[str, Any]) -> None:
    metrics = list(result["signatures"])
    table = Table("system", *(f"{m.upper()} (mean ± 95% CI)" for m in metrics), *(f"p {m.upper()}" for m in metrics),
                  box=None, title=f"{result['test']} against {result['systems'][0]['system']}")
    for row in result["systems"]:
        cells = [row["scores"][m] for m in metrics]
        table.add_row(row["system"], *(f"{c['score']:.2f} ({c['mean']} ± {c['ci']})" for c in cells),
                      *("-" if c["p_value"] is None else f"{c['p_value']:.4f}" for c in cells))
    wide_console(120).print(table)
    for metric, signature in result["signatures"].items():
        print(f"{metric.upper():5} {signature}")


@command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A translator or fine-tuned run folder, or a translator's CTranslate2 export."),
    src: Optional[str] = typer.Option(None, "--src", help="Translators: test source file (or known corpus file, e.g. demo/test.en)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Translators: test reference file."),
    data: Optional[str] = typer.Option(None, "--data", help="Fine-tuned runs: test data in the task's format (sst2/valid.tsv, squad/valid.json...)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Fine-tuned runs: a Hugging Face dataset instead of --data."),
    dataset_config: Optional[str] = DATASET_CONFIG,
    split: str = typer.Option("validation", "--split", help="The dataset split."),
    beam: int = typer.Option(5, "--beam", "-b", help="Beam size.", min=1, max=1024),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Length penalty."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sentences per batch.", min=1),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help=TOKENIZE_HELP, **choice(*TOKENIZERS)),
    lowercase: bool = typer.Option(False, "--lowercase", "-lc", help="Case-insensitive scores."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Translators: also keep the translations in this file."),
    device: str = DEVICE,
    compute_type: str = COMPUTE_TYPE,
    as_json: bool = AS_JSON,
) -> None:
    """Score a run on test data with its task's metric (translators: BLEU, chrF, TER; classify: accuracy and
    macro-F1; qa: exact match and F1; generate: chrF and BLEU); the result is recorded in its run.json."""
    from nmtkit.workflows import runs

    if runs.open_run(model).kind == "finetune":
        if not (data or dataset):
            raise NmtkitError("a fine-tuned run is evaluated on --data FILE or --dataset NAME")
        _evaluate_finetuned(model, data, dataset, dataset_config, split, device, as_json)
        return
    from nmtkit.workflows import translation

    if not (src and ref):
        raise NmtkitError("a translator is evaluated on --src FILE and --ref FILE")
    result = translation.evaluate_translator(model, src, ref, device=device, beam=beam, batch_size=batch_size,
                                             length_penalty=length_penalty, tokenize=tokenize, lowercase=lowercase,
                                             compute_type=compute_type, record=False, output=output,
                                             progress=lambda lines: with_progress(lines, "translate", [src]))
    if as_json:
        print_json(result)
    else:
        log.info("%d sentences translated in %.1f s (beam %d)", result["sentences"], result["seconds"], beam)
        print_scores(result["scores"], False)
    _record(model, result)


def _record(run_dir: Path, result: dict[str, Any]) -> None:
    """The evaluation in the run's run.json, once its scores are printed (a read-only run keeps them shown)."""
    from nmtkit.errors import WriteError
    from nmtkit.workflows import runs

    sys.stdout.flush()
    try:
        runs.append_record(run_dir, "evaluations", result)
    except WriteError as exc:
        raise WriteError(f"the scores above are not recorded in the run: {exc}") from None


def _evaluate_finetuned(model: Path, data, dataset, dataset_config, split: str, device: str, as_json: bool) -> None:
    from nmtkit.data.sources import TaskSource
    from nmtkit.workflows import finetune

    source = TaskSource(file=data) if data else TaskSource(dataset=dataset, config=dataset_config, split=split)
    result = finetune.evaluate_finetuned(model, source, device, record=False)
    if as_json:
        print_json(result)
    else:
        shown = {k: result[k] for k in ("accuracy", "macro_f1", "exact_match", "f1", "chrf", "bleu", "valid_loss")
                 if k in result}
        print("  ".join(f"{k} {v}" for k, v in shown.items()))
        if "confusion" in result:
            table = Table("gold \\ predicted", *result["labels"], box=None)
            for name, row in zip(result["labels"], result["confusion"]):
                table.add_row(name, *map(str, row))
            Console().print(table)
    _record(model, result)
