"""The one training loop, for every model and task: AdamW, warmup + inverse-sqrt or cosine schedule,
gradient accumulation and clipping, bf16 autocast on GPU, `torch.compile`, periodic evaluation with early
stopping, best and last checkpoints, exact `--resume`, and data parallelism under `torchrun` (DDP).

The loop knows nothing about the task: it receives an objective (model, batch) -> (summed loss, items),
a function giving the batches of an epoch, and an optional evaluation returning metrics (minGPT's habit).
Only rank 0 writes. What is *not* here: building models or reading data (`nmtkit.workflows`).

Interruptions: SIGINT (Ctrl-C) or SIGTERM lets the current step finish, saves a checkpoint and raises
`Interrupted`; a second signal stops at once. A run killed outright (SIGKILL, power cut) resumes from its last
checkpoint and, on CPU with the same seed, ends with the same weights as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit import checkpoint
from nmtkit.errors import ConfigError, Interrupted, OutOfMemory
from nmtkit.files import append_jsonl, read_jsonl, write_lines
from nmtkit.runtime import Distributed, autocast, measured_peak_flops

log = logging.getLogger("nmtkit")
STEPS_DIR = "steps"


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 10_000  # optimizer steps
    max_epochs: int = 0  # 0: no limit (max_steps decides)
    max_minutes: float = 0.0  # 0: no limit; else stop (after a last evaluation) once training has run this long
    max_tokens: int = 4096  # per micro-batch: sentences x longest sentence (in pieces), padding included
    accumulate: int = 1  # micro-batches per optimizer step (per process)
    lr: float = 5e-4  # peak learning rate
    schedule: Literal["inverse-sqrt", "cosine", "constant"] = "inverse-sqrt"
    warmup_steps: int = 1000  # linear warmup from 0
    min_lr_ratio: float = 0.0  # cosine: the floor, as a share of lr
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    clip_norm: float = 1.0  # 0: no clipping
    label_smoothing: float = 0.1
    teacher_forcing: float = 1.0  # RNNs: the share of steps fed the reference token
    eval_every: int = 500  # steps between evaluations and checkpoints
    patience: int = 0  # stop after this many evaluations without improvement (0: never)
    best_metric: str = "bleu"  # the metric that picks the best checkpoint: "bleu" (higher) or "valid_loss" (lower)
    keep_checkpoints: int = 5  # step checkpoints kept (for `nmtkit average`)
    log_every: int = 50
    seed: int = 1
    bf16: bool = True  # bf16 autocast on GPUs that support it (never on CPU)
    compile: bool = False  # torch.compile the model
    max_len: int = 256  # training pairs longer than this (in pieces) are left out, and reported

    def validate(self, where: str) -> None:
        for name in ("max_steps", "max_tokens", "accumulate", "eval_every", "log_every", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ConfigError(f"{where}: teacher_forcing must be between 0 and 1, got {self.teacher_forcing}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise ConfigError(f"{where}: lr must be positive, got {self.lr}")


RESUME_OVERRIDES = ("max_steps", "max_epochs", "max_minutes", "patience")  # what --resume may change; the rest is the run's


def resumed_settings(saved: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The train settings of a resumed run: those it was started with, but for the `RESUME_OVERRIDES` given."""
    return {**saved, **{k: v for k, v in (given or {}).items() if k in RESUME_OVERRIDES}}


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (from 1): linear warmup, then the schedule (pure function)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "inverse-sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / step)
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return cfg.lr


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best: dict[str, Any] | None
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (whose state_dict keys would be prefixed)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if "loss" in metric else new > old


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms or embeddings' 1-d parameters)."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StopRequests:
    """While active (in the main thread), SIGINT and SIGTERM set `signum` instead of stopping the process, so
    the loop can finish its step and save; a second signal raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: stopping after this step to save a checkpoint (again to stop at once, losing the "
                    "work since the last checkpoint)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _out_of_memory(what: str, cfg: "TrainConfig") -> OutOfMemory:
    return OutOfMemory(f"out of {what} memory with --max-tokens {cfg.max_tokens} per micro-batch (x{cfg.accumulate} "
                       "accumulated): lower --max-tokens and raise --accumulate by the same factor to keep the batch, "
                       "or lower --max-len")


def train(
    model: nn.Module,
    objective: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
    batches: Callable[[int], Sequence[Any]],
    *,
    cfg: TrainConfig,
    run_dir: str | Path,
    device: torch.device,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    dist: Distributed = Distributed(),
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    flops_per_token: float | None = None,
) -> TrainResult:
    """Train `model` until `cfg.max_steps` (or `max_epochs`, or early stopping). `batches(epoch)` must give
    the same sequence for the same epoch every time it is called (that is what makes resuming exact)."""
    run_dir = Path(run_dir)
    model.to(device)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",
    )
    state: dict[str, Any] = {"step": 0, "epoch": 0, "group": 0, "best": None, "best_step": None,
                             "bad_evals": 0, "last_saved": 0}
    if resume:
        saved = checkpoint.load_train_state(run_dir / checkpoint.TRAIN_STATE)
        checkpoint.load_into(model, run_dir / saved["weights"])
        model.to(device)
        optimizer.load_state_dict(saved["optimizer"])
        state.update(saved["loop"])
        _set_rng_state(saved["rng"])
        if dist.is_main:  # forget what was logged after the checkpoint: those steps are done again
            kept = [r for r in read_jsonl(run_dir / checkpoint.METRICS) if r.get("step", 0) <= state["step"]]
            write_lines(run_dir / checkpoint.METRICS, (json.dumps(r, ensure_ascii=False) for r in kept))
        log.info("resuming at step %d (epoch %d)", state["step"], state["epoch"] + 1)
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if dist.is_main:  # a run started again from the beginning logs afresh
            (run_dir / checkpoint.METRICS).unlink(missing_ok=True)
    ddp = None
    net: nn.Module = model
    if dist.enabled:
        ddp = net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    history: list[dict[str, Any]] = []
    peak = measured_peak_flops(device) if flops_per_token else None
    per_step = cfg.accumulate * dist.world_size
    start, t_log, tokens_since = time.perf_counter(), time.perf_counter(), 0
    rng_at_step_start = _rng_state()
    stop = False

    def save() -> None:
        if not dist.is_main or state["last_saved"] == state["step"]:
            return
        name = f"{STEPS_DIR}/step-{state['step']:08d}.safetensors"
        checkpoint.save_weights(run_dir / name, unwrap(model).state_dict())
        checkpoint.save_train_state(run_dir / checkpoint.TRAIN_STATE, {
            "weights": name, "optimizer": optimizer.state_dict(), "loop": dict(state, last_saved=state["step"]),
            "rng": rng_at_step_start,
        })
        state["last_saved"] = state["step"]
        for old in sorted((run_dir / STEPS_DIR).glob("step-*.safetensors"))[: -cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)

    def run_evaluation() -> bool:
        """Evaluate on rank 0, record, save; returns whether to stop early (agreed by every rank)."""
        should_stop = torch.zeros(1)
        if dist.is_main:
            record: dict[str, Any] = {"step": state["step"], "epoch": state["epoch"] + 1,
                                      "elapsed_s": round(time.perf_counter() - start, 1)}
            if evaluate is not None:
                model.eval()
                with autocast(device, cfg.bf16):
                    record.update(evaluate(unwrap(model)))
                model.train()
            history.append(record)
            append_jsonl(run_dir / checkpoint.METRICS, {"kind": "eval", **record})
            value = record.get(cfg.best_metric, record.get("valid_loss"))
            metric = cfg.best_metric if cfg.best_metric in record else "valid_loss"
            if value is None or _better(metric, value, state["best"]):
                state.update(best=value, best_step=state["step"], bad_evals=0)
                checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, unwrap(model).state_dict())
            else:
                state["bad_evals"] += 1
            save()
            if progress:
                progress({"event": "eval", **record, "best": state["best"], "best_step": state["best_step"]})
            if cfg.patience and state["bad_evals"] >= cfg.patience:
                log.info("early stopping: no improvement in %d evaluations (best %s at step %s)",
                         cfg.patience, state["best"], state["best_step"])
                should_stop[0] = 1
        if dist.enabled:
            torch.distributed.broadcast(should_stop, 0)
        return bool(should_stop[0])

    model.train()
    with StopRequests() as requests:
        try:
            while state["step"] < cfg.max_steps and not stop and (not cfg.max_epochs or state["epoch"] < cfg.max_epochs):
                epoch_batches = batches(state["epoch"])
                groups = len(epoch_batches) // per_step
                if groups == 0:
                    raise ConfigError(
                        f"an epoch has {len(epoch_batches)} batch(es), fewer than one optimizer step needs "
                        f"({cfg.accumulate} x {dist.world_size} processes); lower --max-tokens or --accumulate"
                    )
                while state["group"] < groups and state["step"] < cfg.max_steps:
                    g = state["group"]
                    micro = [epoch_batches[g * per_step + a * dist.world_size + dist.rank].to(device)
                             for a in range(cfg.accumulate)]
                    items = torch.tensor([float(sum(b.target_tokens for b in micro))], device=device)
                    if dist.enabled:
                        torch.distributed.all_reduce(items)
                    total_loss = torch.zeros((), device=device)
                    for i, batch in enumerate(micro):
                        last = i == len(micro) - 1
                        ctx = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
                        with ctx, autocast(device, cfg.bf16):
                            loss, _ = objective(net, batch)
                            (loss * dist.world_size / items[0]).backward()
                        total_loss += loss.detach()
                    if cfg.clip_norm:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                    lr = learning_rate(state["step"] + 1, cfg)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    state["step"] += 1
                    state["group"] = g + 1
                    rng_at_step_start = _rng_state()
                    tokens_since += sum(b.tokens for b in micro)
                    if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                        if dist.enabled:
                            torch.distributed.all_reduce(total_loss)
                        now = time.perf_counter()
                        record = {"step": state["step"], "epoch": state["epoch"] + 1,
                                  "train_loss": round(total_loss.item() / items.item(), 4), "lr": lr,
                                  "tokens_per_s": round(tokens_since * dist.world_size / max(now - t_log, 1e-9))}
                        if peak:  # model FLOPs utilisation of this device (PaLM appendix B FLOPs)
                            record["mfu"] = round(record["tokens_per_s"] / dist.world_size * flops_per_token / peak, 4)
                        t_log, tokens_since = now, 0
                        if dist.is_main:
                            append_jsonl(run_dir / checkpoint.METRICS, {"kind": "train", **record})
                            if progress:
                                progress({"event": "train", "max_steps": cfg.max_steps, **record})
                    if state["step"] % cfg.eval_every == 0:
                        if run_evaluation():
                            stop = True
                            break
                        t_log, tokens_since = time.perf_counter(), 0  # tokens/s counts training time only
                    if _agreed(requests.signum, dist, device):
                        save()
                        raise Interrupted(run_dir, state["step"], requests.signum or signal.SIGINT)
                    if cfg.max_minutes and time.perf_counter() - start > cfg.max_minutes * 60:
                        log.info("time budget of %g minutes reached at step %d", cfg.max_minutes, state["step"])
                        cfg = dataclasses.replace(cfg, max_steps=state["step"])  # ends the loop; the last evaluation follows
                if not stop and state["group"] >= groups:
                    state["epoch"] += 1
                    state["group"] = 0
            if state["last_saved"] != state["step"] and not stop:
                run_evaluation()
        except torch.OutOfMemoryError:
            raise _out_of_memory(device.type.upper(), cfg) from None
    return TrainResult(state["step"], state["best_step"], _best_record(history, state["best_step"]),
                       stop, time.perf_counter() - start, history)


def _agreed(signum: int, dist: Distributed, device: torch.device) -> bool:
    """Whether any process was asked to stop (every process must stop at the same step)."""
    if not dist.enabled:
        return bool(signum)
    flag = torch.tensor([float(bool(signum))], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag[0])


def _best_record(history: list[dict[str, Any]], step: int | None) -> dict[str, Any] | None:
    return next((h for h in history if h["step"] == step), None)



# ---------------------------------------------------------------------------------------------------------
# Word vectors train with word2vec's own plain SGD and linearly decaying rate (no autograd, no optimizer), so
# they have this short loop of their own; it keeps the run folder layout and resumes at epoch boundaries.


@dataclass(frozen=True)
class Word2VecTrainConfig:
    epochs: int = 5
    window: int = 5  # context words on each side (each centre draws its own window from 1..window)
    negative: int = 5  # noise words per true word, drawn from unigram counts ** 0.75
    sample: float = 1e-3  # subsampling threshold for frequent words (0: off)
    lr: float = 0.025  # decays linearly to min_lr over the whole run
    min_lr: float = 0.0001
    batch_size: int = 0  # examples per update, a multiple of 8 (0: 2048 for skip-gram, 512 for CBOW, the best trade-offs measured)
    seed: int = 1

    def validate(self, where: str) -> None:
        for name in ("epochs", "window", "negative"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 0 or self.batch_size % NOISE_GROUP:
            raise ConfigError(f"{where}: batch_size must be a multiple of {NOISE_GROUP}, got {self.batch_size}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError(f"{where}: lr must be positive and min_lr not negative")


CHUNK_TOKENS = 1 << 17  # tokens whose examples are made, shuffled and trained on together
NOISE_GROUP, NOISE_WORDS = 8, 8  # examples that share noise words, and how many (see nmtkit.models.embeddings)


def noise_table(counts: torch.Tensor, size: int = 1 << 22) -> torch.Tensor:
    """word2vec's unigram table: ids repeated in proportion to count ** 0.75, so a noise word is one random index."""
    noise = counts.double() ** 0.75
    cdf = torch.cumsum(noise / noise.sum(), 0)
    return torch.searchsorted(cdf, (torch.arange(size, dtype=torch.float64) + 0.5) / size).clamp(max=len(counts) - 1)


