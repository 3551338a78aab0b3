"""The run-folder layer every workflow shares: open a run of any kind (or a CTranslate2 export of one, or a
Hugging Face GPT-2 folder, which is a GPT run) and learn its kind; read its weights (a LoRA run's merged
into its base model's); start a run or resume it under one rule; provide its tokenizer; record into its run.json; load its
weights for inference. Also the `info` and `average` commands, which work on any run.

The resume rule: `--resume` continues a run exactly as it was started, from its config.json. A setting given
again with the same value is fine (so the command that started a run, plus `--resume`, continues it); a
different value is refused, naming the setting, except the `RESUME_OVERRIDES`, which say how long to go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from nmtkit import checkpoint, hf
from nmtkit.config import TokenizerConfig, from_dict, to_dict
from nmtkit.data import corpora
from nmtkit.data.sources import describe_files
from nmtkit.errors import CheckpointError, ConfigError
from nmtkit.export import is_ctranslate2_folder, read_export
from nmtkit.files import check_output_folder, read_json, read_jsonl, write_json
from nmtkit.tokenization import INFO_FILE, Tokenizer, is_hf_tokenizer_json, load_tokenizer, train_tokenizer

log = logging.getLogger("nmtkit")
RESUME_OVERRIDES = ("max_steps", "max_epochs", "max_minutes", "patience")  # what --resume may change


# ---------------------------------------------------------------------------------------------------------
# Opening a run


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder, or a CTranslate2 export of one (`exported`), or a Hugging Face GPT-2 folder (`hf`: a "gpt"
    run whose config is made from its config.json), with the config the run was made with."""

    path: Path
    config: dict[str, Any]
    exported: bool = False
    hf: bool = False

    @property
    def kind(self) -> str:
        """translator, gpt, finetune, embeddings or vocab."""
        return self.config["kind"]

    @property
    def task(self) -> str | None:
        """A finetune run's task: classify, qa or generate."""
        return self.config.get("task")


def open_run(path: str | Path, kinds: tuple[str, ...] | None = None) -> Run:
    """The one way to open a run folder, a CTranslate2 export or a Hugging Face GPT-2 folder (a path, or a name
    in the local hub cache); refuses a missing folder, an unknown format version, and (with `kinds`) a run of
    another kind, each with one line. The hub cache is looked in only where a GPT is wanted."""
    path = hf.resolve(path) if kinds is None or "gpt" in kinds else Path(path)
    if is_ctranslate2_folder(path):
        return Run(path, read_export(path, kinds), exported=True)
    if hf.is_hf_folder(path):
        if kinds is not None and "gpt" not in kinds:
            raise CheckpointError(f"{path}: a Hugging Face GPT-2 model, but this command needs one of: {', '.join(kinds)}")
        return Run(path, {"format_version": checkpoint.FORMAT_VERSION, "kind": "gpt", "model": hf.gpt_settings(path),
                          "source": "huggingface"}, hf=True)
    config = checkpoint.read_config(path, kinds)
    checkpoint.check_sections(config, path / checkpoint.CONFIG)
    return Run(path, config)


