"""Run folders: save and load them, safely.

A run folder (`checkpoints/<run>/`) alone is enough to use a model on any machine:

    config.json        {"format_version": 1, "kind": ..., "model": {...}, "train": {...}}
    model.safetensors  weights (never a pickle: loading a model must not run code)
    tokenizer/         the tokenizer folder (see `nmtkit.tokenization`)
    vocab.tsv          vocabularies and word vectors: `entry<TAB>count`, one line per row of the table
    metrics.jsonl      one JSON line per evaluation
    train_state.pt     optimizer, scheduler, step, RNG states for --resume (loaded with weights_only=True)
    run.json           command, versions, seed, data files with hashes, final scores with signatures
    .lock              while a training process writes the folder: who (`lock_run`)

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a crash never
leaves a half-written file. One training process writes a run folder at a time. What is *not* here: what the
config means (models and workflows decide that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from nmtkit.errors import CheckpointError
from nmtkit.files import atomic_write, read_json, temporary_target, write_json

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
METRICS = "metrics.jsonl"
RUN_RECORD = "run.json"
TOKENIZER_DIR = "tokenizer"
VOCAB = "vocab.tsv"
LOCK = ".lock"
# what a run folder may hold: the files above, step checkpoints, pretraining's token ids, exported vectors
RUN_ENTRIES = {CONFIG, WEIGHTS, TRAIN_STATE, METRICS, RUN_RECORD, TOKENIZER_DIR, VOCAB, LOCK, "steps", "data",
               "vectors.txt", "projector"}
# the names of the files nmtkit writes into a run folder and the folders in it
OWN_FILE = re.compile(r"config\.json|model\.safetensors|train_state\.pt|metrics\.jsonl|run\.json|vocab\.tsv|"
                      r"(step|epoch)-\d+\.safetensors|tokenizer\.(model|vocab|json)|meta\.json|(train|valid)\.bin|"
                      r"vectors\.(txt|tsv)|metadata\.tsv")
log = logging.getLogger("nmtkit")


def is_run_folder(path: Path) -> bool:
    """Whether a folder holds nothing but what nmtkit puts in a run folder (a run, or one that stopped early)."""
    return all(p.name in RUN_ENTRIES or temporary_target(p.name) for p in path.iterdir())


def is_own_temporary(path: Path) -> bool:
    """Whether `path` is a temporary file that nmtkit's atomic writes left in a run folder (and may delete)."""
    target = temporary_target(path.name)
    return target is not None and OWN_FILE.fullmatch(target) is not None


def write_config(run_dir: str | Path, kind: str, **sections: Any) -> None:
    write_json(Path(run_dir) / CONFIG, {"format_version": FORMAT_VERSION, "kind": kind, **sections})


def read_config(run_dir: str | Path, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The config of a run folder; refuses a missing folder, an unknown format version or a wrong kind."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    if not (run_dir / CONFIG).is_file():
        what = "a tokenizer folder" if (run_dir / "tokenizer.model").is_file() else "not a run folder"
        raise CheckpointError(f"{run_dir}: {what}, but this command needs a run folder (with {CONFIG} and {WEIGHTS})")
    config = read_json(run_dir / CONFIG)
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir / CONFIG}: format version {version!r} is not supported (this nmtkit reads version {FORMAT_VERSION})"
        )
    if config.get("kind") not in SECTIONS:
        raise CheckpointError(f"{run_dir / CONFIG}: unknown kind {config.get('kind')!r}; nmtkit makes "
                              f"{', '.join(SECTIONS)} runs")
    if kinds is not None and config.get("kind") not in kinds:
        raise CheckpointError(f"{run_dir}: a {config.get('kind')!r} run, but this command needs one of: {', '.join(kinds)}")
    return config


# the sections a run of each kind needs to be used, and those a training run needs to be resumed
SECTIONS = {"translator": {"arch": str, "model": dict}, "gpt": {"model": dict},
            "finetune": {"task": str, "model": dict, "data": dict}, "embeddings": {}, "vocab": {}}
TRAINING_SECTIONS = {"model": dict, "train": dict, "data": dict}


def check_sections(config: dict[str, Any], where: Path, more: dict[str, type] | None = None) -> None:
    """Refuse a config whose kind is unknown or whose sections are missing or of the wrong type (a damaged file)."""
    kind = config.get("kind")
    if kind not in SECTIONS:  # an export's config (a run folder's kind is checked by read_config)
        raise CheckpointError(f"{where}: unknown kind {kind!r}; nmtkit makes {', '.join(SECTIONS)} runs")
    for name, type_ in {**SECTIONS[kind], **(more or {})}.items():
        if not isinstance(config.get(name), type_):
            found = "missing" if name not in config else "null" if config[name] is None else f"a {type(config[name]).__name__}"
            raise CheckpointError(f"{where}: its {name!r} must be a {'table' if type_ is dict else 'string'}, "
                                  f"but is {found}")