def train_word2vec(model, stream, counts: torch.Tensor, cfg: Word2VecTrainConfig, *, run_dir: str | Path,
                   resume: bool = False, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train skip-gram or CBOW vectors on `stream` (a `TokenStream`) with `counts` (V,) the corpus frequency of
    each id. Weights and the finished epoch are saved after every epoch; returns a summary."""
    from nmtkit.data.datasets import TokenStream, cbow_examples, keep_probabilities, skipgram_pairs

    run_dir = Path(run_dir)
    keep = keep_probabilities(counts, cfg.sample).float()
    table = noise_table(counts)
    first_epoch = 0
    if resume:
        saved = checkpoint.load_train_state(run_dir / checkpoint.TRAIN_STATE)
        checkpoint.load_into(model, run_dir / saved["weights"])
        first_epoch = saved["epoch"]
        log.info("resuming after epoch %d of %d", first_epoch, cfg.epochs)
    else:
        (run_dir / checkpoint.METRICS).unlink(missing_ok=True)
    L = len(stream)
    chunks = math.ceil(L / CHUNK_TOKENS)
    batch_size = cfg.batch_size or (2048 if model.cfg.arch == "skipgram" else 512)
    start = time.perf_counter()
    loss_sum = examples = 0.0
    try:
        for epoch in range(first_epoch, cfg.epochs):
            g = torch.Generator().manual_seed(cfg.seed * 1009 + epoch)
            t_epoch, loss_sum, examples = time.perf_counter(), 0.0, 0
            for c in range(chunks):
                lo, hi = c * CHUNK_TOKENS, min(L, (c + 1) * CHUNK_TOKENS)
                ids = stream.ids[lo:hi]
                kept = torch.rand(hi - lo, generator=g) < keep[ids]
                part = TokenStream(ids[kept], stream.sentences[lo:hi][kept])
                if len(part) < 2:
                    continue
                if model.cfg.arch == "skipgram":
                    inputs, truth = skipgram_pairs(part, cfg.window, g)
                else:
                    inputs, mask, truth = cbow_examples(part, cfg.window, g)
                n = len(truth)
                order = torch.randperm(n, generator=g)  # shuffled once; batches are then slices
                inputs, truth = inputs[order], truth[order]
                counts = starts = None
                if model.cfg.arch == "cbow":  # each example's context words, one example after the other
                    mask = mask[order]
                    inputs, counts = inputs[mask], mask.sum(1)  # (M,), (n,)
                    starts = F.pad(counts.cumsum(0), (1, 0)).tolist()  # example k's words: starts[k] .. starts[k+1]
                noise = table[torch.randint(len(table), (math.ceil(n / NOISE_GROUP), NOISE_WORDS), generator=g)]
                for b in range(0, n, batch_size):
                    e = min(n, b + batch_size)
                    done = epoch * L + lo + (hi - lo) * b / n  # corpus tokens behind us
                    lr = max(cfg.min_lr, cfg.lr - (cfg.lr - cfg.min_lr) * done / (cfg.epochs * L))
                    noise_rows = noise[b // NOISE_GROUP : -(-e // NOISE_GROUP)]
                    if counts is None:
                        loss_sum += model.sgd_step(inputs[b:e], truth[b:e], noise_rows, cfg.negative, lr)
                    else:
                        loss_sum += model.sgd_step(inputs[starts[b] : starts[e]], truth[b:e], noise_rows, cfg.negative,
                                                   lr, counts[b:e])
                examples += n
                if progress:
                    progress({"event": "train", "step": epoch * chunks + c + 1, "max_steps": cfg.epochs * chunks,
                              "train_loss": loss_sum / max(examples, 1), "lr": lr,
                              "tokens_per_s": round(hi / max(time.perf_counter() - t_epoch, 1e-9))})
            seconds = time.perf_counter() - t_epoch
            record = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(examples, 1), 4),
                      "examples": examples, "tokens_per_s": round(L / max(seconds, 1e-9))}
            # the epoch's weights under a new name, then the state that points to them: a kill in between
            # leaves the state of the epoch before, whose weights are still there
            name = f"{STEPS_DIR}/epoch-{epoch + 1:04d}.safetensors"
            checkpoint.save_weights(run_dir / name, model.state_dict())
            append_jsonl(run_dir / checkpoint.METRICS, {"kind": "train", **record})
            checkpoint.save_train_state(run_dir / checkpoint.TRAIN_STATE, {"epoch": epoch + 1, "weights": name})
            checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, model.state_dict())
            for old in sorted((run_dir / STEPS_DIR).glob("epoch-*.safetensors"))[:-1]:
                old.unlink()
            log.info("epoch %d: loss %.4f per example, %s tokens/s", epoch + 1, record["train_loss"],
                     f"{record['tokens_per_s']:,}")
    except KeyboardInterrupt:
        log.warning("interrupted: epochs finished so far are saved in %s; continue with --resume", run_dir)
        raise
    return {"epochs": cfg.epochs, "tokens": L, "seconds": round(time.perf_counter() - start, 1),
            "train_loss": round(loss_sum / max(examples, 1), 4)}