def pretrained_settings(base: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The model settings of a run that starts from a pretrained GPT's weights: the GPT's own, but the dropout,
    which may be given; any other setting given is refused (it would change the architecture)."""
    tweaks = {k: v for k, v in (given or {}).items() if k in ("dropout", "attention_dropout")}
    others = sorted(set(given or {}) - set(tweaks) - {"vocab_size"})
    if others:
        raise ConfigError(f"--{others[0].replace('_', '-')} cannot change a pretrained model's architecture "
                          "(only --dropout and --attention-dropout can)")
    return {**base, **tweaks}


def saved_config(run_dir: Path, kind: str) -> dict[str, Any]:
    """The config a run of `kind` was started with, for --resume (every section it needs checked)."""
    config = checkpoint.read_config(run_dir, (kind,))
    checkpoint.check_sections(config, run_dir / checkpoint.CONFIG, checkpoint.TRAINING_SECTIONS)
    return config


def open_for_inference(path: str | Path, device: str, compute_type: str, run_class: type, export_class: type):
    """A run folder loaded as `run_class`, or a CTranslate2 export of one as `export_class` (`compute_type`:
    int8, float16... for those)."""
    if is_ctranslate2_folder(path):  # the class opens it (`open_run`), checking its kind
        return export_class(path, device, compute_type)
    if compute_type != "default":
        raise ConfigError(f"--compute-type is for CTranslate2 exports; {path} is a run folder")
    return run_class(path, device)


def run_weights(run: Run, like=None) -> dict[str, Any]:
    """A run's best weights as a full state dict of its model: a Hugging Face folder's mapped onto nmtkit's
    GPT; a LoRA run's adapters merged into its base model's weights (its task head beside them). `like`: a
    model of the run's architecture, whose names and shapes a Hugging Face folder's weights are checked against
    (else one is built on the meta device)."""
    if run.hf:
        import torch

        from nmtkit.models.gpt import GPT, GPTConfig

        if like is None:
            with torch.device("meta"):  # the names and shapes only
                like = GPT(from_dict(GPTConfig, run.config["model"], str(run.path / hf.CONFIG)))
        return hf.gpt_weights(run.path, like)
    weights = checkpoint.load_weights(run.path / checkpoint.WEIGHTS)
    lora = (run.config.get("data") or {}).get("lora_rank") if run.kind == "finetune" else None
    if not lora:
        return weights
    from nmtkit.models.lora import merged

    data = run.config["data"]
    base = (run.config.get("init") or {}).get("pretrained")
    try:
        base_run = open_run(base, ("gpt",))
    except CheckpointError as exc:
        raise CheckpointError(f"{run.path}: a LoRA run holds adapters only, and its base model is not usable: {exc} "
                              "(export the run with nmtkit export --format nmtkit where the base is, to keep "
                              "full weights)") from None
    prefix = "" if run.task == "generate" else "body."
    body = like if like is None or run.task == "generate" else like.body
    full = {prefix + name: t for name, t in run_weights(base_run, body).items()}
    return merged({**full, **weights}, data["lora_alpha"] / lora)


def load_weights_for_inference(build: Callable[[], Any], run: Run, device):
    """The model `build()` makes, with the run's best weights (not drawing initial ones first), on `device`, in
    eval mode; on a CPU with its linear layers in the faster decoding layout."""
    import torch

    from nmtkit.models.layers import for_cpu_inference, without_init

    with without_init():
        model = build()
    checkpoint.load_state(model, run_weights(run, model), run.path if run.hf else run.path / checkpoint.WEIGHTS)
    broken = next((name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()),
                  None)
    if broken is not None:
        raise CheckpointError(f"{run.path / checkpoint.WEIGHTS}: {broken} holds NaN or infinite values (the run diverged: "
                              "take an earlier checkpoint, or train again with a lower --lr)")
    model = model.to(device).eval()
    return for_cpu_inference(model) if device.type == "cpu" else model


def run_tokenizer(run: Run, vocab_size: int) -> Tokenizer:
    """The run's tokenizer, refused when its size is not the one the model was trained with (a tokenizer copied
    from another run would give the model ids it never saw)."""
    folder = tokenizer_folder(run.path)
    tok = load_tokenizer(folder)
    if len(tok) != vocab_size:
        raise CheckpointError(f"{folder}: {len(tok)} pieces, but the model was trained with "
                              f"{vocab_size} (config.json); this is not the run's own tokenizer")
    return tok


def tokenizer_folder(path: str | Path) -> Path:
    """A tokenizer folder, or the tokenizer inside a run folder (a Hugging Face model folder holds its own, and
    may be named as in the hub cache)."""
    path = hf.resolve(path)
    return path / checkpoint.TOKENIZER_DIR if (path / checkpoint.TOKENIZER_DIR).is_dir() else path


# ---------------------------------------------------------------------------------------------------------
# Starting, resuming and recording a training run


def one_writer(train_workflow: Callable[..., Any]) -> Callable[..., Any]:
    """Run a training workflow into a run folder, never over a user's files (a folder holding anything but a
    run is refused unless `overwrite`), holding the folder's lock (`checkpoint.lock_run`), so a second process
    pointed at it is refused (under torchrun, rank 0 holds it for all), and with `resume` turned off when there
    is nothing to resume yet (a run killed before its first checkpoint starts again); a training state that
    cannot be resumed from is refused before anything in the run is rewritten. A run that fails before its first
    checkpoint in a folder it created removes the folder (a run interrupted by Ctrl-C keeps it: it says how to
    go on)."""

    @functools.wraps(train_workflow)
    def locked(*, run_dir: str | Path, resume: bool = False, overwrite: bool = False, **kwargs: Any) -> Any:
        run_dir = Path(run_dir)
        check_output_folder(run_dir, checkpoint.is_run_folder, overwrite, "a run", checkpoint.RUN_ENTRIES)
        created = not run_dir.exists()
        main = not int(os.environ.get("RANK", "0"))
        try:
            with checkpoint.lock_run(run_dir) if main else contextlib.nullcontext():
                if resume and not (run_dir / checkpoint.TRAIN_STATE).exists():
                    log.warning("%s: no checkpoint saved yet; starting the run from the beginning", run_dir)
                    resume = False
                if resume:
                    checkpoint.check_train_state(run_dir / checkpoint.TRAIN_STATE)
                return train_workflow(run_dir=run_dir, resume=resume, **kwargs)
        except Exception:
            if created and main and run_dir.is_dir() and not (run_dir / checkpoint.TRAIN_STATE).exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # all of it is this call's: nothing else was there
            raise

    return locked


def refuse_existing_run(run_dir: Path, kind: str | None = None) -> None:
    """Refuse to start a new run over an existing one, but for a `kind` run that never saved a checkpoint
    (killed before its first), which starts again from the beginning."""
    config = run_dir / checkpoint.CONFIG
    if not config.exists():
        return
    if kind and not (run_dir / checkpoint.TRAIN_STATE).exists() and read_json(config).get("kind") == kind:
        return
    raise CheckpointError(f"{run_dir}: already holds a run; continue it with --resume, or choose another --output")


def resumed(run_dir: Path, saved: dict[str, Any], merged: dict[str, Any], allowed: Iterable[str] = ()) -> dict[str, Any]:
    """The settings a resumed run goes on with: `merged` (the saved ones with those given again applied) when
    it changes nothing but the `allowed` ones; else a one-line error naming the first changed setting."""
    allowed = set(allowed)
    for name, value in merged.items():
        if name not in allowed and name in saved and saved[name] != value:
            raise ConfigError(
                f"{run_dir}: the run was started with {name.replace('_', '-')} {_shown(saved[name])}, not "
                f"{_shown(value)}; --resume continues a run as it was started"
                + (f" (it may change {', '.join('--' + a.replace('_', '-') for a in sorted(allowed))})" if allowed else ""))
    return merged


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def resumed_config(run_dir: Path, cls: type, saved: dict[str, Any], given: dict[str, Any] | None, where: str,
                   allowed: Iterable[str] = ()):
    """The config `cls` of a resumed run: its saved settings, and those given again (refused when changed,
    but for `allowed`)."""
    merged = to_dict(from_dict(cls, {**saved, **(given or {})}, where))
    return from_dict(cls, resumed(run_dir, saved, merged, allowed), where)


def resumed_values(run_dir: Path, saved: dict[str, Any], given: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The `names` of a resumed run's saved settings (a data section, the arch, the task): the saved values;
    one given again with another value is refused."""
    kept = {k: saved[k] for k in names if k in saved}
    return resumed(run_dir, kept, {**kept, **given})


