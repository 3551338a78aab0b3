"""Commands of the see-it group: attention, plot, compare (`nmtkit.workflows.see`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from nmtkit.cli.core import (AS_JSON, DEVICE, OVERWRITE, TrainingDisplay, command, log, print_json, settings_tables,
                            wide_console)
from nmtkit.cli.translation import (CORPUS, SRC_LANG, TGT_LANG, TRAIN_SRC, TRAIN_TGT, VALID_SRC, VALID_TGT, VOCAB_SIZE,
                                    translation_data)
from nmtkit.errors import NmtkitError


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
    layer: Optional[int] = typer.Option(None, "--layer", help="Layer, from 0 (default: the last).", min=0),
    head: Optional[int] = typer.Option(None, "--head", help="Head, from 0 (default: the mean over heads).", min=0),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the heatmap as PNG or SVG."),
    as_json: bool = typer.Option(False, "--json", help="Print the weights as JSON."),
    device: str = DEVICE,
) -> None:
    """Show attention as a heatmap: each query token's weights over the key tokens (in the terminal, or PNG/SVG)."""
    from nmtkit.workflows import see

    result = see.attention(model, src, tgt, kind=kind, layer=layer, head=head, device=device)
    what = f"{result['kind']}-attention, layer {result['layer']} of 0..{result['layers'] - 1}" + (
        f", head {result['head']}" if result["head"] is not None else
        f", mean of {result['heads']} heads" if result["heads"] > 1 else "")
    if output:
        from nmtkit import plots

        plots.heatmap(result["weights"], result["rows"], result["cols"], output, title=what)
        log.info("wrote %s", output)
    if as_json:
        print_json(result)
        return
    if result["translation"] is not None and tgt is None:
        log.info("translation: %s", result["translation"])
    table = Table("", *result["cols"], title=what, box=None, pad_edge=False)
    for token, row in zip(result["rows"], result["weights"]):
        table.add_row(token, *(f"[{_shade(w)}]{round(100 * w):>3}[/]" for w in row))
    wide_console().print(table)


@command("plot")
def plot_cmd(
    runs: List[Path] = typer.Argument(..., help="Run folders (their metrics.jsonl)."),
    metric: str = typer.Option("loss", "--metric", help="loss (training), valid_loss, bleu, chrf, lr, tokens_per_s, accuracy, f1, bits_per_char..."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the chart as PNG or SVG."),
) -> None:
    """Training curves of one or more runs: a compact chart in the terminal, and a PNG/SVG with --output."""
    from nmtkit import plots
    from nmtkit.workflows import see

    series = see.training_curves(runs, metric)
    if output:
        plots.curves(series, metric, output)
        log.info("wrote %s", output)
    table = Table("run", metric, "first", "best", "last", "steps", box=None)
    from nmtkit.evaluation import lower_is_better

    best = min if lower_is_better(metric) else max
    for name, (steps, values) in series.items():
        table.add_row(name, plots.sparkline(values), f"{values[0]:.4g}", f"{best(values):.4g}", f"{values[-1]:.4g}",
                      f"{steps[0]}..{steps[-1]}")
    wide_console().print(table)


@command("compare")
def compare_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the runs (rnn/, attention/, transformer/), the tokenizer and curves.png."),
    src: Optional[str] = TRAIN_SRC,
    tgt: Optional[str] = TRAIN_TGT,
    valid_src: Optional[str] = VALID_SRC,
    valid_tgt: Optional[str] = VALID_TGT,
    test_src: Optional[str] = typer.Option(None, "--test-src", help="Test source file (default: the corpus's test split, else validation)."),
    test_ref: Optional[str] = typer.Option(None, "--test-ref", help="Test reference file."),
    corpus: Optional[str] = CORPUS,
    src_lang: Optional[str] = SRC_LANG,
    tgt_lang: Optional[str] = TGT_LANG,
    budget: str = typer.Option("300", "--budget", help="Each architecture's training budget: steps (300) or minutes (5m)."),
    archs: str = typer.Option("rnn,attention,transformer", "--archs", help="Which architectures, comma-separated."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", "-t", help="One tokenizer for all (else a joint one is trained)."),
    vocab_size: Optional[int] = VOCAB_SIZE,
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="TOML/YAML with [rnn], [attention], [transformer] model tables and a [train] table."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
    as_json: bool = AS_JSON,
) -> None:
    """RNN vs attention vs Transformer on the same data, tokenizer and budget: one table, and their validation curves."""
    import dataclasses

    from nmtkit.cli.core import tokenizer_config
    from nmtkit.data.sources import ParallelSource
    from nmtkit.workflows import see

    chosen = tuple(a.strip() for a in archs.split(",") if a.strip())
    settings = settings_tables(settings_file, ("rnn", "attention", "transformer", "train"))
    train_source, valid_source = translation_data(src, tgt, valid_src, valid_tgt, corpus, src_lang, tgt_lang)
    if train_source is None or valid_source is None:
        raise NmtkitError("compare needs training and validation data: --src/--tgt with --valid-src/--valid-tgt, or --corpus")
    if bool(test_src) != bool(test_ref):
        raise NmtkitError("--test-src and --test-ref go together")
    test_source = ParallelSource(src=test_src, tgt=test_ref) if test_src else None
    if test_source is None and corpus:
        test_source = dataclasses.replace(train_source, split="test")
    with TrainingDisplay() as display:
        result = see.compare(
            out_dir=output, train_source=train_source, valid_source=valid_source, test_source=test_source, archs=chosen,
            budget=budget, model_settings={a: settings.get(a, {}) for a in chosen}, train_settings=settings.get("train", {}),
            tokenizer=str(tokenizer) if tokenizer else None, tokenizer_cfg=tokenizer_config(vocab_size, None),
            device=device, progress=display, overwrite=overwrite)
    if as_json:
        print_json(result)
        return
    rows = result["rows"]
    table = Table(*rows[0].keys(), box=None)
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else "-" if v is None else str(v) for v in row.values()))
    wide_console(140).print(table)
    if result["curves"]:
        log.info("validation curves: %s", result["curves"])
