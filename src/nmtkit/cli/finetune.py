"""Commands of the fine-tuning group: finetune, classify, answer (`nmtkit.workflows.finetune`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from nmtkit.cli.core import (DEVICE, ON_BAD_LINE, OVERWRITE, RESUME, SETTINGS, TrainingDisplay, check_on_bad_line, command, command_line, config_options, log_trained, run_folder, settings_tables, stdin, with_progress, write_blocks, input_wait, data_options, choice)
from nmtkit.cli.lm import NOT_FOR_GPT
from nmtkit.config import TrainConfig, with_flags
from nmtkit.errors import NmtkitError
from nmtkit.workflows.finetune import TASKS
from nmtkit.models.configs import GPTConfig
from nmtkit.workflows.finetune import DATA_DEFAULTS, TRAIN_DEFAULTS


@command("finetune")
@config_options(GPTConfig, "model_flags", exclude=("vocab_size",))
@config_options(TrainConfig, "train_flags", defaults=TRAIN_DEFAULTS, exclude=NOT_FOR_GPT)
def finetune_cmd(
    task: str = typer.Option(..., "--task", help="classify, qa or generate.", **choice(*TASKS)),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model to start from (weights and tokenizer): a pretrain run, a Hugging Face GPT-2 folder, or the name of one in the local hub cache (gpt2).", metavar="PATH"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="New weights: -m's architecture and tokenizer, or --tokenizer and model flags."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="With --from-scratch and no -m: the tokenizer."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/TASK-DATE-TIME)."),
    train_file: Optional[str] = typer.Option(None, "--train", help="Training data: TSV/CSV/JSON(L) (classify), SQuAD JSON (qa), Alpaca JSON (generate); or a known corpus file (sst2/train.tsv)."),
    valid_file: Optional[str] = typer.Option(None, "--valid", help="Validation data, same format (default: the last 5% of --train)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="classify: the column or field holding the text (default text)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="classify: the column or field holding the label (default label)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (or json/csv with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: Optional[str] = typer.Option(None, "--split", help="The dataset's training split (default train)."),
    valid_split: Optional[str] = typer.Option(None, "--valid-split", help="The dataset's validation split."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help=f"Longest input in pieces, at most the model's context (default {DATA_DEFAULTS['max_len']}).", min=1),
    stride: Optional[int] = typer.Option(None, "--stride", help=f"qa: pieces shared by neighbouring windows of a long context (default {DATA_DEFAULTS['stride']}).", min=0),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Examples (qa: windows) per micro-batch (default {DATA_DEFAULTS['batch_size']}).", min=1),
    freeze_body: Optional[bool] = typer.Option(None, "--freeze-body/--train-body", help="Train the task head only; the pretrained body stays fixed (default: train both)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=f"generate: longest response when scoring chrF/BLEU (default {DATA_DEFAULTS['max_new_tokens']}).", min=0),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="Train LoRA adapters of this rank (and the head) with the body frozen; the run stores only those (default 0: train everything).", min=0),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scaling: updates are multiplied by alpha / rank (default: twice the rank).", min=0),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Which linear layers get adapters: attn, mlp or attn,mlp (default attn)."),
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
    on_bad_line: str = ON_BAD_LINE,
    overwrite: bool = OVERWRITE,
    model_flags: Optional[dict[str, Any]] = None,
    train_flags: Optional[dict[str, Any]] = None,
) -> None:
    """Fine-tune a pretrained decoder: classify texts, answer questions (extractive QA), or follow instructions.
    The model flags size a new model (--from-scratch --tokenizer); a pretrained one changes only its dropout."""
    from nmtkit.data.sources import TaskSource
    from nmtkit.workflows import finetune

    file_settings = settings_tables(settings_file, ("data", "model", "train"))
    d = data_options(settings_file, file_settings, train=train_file, valid=valid_file, text_column=text_column,
                     label_column=label_column, dataset=dataset, config=dataset_config, split=split,
                     valid_split=valid_split, data_files=data_files, max_len=max_len, stride=stride,
                     batch_size=batch_size, freeze_body=freeze_body, max_new_tokens=max_new_tokens, tokenizer=tokenizer,
                     lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets)
    columns = {"text_column": d["text_column"] or "text", "label_column": d["label_column"] or "label"}
    train_source = valid_source = None
    if d["train"]:
        train_source = TaskSource(file=d["train"], **columns)
        valid_source = TaskSource(file=d["valid"], **columns) if d["valid"] else None
    elif d["dataset"]:
        base = dict(dataset=d["dataset"], config=d["config"],
                    data_files=tuple(d["data_files"]) if d["data_files"] else None, **columns)
        train_source = TaskSource(**base, split=d["split"] or "train")
        valid_source = TaskSource(**base, split=d["valid_split"]) if d["valid_split"] else None
    elif not resume:
        raise NmtkitError("no training data: give --train FILE or --dataset NAME")
    output = run_folder(output, resume, task)
    with TrainingDisplay() as display:
        summary = finetune.finetune(
            run_dir=output, task=task, pretrained=str(model) if model else None, from_scratch=from_scratch,
            tokenizer=str(d["tokenizer"]) if d["tokenizer"] else None, train_source=train_source,
            valid_source=valid_source, model_settings=with_flags(file_settings.get("model", {}), model_flags, (GPTConfig,), f"{settings_file}: [model]"),
            train_settings=with_flags(file_settings.get("train", {}), train_flags, (TrainConfig,), f"{settings_file}: [train]"), max_len=d["max_len"],
            stride=d["stride"], batch_size=d["batch_size"], freeze=d["freeze_body"], max_new_tokens=d["max_new_tokens"],
            lora_rank=d["lora_rank"], lora_alpha=d["lora_alpha"], lora_targets=d["lora_targets"],
            device=device, resume=resume, on_bad_line=check_on_bad_line(on_bad_line), progress=display,
            command=command_line(), overwrite=overwrite)
    generation = summary.get("generation")
    extra = f"; greedy responses: chrF {generation['chrf']}, BLEU {generation['bleu']}" if generation else ""
    log_trained(f"fine-tuned for {task}", summary, ("accuracy", "macro_f1", "exact_match", "f1", "valid_loss"), extra)
    print(output)


@command("classify")
def classify_cmd(
    files: List[str] = typer.Argument(None, help="Input files, one text per line; stdin when none."),
    model: Path = typer.Option(..., "--model", "-m", help="A finetune --task classify run."),
    probs: bool = typer.Option(False, "--probs", help="Append a tab and each label's probability."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: label and probabilities."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per batch.", min=1),
    device: str = DEVICE,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Label each input line: exactly one output line per input line (an empty line gives an empty line)."""
    from nmtkit.data.sources import input_lines
    from nmtkit.workflows import finetune

    ft = finetune.FineTuned(model, device, ("classify",))
    blocks = finetune.classify(ft, input_lines(files, stdin(), check_on_bad_line(on_bad_line)), batch_size,
                               wait=input_wait(files))

    def render(result) -> str:
        if result is None:
            return "{}" if as_json else ""
        if as_json:
            return json.dumps(result, ensure_ascii=False)
        if probs:
            return result["label"] + "\t" + " ".join(f"{k}:{v:.4f}" for k, v in result["probs"].items())
        return result["label"]

    write_blocks(with_progress(([render(r) for r in block] for block in blocks), "classify", files or [], lines=len), None)