def resumed_model(run_dir: Path, saved: dict[str, Any], given: dict[str, Any] | None, build: Callable[[dict], Any],
                  derived: tuple[str, ...]) -> dict[str, Any]:
    """A resumed run's model settings, but those `derived` from its data (vocabulary sizes): the saved ones; one
    given again with another value is refused. `build` makes the typed config (it knows aliases such as a
    Transformer's `layers`), so a setting is compared in the form it is saved in."""
    model = {k: v for k, v in saved.items() if k not in derived}
    merged = {k: v for k, v in to_dict(build({**saved, **(given or {})})).items() if k in model}
    return resumed(run_dir, model, merged)


def resumed_source(run_dir: Path, cls: type, saved: dict[str, Any] | None, given, where: str):
    """A data source of a resumed run: the saved one; a different one given again is refused."""
    source = from_dict(cls, saved, where) if saved else None
    if given is not None and source is not None:
        resumed(run_dir, to_dict(source), to_dict(given))
    return source


def provide_tokenizer(run_dir: Path, given: str | Path | None, texts: Callable[[], Iterable[str]] | None = None,
                      cfg: TokenizerConfig | None = None, files: Iterable[Path] = (), *, resume: bool = False,
                      dist=None, overwrite: bool = False) -> Tokenizer:
    """The run's tokenizer in run_dir/tokenizer: a copy of `given` (a tokenizer folder or a run holding one),
    or one trained with `cfg` on `texts()`; a resumed run keeps its own. Under torchrun rank 0 writes it."""
    folder = run_dir / checkpoint.TOKENIZER_DIR
    if not resume and (dist is None or dist.is_main):
        run_dir.mkdir(parents=True, exist_ok=True)
        if given:
            load_tokenizer(tokenizer_folder(given)).copy_to(folder)
        elif texts is not None:
            cfg = cfg or TokenizerConfig()
            log.info("training a %s tokenizer with %d pieces", cfg.model_type, cfg.vocab_size)
            train_tokenizer(corpora.nonempty(texts(), "training data"), folder, cfg, {"files": describe_files(files)},
                            overwrite)
    barrier(dist)
    return load_tokenizer(folder)


