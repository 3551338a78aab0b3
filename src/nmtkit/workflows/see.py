"""See it: attention maps of translators and GPTs, training curves of runs, and the three translators
(RNN, RNN with attention, Transformer) trained and compared on the same data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nmtkit import checkpoint
from nmtkit.config import TokenizerConfig
from nmtkit.data.sources import ParallelSource
from nmtkit.errors import ConfigError, DataError
from nmtkit.files import check_output_folder, read_json, read_jsonl
from nmtkit.models import ARCHS
from nmtkit.workflows import runs
from nmtkit.workflows.lm import LanguageModel
from nmtkit.workflows.translation import Translator, evaluate_translator, train_translator, translate

log = logging.getLogger("nmtkit")


def attention(run_dir: str | Path, src: str, tgt: str | None = None, *, kind: str | None = None,
              layer: int | None = None, head: int | None = None, device: str = "auto") -> dict[str, Any]:
    """One attention map of a translator (cross-attention over the source, or the encoder's self-attention) or
    of a GPT (self-attention over `src`): query tokens as rows, key tokens as columns, weights (T x S).
    Without `tgt`, a translator's own translation (beam 5) is used. `layer` (from 0; default the last) and
    `head` (default the mean over heads) pick the map; the answer also holds every layer's and head's maps."""
    if not src.strip():
        raise DataError("--src is empty: give the sentence to look at")
    if runs.open_run(run_dir).kind == "gpt":
        kind = kind or "self"
        rows, cols, maps, translation = _gpt_attention(LanguageModel(run_dir, device), src, kind)
    else:
        kind = kind or "cross"
        rows, cols, maps, translation = _translator_attention(Translator(run_dir, device), src, tgt, kind)
    maps = maps[0].float().cpu()  # (L, H, T, S)
    L, H = maps.shape[:2]
    layer = L - 1 if layer is None else layer
    if not 0 <= layer < L or (head is not None and not 0 <= head < H):
        raise DataError(f"the model has {L} layer(s) of {H} head(s): --layer goes from 0 to {L - 1}, --head from 0 to {H - 1}")
    chosen = maps[layer].mean(0) if head is None else maps[layer, head]
    return {"kind": kind, "layer": layer, "head": head, "layers": L, "heads": H, "rows": rows, "cols": cols,
            "weights": [[round(w, 4) for w in row] for row in chosen.tolist()], "translation": translation}


def _gpt_attention(lm: LanguageModel, text: str, kind: str):
    import torch

    from nmtkit.models import attention_maps

    ids = lm.encode_prompt(text)[: lm.cfg.block_size]
    maps = _attention_or_error(lambda: attention_maps(lm.model, torch.tensor([ids], device=lm.device), kind=kind))
    pieces = [lm.tok.id_to_piece(i) for i in ids]
    return pieces, pieces, maps, None


def _translator_attention(tr: Translator, src: str, tgt: str | None, kind: str):
    import torch

    from nmtkit.models import attention_maps
    from nmtkit.tokenization import BOS_ID, EOS_ID

    translation = tgt if tgt is not None else next(translate(tr, [src], beam=5))
    src_ids = tr.tok.encode([src])[0][: tr.max_src_len - 1] + [EOS_ID]
    tgt_ids = tr.tok.encode([translation])[0] + [EOS_ID]
    x = torch.tensor([src_ids], device=tr.device)
    tgt_in = torch.tensor([[BOS_ID] + tgt_ids[:-1]], device=tr.device)
    maps = _attention_or_error(lambda: attention_maps(tr.model, x, x != 0, tgt_in, kind))
    cols = [tr.tok.id_to_piece(i) for i in src_ids]
    rows = cols if kind == "self" else [tr.tok.id_to_piece(i) for i in tgt_ids]
    return rows, cols, maps, translation


def _attention_or_error(compute):
    try:
        return compute()
    except ValueError as exc:
        raise DataError(str(exc)) from None


CURVE_METRICS = {"loss": ("train", "train_loss")}  # other names are read as they are, from the evaluations first


def training_curves(run_dirs: list[str | Path], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each run's (steps, values) of one metric from its metrics.jsonl: loss (training loss), lr, tokens_per_s,
    or any evaluation metric (valid_loss, bleu, chrf, accuracy, f1, bits_per_char...)."""
    series = {}
    for run in map(Path, run_dirs):
        runs.open_run(run)
        records = read_jsonl(run / checkpoint.METRICS)
        kind, key = CURVE_METRICS.get(metric, ("eval" if any(metric in r for r in records if r.get("kind") == "eval")
                                                else "train", metric))
        points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r and "step" in r]
        if not points:
            found = sorted({k for r in records for k in r} - {"kind", "step", "epoch", "elapsed_s"})
            raise DataError(f"{run / checkpoint.METRICS}: no {metric!r} values; it has: {', '.join(found) or 'nothing yet'}")
        series[run.name if run.name not in series else str(run)] = ([p[0] for p in points], [float(p[1]) for p in points])
    return series