def check_train_state(path: Path) -> None:
    """Refuse, before a resumed run rewrites anything, a training state that cannot be resumed from."""
    state = load_train_state(path, mmap=True)  # the loop reads it for real when it resumes
    step_keys = {"optimizer", "loop", "rng"} <= set(state) if isinstance(state, dict) else False
    if not isinstance(state, dict) or not isinstance(state.get("weights"), str) or not (
            step_keys or isinstance(state.get("epoch"), int)):
        raise CheckpointError(f"{path}: not a training state nmtkit wrote (its keys are wrong); nothing to resume from")
    if not (path.parent / state["weights"]).is_file():
        raise CheckpointError(f"{path}: names {state['weights']}, which is missing; nothing to resume from")


def update_config(run_dir: str | Path, **sections: Any) -> None:
    """Replace sections of a run's config.json (a resumed run's new training limits)."""
    write_json(Path(run_dir) / CONFIG, {**read_config(run_dir), **sections})


def save_weights(path: str | Path, state_dict: dict[str, Any]) -> None:
    """Weights as safetensors. A tensor shared under several names (tied embeddings) is stored once; the
    other names are recorded in the file's metadata and restored by `load_weights`."""
    import json

    from safetensors.torch import save

    tensors, tied, first_name = {}, {}, {}
    for name, tensor in state_dict.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in first_name:
            tied[name] = first_name[key]
            continue
        first_name[key] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    data = save(tensors, metadata={"format": "pt", "nmtkit_tied": json.dumps(tied)})
    atomic_write(path, lambda f: f.write(data))


def load_weights(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Weights from safetensors; anything else (a pickle, a truncated file) is refused."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            weights = {name: f.get_tensor(name) for name in f.keys()}
            tied = json.loads((f.metadata() or {}).get("nmtkit_tied", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors weights file ({exc})") from None
    if not isinstance(tied, dict) or not all(isinstance(s, str) and s in weights for s in tied.values()):
        raise CheckpointError(f"{path}: its tied-weight record names tensors the file does not hold")
    for alias, source in tied.items():
        weights[alias] = weights[source]
    return weights


def saved_state(model: Any) -> dict[str, Any]:
    """What a run saves of `model`: its state dict; of a model with LoRA adapters, only what it trains (the
    adapters and the task head), since its frozen body is the base model's."""
    state = model.state_dict()
    if not any(name.endswith(".lora_a") for name in state):
        return state
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t for name, t in state.items() if name in trainable}


def load_into(model: Any, path: str | Path) -> None:
    """Load the weights at `path` into `model` (a model with adapters: its `saved_state`), refusing names or
    shapes that do not match the model (that is, the config it was built from) naming the first mismatch."""
    load_state(model, load_weights(path), path)


def load_state(model: Any, weights: dict[str, Any], path: str | Path) -> None:
    """Load a state dict read from `path` into `model`, checked as `load_into` checks."""
    expected = saved_state(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        what = f"{missing[0]} is missing" if missing else f"{unexpected[0]} is not part of the model"
        raise CheckpointError(f"{path}: weights do not match {CONFIG}: {what} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected)")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: weights do not match {CONFIG}: {name} has shape "
                                  f"{tuple(weights[name].shape)}, the config makes it {tuple(tensor.shape)}")
    model.load_state_dict(weights, strict=len(expected) == len(model.state_dict()))


def count_parameters(weights: dict[str, Any]) -> int:
    """Parameters of a state dict, counting a tensor shared under several names once."""
    return sum({t.data_ptr(): t.numel() for t in weights.values()}.values())


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(state, f))


def load_train_state(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Training state for --resume, loaded with `weights_only=True` so no code can run; `mmap` maps the tensors
    instead of reading them (to look at the state's structure only)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; nothing to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")  # torch's own explanation runs on for several sentences
        raise CheckpointError(f"{path}: refused: not a safe training-state file ({first})") from None


@contextlib.contextmanager
def lock_run(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir/.lock` while writing the run folder, so a second training process is refused.

    The lock is an advisory `flock`, which the kernel releases when its process dies, however it dies: a lock
    file left by a killed process is detected as stale and taken over, and the temporary files of its
    unfinished writes are removed. The file names the holder (pid, host, start time) for the error message;
    it is removed on release. A folder this call created and that is still
    empty afterwards (the run failed before writing anything) is removed too.
    """
    import datetime
    import fcntl
    import socket

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(f"{run_dir}: in use by {holder}; wait for it to finish or choose another "
                                  "--output") from None
        try:  # the holder before us may have removed the file between our open and our flock: open it again
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if stale:
        log.warning("%s: taking over the lock of %s, which is no longer running", run_dir, stale)
        for tmp in run_dir.rglob(".*.tmp"):  # what its atomic writes left unfinished (a user's own files stay)
            if tmp.is_file() and is_own_temporary(tmp):
                tmp.unlink()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"nmtkit pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()