def barrier(dist) -> None:
    if dist is not None and dist.enabled:
        import torch.distributed

        torch.distributed.barrier()


def versions() -> dict[str, str]:
    import sacrebleu
    import sentencepiece
    import torch

    from nmtkit import __version__

    return {"nmtkit": __version__, "torch": torch.__version__, "sentencepiece": sentencepiece.__version__,
            "sacrebleu": sacrebleu.__version__, "python": sys.version.split()[0]}


def start_record(run_dir: Path, command: list[str] | None, seed: int, device, data: dict[str, Any],
                 world_size: int = 1, **more: Any) -> None:
    """run.json at the start of a run: command, versions, seed, device, data files with their hashes."""
    write_json(run_dir / checkpoint.RUN_RECORD, {
        "command": command or sys.argv, "versions": versions(), "seed": seed, "device": str(device),
        "world_size": world_size, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": data, **more,
    })


def append_record(run_dir: str | Path, section: str, record: dict[str, Any]) -> None:
    """Add `record` to the list `section` ("training", "evaluations") of the run's run.json."""
    path = Path(run_dir) / checkpoint.RUN_RECORD
    run = read_json(path) if path.is_file() else {}
    run.setdefault(section, []).append(record)
    write_json(path, run)


def training_summary(run_dir: Path, arch: str, model, result, **more: Any) -> dict[str, Any]:
    """What a training run returns and appends to run.json's "training" list: steps, best score, time, the
    parameters (and those trained, fewer under LoRA or a frozen body), the peak memory (`runtime.peak_memory_mb`)."""
    from nmtkit.runtime import peak_memory_mb

    params = {id(p): p for p in model.parameters()}.values()
    return {"run": str(run_dir), "arch": arch, "steps": result.steps, "best_step": result.best_step,
            "best": result.best, "stopped_early": result.stopped_early, "seconds": round(result.seconds, 1),
            "parameters": sum(p.numel() for p in params),
            "trained_parameters": sum(p.numel() for p in params if p.requires_grad),
            "peak_memory_mb": peak_memory_mb(next(iter(params)).device), **more}


