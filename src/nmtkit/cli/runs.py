"""Commands on run folders of any kind: info, average, export (`nmtkit.workflows.runs`, `nmtkit.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from nmtkit.cli.core import OVERWRITE, choice, command, log, print_json, wide_console
from nmtkit.errors import NmtkitError

FORMATS = ("ctranslate2", "hf", "nmtkit")


@command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A run folder, a tokenizer folder, or a Hugging Face GPT-2 folder (or its name in the hub cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What a run or tokenizer folder holds: kind, settings, parameters, data, scores, files."""
    from nmtkit.workflows import runs

    result = runs.info(path)
    if as_json:
        print_json(result)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in result.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, default=str)
        table.add_row(key, str(value))
    wide_console().print(table)


@command("average")
def average_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A run folder with step checkpoints."),
    last: int = typer.Option(5, "--last", help="Average the last N step checkpoints.", min=1),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="New run folder (default RUN-avgN)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Average the weights of a run's last N checkpoints into a new run folder."""
    from nmtkit.workflows import runs

    output = output or model.with_name(f"{model.name}-avg{last}")
    result = runs.average_checkpoints(model, last, output, overwrite)
    log.info("averaged %s", ", ".join(result["checkpoints"]))
    print(output)


@command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A run folder: a Transformer translator or a GPT (ctranslate2), a GPT, classify or qa run (hf), any run (nmtkit)."),
    output: Path = typer.Argument(..., help="The folder to write (must not exist or be empty)."),
    format_: str = typer.Option("ctranslate2", "--format", help="ctranslate2 (the C++ inference engine), hf (a Hugging Face GPT-2 folder, safetensors) or nmtkit (a run folder of full weights: a LoRA run's adapters merged).", **choice(*FORMATS)),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="ctranslate2: store weights as int8, int8_float32, float16... (default float32)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a run: for CTranslate2 (pip install ctranslate2; nmtkit translate and generate run the export
    with -m), as a Hugging Face GPT-2 folder (transformers' from_pretrained loads it), or as a run of full
    weights (a LoRA run merged)."""
    if format_ not in FORMATS:
        raise NmtkitError(f"--format {format_!r} is not supported; choose {', '.join(FORMATS)}")
    if quantization and format_ != "ctranslate2":
        raise NmtkitError("--quantization is for --format ctranslate2")
    if format_ == "ctranslate2":
        from nmtkit.export import export_ctranslate2

        result = export_ctranslate2(run, output, quantization)
    else:
        from nmtkit.workflows import runs

        result = runs.export_run(run, output, format_)
    if as_json:
        print_json(result)
    else:
        print(result["output"])
        what = {"ctranslate2": f"CTranslate2 ({result.get('quantization')})", "hf": "a Hugging Face GPT-2 folder",
                "nmtkit": "a run of full weights"}[format_]
        log.info("exported the %s as %s, %.1f MB", result["kind"], what, result["bytes"] / 1e6)