def _context(value: str) -> str:
    """--context: a file's text, stdin's (-), or the text as given."""
    from nmtkit.data import corpora
    from nmtkit.data.sources import input_lines

    if value == "-":
        return "\n".join(line or "" for line in input_lines([], stdin()))
    if Path(value).is_file():
        return "\n".join(corpora.read_lines(value))
    return value


@command("answer")
def answer_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A finetune --task qa run."),
    context: Optional[str] = typer.Option(None, "--context", help="The context: a text file, - for stdin, or the text itself."),
    question: Optional[List[str]] = typer.Option(None, "--question", "-q", help="A question about the context (repeatable)."),
    input_: Optional[Path] = typer.Option(None, "--input", "-i", help="Batch mode: a JSONL (or JSON list) file of records with context and question (and id)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: answer, character offsets, score."),
    device: str = DEVICE,
) -> None:
    """Extractive question answering: the span of the context that answers the question."""
    from nmtkit.data import corpora
    from nmtkit.workflows import finetune

    ft = finetune.FineTuned(model, device, ("qa",))
    if input_:
        if context or question:
            raise NmtkitError("--input (batch mode) and --context/--question do not go together")
        triples = [(str(rec.get("id", i)), corpora.record_field(rec, "context", where), corpora.record_field(rec, "question", where))
                   for i, (where, rec) in enumerate(corpora.read_records(input_), 1)]
        for result in finetune.answer(ft, triples):  # one JSON line per record, in input order
            print(json.dumps(result, ensure_ascii=False))
        return
    if not context or not question:
        raise NmtkitError("give --context (a file, - for stdin, or the text) and --question, or --input FILE.jsonl")
    text = _context(context)
    for result in finetune.answer(ft, [(str(i + 1), text, q) for i, q in enumerate(question)]):
        print(json.dumps(result, ensure_ascii=False) if as_json else result["answer"])