def parse_budget(budget: str) -> dict[str, Any]:
    """"300" -> 300 steps; "5m" (or "5min") -> 5 minutes of training each."""
    text = str(budget).strip().lower()
    for suffix in ("min", "m"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return {"max_minutes": float(text[: -len(suffix)]), "max_steps": 10**9}
    if text.isdigit() and int(text) > 0:
        return {"max_steps": int(text)}
    raise DataError(f"--budget {budget!r}: give steps (300) or minutes (5m)")


def compare(
    *,
    out_dir: str | Path,
    train_source: ParallelSource,
    valid_source: ParallelSource,
    test_source: ParallelSource | None = None,
    archs: tuple[str, ...] = ("rnn", "attention", "transformer"),
    budget: str = "300",
    model_settings: dict[str, dict[str, Any]] | None = None,
    train_settings: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    device: str = "auto",
    progress=None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or take the existing runs in `out_dir` of) each architecture on the same data, tokenizer and
    budget; evaluate each on the test set (beam 5); return one row per architecture and draw their validation
    BLEU curves into out_dir/curves.png when matplotlib is there."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, _is_comparison, overwrite, "a comparison (rnn/, attention/, transformer/, tokenizer/)")
    test_files = (test_source or valid_source).files()
    if not test_files:
        raise DataError("compare evaluates on files or a known corpus's split (not a Hugging Face dataset)")
    if not tokenizer and not (out_dir / checkpoint.TOKENIZER_DIR / "tokenizer.model").is_file():
        log.info("one joint tokenizer for all three")
        runs.provide_tokenizer(out_dir, None, lambda: (x for pair in train_source.pairs() for x in pair), tokenizer_cfg,
                               train_source.files())
    tokenizer = tokenizer or str(out_dir / checkpoint.TOKENIZER_DIR)
    rows = []
    for arch in archs:
        run_dir = out_dir / arch
        if (run_dir / checkpoint.WEIGHTS).is_file():
            log.info("%s: taking the existing run in %s", arch, run_dir)
        else:
            log.info("%s: training", arch)
            train_translator(run_dir=run_dir, arch=arch, overwrite=overwrite, train_source=train_source, valid_source=valid_source,
                             model_settings=(model_settings or {}).get(arch), tokenizer=tokenizer, device=device,
                             train_settings={**(train_settings or {}), **parse_budget(budget)}, progress=progress)
        result = evaluate_translator(run_dir, str(test_files[0]), str(test_files[1]), device=device, beam=5,
                                     output=out_dir / f"{arch}.hyp")
        rows.append(_compare_row(arch, run_dir, result, test_source is not None))
    _significance(out_dir, archs, rows, test_files[1])
    return {"rows": rows, "curves": _curves(out_dir, archs), "out": str(out_dir)}


def _significance(out_dir: Path, archs: tuple[str, ...], rows: list[dict[str, Any]], reference: Path) -> None:
    """Each row's p-value of its BLEU against the first architecture's (sacrebleu's paired bootstrap)."""
    from nmtkit import evaluation
    from nmtkit.data import corpora

    if len(archs) < 2:
        return
    systems = [(arch, list(corpora.read_lines(out_dir / f"{arch}.hyp"))) for arch in archs]
    result = evaluation.paired_test(systems, [list(corpora.read_lines(reference))], ("bleu",),
                                    target_lang=reference.suffix.lstrip("."))
    for row, system in zip(rows, result["systems"]):
        row[f"p_bleu_vs_{archs[0]}"] = system["scores"]["bleu"]["p_value"]


def _is_comparison(path: Path) -> bool:
    return all(p.name in (*ARCHS, checkpoint.TOKENIZER_DIR, "curves.png") or p.suffix == ".hyp" for p in path.iterdir())


def _compare_row(arch: str, run_dir: Path, result: dict[str, Any], on_test: bool) -> dict[str, Any]:
    """One architecture's line of the comparison: size, training time and speed, best validation BLEU, and
    beam-5 BLEU, chrF and speed on the test set (or the validation set)."""
    from statistics import mean

    trained = read_json(run_dir / checkpoint.RUN_RECORD)["training"][-1]
    records = read_jsonl(run_dir / checkpoint.METRICS)
    logged = [r for r in records if r.get("kind") == "train"]
    speeds = [r["tokens_per_s"] for r in logged if r.get("step", 0) > 1] or [r["tokens_per_s"] for r in logged]
    bleus = [r["bleu"] for r in records if r.get("kind") == "eval" and "bleu" in r]
    return {"arch": arch, "parameters": trained["parameters"], "steps": trained["steps"],
            "train_seconds": trained["seconds"], "tokens_per_s": round(mean(speeds)) if speeds else None,
            "best_valid_bleu": max(bleus) if bleus else None,
            "test_bleu" if on_test else "valid_bleu_beam5": result["scores"]["bleu"]["score"],
            "test_chrf" if on_test else "valid_chrf_beam5": result["scores"]["chrf"]["score"],
            "sentences_per_s": round(result["sentences"] / max(result["seconds"], 1e-9), 1)}


def _curves(out_dir: Path, archs: tuple[str, ...]) -> str | None:
    """The validation BLEU curves of the runs in out_dir/curves.png (None without matplotlib)."""
    try:
        from nmtkit import plots

        plots.curves(training_curves([out_dir / a for a in archs], "bleu"), "validation BLEU (greedy)", out_dir / "curves.png")
        return str(out_dir / "curves.png")
    except ConfigError as exc:  # no matplotlib: the table still stands
        log.warning("no curves.png: %s", exc)
        return None
