"""Commands of the language-model group: pretrain, generate (`nmtkit.workflows.lm`)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from nmtkit.cli.core import (COMPUTE_TYPE, DEVICE, ON_BAD_LINE, OVERWRITE, RESUME, SETTINGS, TrainingDisplay, check_on_bad_line, command, command_line, config_options, log_trained, run_folder, settings_tables, stdin, tokenizer_config, tokenizer_options, with_progress, input_wait, data_options)
from nmtkit.config import TrainConfig, with_flags
from nmtkit.errors import NmtkitError
from nmtkit.models.configs import GPTConfig
from nmtkit.workflows.lm import DATA_DEFAULTS, TRAIN_DEFAULTS

VOCAB_SIZE, TOKENIZER_TYPE = tokenizer_options()
NOT_FOR_GPT = ("best_metric", "max_tokens", "max_len", "teacher_forcing")  # set by --batch-size, or translators' own


@command("pretrain")
@config_options(GPTConfig, "model_flags", exclude=("vocab_size",))
@config_options(TrainConfig, "train_flags", defaults=TRAIN_DEFAULTS, exclude=NOT_FOR_GPT)
def pretrain_cmd(
    inputs: List[str] = typer.Argument(None, help="Text files (one document each), TSV/CSV/JSON(L) with --column, or known corpora (tinyshakespeare)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default checkpoints/gpt-DATE-TIME)."),
    column: Optional[str] = typer.Option(None, "--column", "-c", help="Column or field holding the text (tables, JSON, datasets)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A Hugging Face dataset (or json/csv/text with --data-files)."),
    dataset_config: Optional[str] = typer.Option(None, "--config", help="The dataset's configuration name."),
    split: Optional[str] = typer.Option(None, "--split", help="The dataset split (default train)."),
    data_files: Optional[List[str]] = typer.Option(None, "--data-files", help="Local files for --dataset json/csv/text."),
    valid_fraction: Optional[float] = typer.Option(None, "--valid-fraction", help=f"The last share of the text (in characters) kept for validation (default {DATA_DEFAULTS['valid_fraction']})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Windows per micro-batch (default {DATA_DEFAULTS['batch_size']}).", min=1),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="Use this tokenizer (else train one on the text)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Go on pretraining a GPT: a pretrain run, a Hugging Face GPT-2 folder, or the name of one in the local hub cache (gpt2); its architecture, tokenizer and weights.", metavar="PATH"),
    vocab_size: Optional[int] = VOCAB_SIZE,
    tokenizer_type: Optional[str] = TOKENIZER_TYPE,
    device: str = DEVICE,
    resume: bool = RESUME,
    settings_file: Optional[Path] = SETTINGS,
    overwrite: bool = OVERWRITE,
    model_flags: Optional[dict[str, Any]] = None,
    train_flags: Optional[dict[str, Any]] = None,
) -> None:
    """Pretrain a GPT-style decoder on raw text: next-token prediction (upstream)."""
    from nmtkit.data.sources import TextSource
    from nmtkit.workflows import lm

    file_settings = settings_tables(settings_file, ("data", "model", "train"))
    d = data_options(settings_file, file_settings, inputs=inputs or None, column=column, dataset=dataset,
                     config=dataset_config, split=split, data_files=data_files, valid_fraction=valid_fraction,
                     batch_size=batch_size, tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_type=tokenizer_type,
                     init_from=init_from)
    source = None
    if d["inputs"] or d["dataset"]:
        source = TextSource(inputs=tuple(d["inputs"] or ()), column=d["column"], dataset=d["dataset"],
                            config=d["config"], split=d["split"] or "train",
                            data_files=tuple(d["data_files"]) if d["data_files"] else None)
    output = run_folder(output, resume, "gpt")
    with TrainingDisplay() as display:
        summary = lm.pretrain(
            run_dir=output, source=source, valid_fraction=d["valid_fraction"], batch_size=d["batch_size"],
            model_settings=with_flags(file_settings.get("model", {}), model_flags, (GPTConfig,), f"{settings_file}: [model]"),
            train_settings=with_flags(file_settings.get("train", {}), train_flags, (TrainConfig,), f"{settings_file}: [train]"),
            tokenizer=str(d["tokenizer"]) if d["tokenizer"] else None,
            tokenizer_cfg=tokenizer_config(d["vocab_size"], d["tokenizer_type"]), init_from=d["init_from"],
            device=device, resume=resume, progress=display, command=command_line(), overwrite=overwrite,
        )
    log_trained("pretrained a GPT", summary, ("valid_loss", "bits_per_char", "valid_ppl"))
    print(output)


@command("generate")
def generate_cmd(
    prompts: List[str] = typer.Argument(None, help="Prompts; with none, one prompt per line of --prompts-file or stdin."),
    model: Path = typer.Option(..., "--model", "-m", help="A GPT run (nmtkit pretrain), an instruction-tuned one (finetune --task generate), a CTranslate2 export of either, or a Hugging Face GPT-2 folder (or its name in the hub cache).", metavar="PATH"),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", "-f", help="A file of prompts, one per line."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate at most.", min=0),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature; 0 means greedy.", min=0.0),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: all).", min=0),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample from the smallest set of tokens whose probability reaches p."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    num_samples: int = typer.Option(1, "--num-samples", help="Samples per prompt.", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt and sample: prompt, sample, text."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="An instruction, put into the prompt template of finetune --task generate."),
    instruction_input: Optional[str] = typer.Option(None, "--input", help="With --instruction: its input (the context it works on), if any."),
    device: str = DEVICE,
    compute_type: str = COMPUTE_TYPE,
    on_bad_line: str = ON_BAD_LINE,
) -> None:
    """Continue prompts with a pretrained decoder (sampling with temperature, top-k and top-p, and a KV cache), or
    answer an --instruction with an instruction-tuned one."""
    from nmtkit.data.sources import input_lines
    from nmtkit.workflows import lm

    if instruction_input is not None and instruction is None:
        raise NmtkitError("--input goes with --instruction (a file of prompts is --prompts-file)")
    lm.check_sampling(max_new_tokens, temperature, top_k, top_p)  # before any output
    model_ = lm.open_language_model(model, device, compute_type)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if instruction is not None:
        from nmtkit.data.datasets import format_prompt

        if prompts or prompts_file:
            raise NmtkitError("--instruction and prompts (arguments or --prompts-file) do not go together")
        prompt = format_prompt(instruction, instruction_input or "")
        if as_json:
            (record,) = lm.generate(model_, [prompt], **options)
            print(json.dumps({"instruction": instruction, "input": instruction_input or "", "response": record["text"]},
                             ensure_ascii=False))
        else:
            _stream(lm.generate_stream(model_, prompt, **options))
        return
    wait = None
    if prompts:
        texts = iter([p.replace("\\n", "\n") for p in prompts])
    else:  # read as they are needed: a large file of prompts streams
        files = [prompts_file] if prompts_file else []
        texts = (line or "" for line in input_lines(files, stdin(), check_on_bad_line(on_bad_line)))
        wait = input_wait(files)
    first = list(itertools.islice(texts, 2))
    if len(first) == 1 and num_samples == 1 and not as_json:  # one prompt: stream tokens as they come
        sys.stdout.write(first[0])
        _stream(lm.generate_stream(model_, first[0], **options))
        return
    records = lm.generate(model_, itertools.chain(first, texts), num_samples=num_samples, wait=wait, **options)
    counted = [prompts_file] if prompts_file and num_samples == 1 else []  # lines of the file: its records
    for i, record in enumerate(with_progress(records, "generate", counted)):
        if as_json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(("\n" if i else "") + f"--- prompt {record['index']}, sample {record['sample']}\n"
                  + record["prompt"] + record["text"], flush=True)


def _stream(pieces) -> None:
    """Write text as it comes, then end the line."""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