# ---------------------------------------------------------------------------------------------------------
# export as a Hugging Face GPT-2 folder or as full weights (CTranslate2: `nmtkit.export.export_ctranslate2`)


def export_run(run_dir: str | Path, out: str | Path, format: str) -> dict[str, Any]:
    """`hf`: a GPT run (pretrained, or fine-tuned with --task generate; LoRA adapters merged) as a Hugging Face
    GPT-2 folder; a --task classify run as a GPT2ForSequenceClassification, a --task qa run as a
    GPT2ForQuestionAnswering. `nmtkit`: any run as a run of full weights (a LoRA run's adapters merged into its base, so it
    no longer needs it; its config then says it has none)."""
    from nmtkit.export import write_hf, write_run
    from nmtkit.models.configs import GPTConfig

    out = Path(out)
    run = open_run(run_dir, ("gpt", "finetune") if format == "hf" else None)
    if format == "hf":
        cfg = from_dict(GPTConfig, run.config["model"], str(run.path / checkpoint.CONFIG))
        write_hf(out, cfg, run_weights(run), run_tokenizer(run, cfg.vocab_size), run.task, run.config.get("labels"))
    else:
        if run.exported or run.hf:
            raise ConfigError(f"{run.path}: not an nmtkit run folder; --format nmtkit exports one")
        config = dict(run.config)
        lora = {k: v for k, v in config.get("data", {}).items() if k.startswith("lora_")}
        if lora.get("lora_rank"):
            config["data"] = {**config["data"], "lora_rank": 0, "merged_lora": lora}
        write_run(out, config, run_weights(run), run.path)
        append_record(out, "exported", {"from": str(run.path), "format": "nmtkit"})
    return {"output": str(out), "format": format, "kind": run.kind,
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


# ---------------------------------------------------------------------------------------------------------
# info, average


def info(path: str | Path) -> dict[str, Any]:
    """What a run folder or tokenizer folder holds: kind, settings, parameters, data, scores, files."""
    path = hf.resolve(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run or tokenizer folder")
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if is_hf_tokenizer_json(path / INFO_FILE) and not (path / checkpoint.CONFIG).is_file():
        return {"path": str(path), "kind": "tokenizer", "model_type": "bpe (byte-level)",
                "vocab_size": len(load_tokenizer(path)), "files": files}
    if (path / INFO_FILE).is_file() and not (path / checkpoint.CONFIG).is_file():
        return {"path": str(path), "kind": "tokenizer", **read_json(path / INFO_FILE), "files": files}
    runs = [p for p in sorted(path.iterdir()) if (p / checkpoint.CONFIG).is_file()]
    if not (path / checkpoint.CONFIG).is_file() and not is_ctranslate2_folder(path) and runs:
        return {"path": str(path), "kind": "comparison (a folder of runs)",  # what nmtkit compare writes
                "runs": {p.name: _summary(info(p)) for p in runs}, "files": files}
    run = open_run(path)
    kind = f"{run.kind} (CTranslate2 export)" if run.exported else f"{run.kind} (Hugging Face GPT-2)" if run.hf else run.kind
    result: dict[str, Any] = {"path": str(path), "kind": kind, "config": run.config, "files": files}
    if run.hf:
        result["parameters"] = sum(math.prod(shape) for name, shape in hf.read_tensors(path, shapes_only=True).items()
                                   if hf.is_weight(name))
        result["tokenizer"] = {"model_type": "bpe (byte-level)", "vocab_size": len(load_tokenizer(path))}
    elif (path / checkpoint.WEIGHTS).is_file():
        result["parameters"] = checkpoint.count_parameters(checkpoint.load_weights(path / checkpoint.WEIGHTS))
    data = run.config.get("data") or {}
    if run.kind == "finetune" and data.get("lora_rank"):  # what it stores are adapters and a head; the rest is its base
        result["lora"] = {"rank": data["lora_rank"], "alpha": data["lora_alpha"],
                          "targets": data.get("lora_targets"), "base": (run.config.get("init") or {}).get("pretrained"),
                          "stored_parameters": result.pop("parameters", None)}
    if (path / checkpoint.TOKENIZER_DIR / INFO_FILE).is_file():
        tok = read_json(path / checkpoint.TOKENIZER_DIR / INFO_FILE)  # its size as trained, not as asked for
        result["tokenizer"] = {**tok.get("config", {}), "vocab_size": tok.get("vocab_size")}
    evals = [m for m in read_jsonl(path / checkpoint.METRICS) if m.get("kind") == "eval"]
    if evals:
        result["evaluations"] = len(evals)
        result["last_evaluation"] = evals[-1]
    if (path / checkpoint.RUN_RECORD).is_file():
        result["run"] = read_json(path / checkpoint.RUN_RECORD)
    return result


def _summary(found: dict[str, Any]) -> dict[str, Any]:
    """A run's kind, size and last evaluation, for the info of a folder of runs."""
    return {k: found[k] for k in ("kind", "parameters", "last_evaluation") if k in found}


def average_checkpoints(run_dir: str | Path, last: int, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Average the weights of the last N step checkpoints into a new run folder (config and tokenizer copied);
    an existing `output` must be an earlier average (or, with `overwrite`, any folder: written into)."""
    import shutil

    import torch

    from nmtkit.training import STEPS_DIR

    run_dir, output = Path(run_dir), Path(output)
    checkpoint.read_config(run_dir)
    if output.exists() and output.resolve() == run_dir.resolve():
        raise CheckpointError(f"{output}: is the run being averaged; -o names a new folder for the average")
    check_output_folder(output, _is_average, overwrite, "an average of checkpoints", checkpoint.RUN_ENTRIES)
    files = sorted((run_dir / STEPS_DIR).glob("step-*.safetensors"))[-last:]
    if len(files) < 2:
        raise CheckpointError(f"{run_dir}: needs at least 2 step checkpoints to average, found {len(files)} in {STEPS_DIR}/")
    if len(files) < last:
        log.warning("%s holds %d step checkpoints, not %d: averaging those %d", run_dir / STEPS_DIR, len(files), last,
                    len(files))
    first_name: dict[int, str] = {}  # tied weights (one tensor under several names) are averaged, and kept, once
    same = {k: first_name.setdefault(id(v), k) for k, v in checkpoint.load_weights(files[0]).items()}
    total: dict[str, torch.Tensor] = {}
    for f in files:
        weights = checkpoint.load_weights(f)
        for k in set(same.values()):
            total[k] = total.get(k, 0) + weights[k].double()
    mean = {k: (v / len(files)).to(torch.float32) for k, v in total.items()}
    averaged = {k: mean[first] for k, first in same.items()}
    output.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / checkpoint.CONFIG, output / checkpoint.CONFIG)
    shutil.copytree(run_dir / checkpoint.TOKENIZER_DIR, output / checkpoint.TOKENIZER_DIR, dirs_exist_ok=True)
    checkpoint.save_weights(output / checkpoint.WEIGHTS, averaged)
    write_json(output / checkpoint.RUN_RECORD, {"averaged_from": str(run_dir), "checkpoints": [f.name for f in files]})
    return {"output": str(output), "checkpoints": [f.name for f in files]}


def _is_average(path: Path) -> bool:
    record = path / checkpoint.RUN_RECORD
    return checkpoint.is_run_folder(path) and record.is_file() and "averaged_from" in read_json(record)
