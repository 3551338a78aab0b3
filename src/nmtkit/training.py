"""The one training loop, for every model and task: AdamW, warmup + inverse-sqrt or cosine schedule,
gradient accumulation and clipping, bf16 autocast on GPU, `torch.compile`, periodic evaluation with early
stopping, best and last checkpoints, exact `--resume`, and data parallelism under `torchrun` (DDP).

The loop knows nothing about the task: it receives an objective (model, batch) -> (summed loss, items),
a function giving the batches of an epoch, and an optional evaluation returning metrics (minGPT's habit).
Only rank 0 writes. What is *not* here: building models or reading data (`nmtkit.workflows`).

Nothing in a step waits for the device: counts come from the batches as host numbers, batches are copied
from pinned memory without blocking while the next group is collated in a background thread (on a GPU), the
loss is read only at log intervals and the random state only when a checkpoint is written.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit import checkpoint
from nmtkit.config import NOISE_GROUP, TrainConfig, Word2VecTrainConfig
from nmtkit.data.batching import Prefetch
from nmtkit.errors import ConfigError, Interrupted, OutOfMemory
from nmtkit.evaluation import better
from nmtkit.files import append_jsonl, read_jsonl, write_lines
from nmtkit.runtime import Distributed, StopEvaluation, StopRequests, attention_shapes, autocast, measured_peak_flops

log = logging.getLogger("nmtkit")
STEPS_DIR = "steps"


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
    fixed_shapes: bool = False,
) -> TrainResult:
    """Train `model` until `cfg.max_steps` (or `max_epochs`, or early stopping). `batches(epoch)` must give
    the same sequence for the same epoch every time it is called (that is what makes resuming exact).
    `fixed_shapes`: every batch has the same shape (pretraining windows), so the training steps may use
    attention kernels that are planned once per shape (`nmtkit.runtime.attention_shapes`)."""
    loop = _Loop(model, objective, batches, cfg, Path(run_dir), device, evaluate, dist, progress, flops_per_token,
                 fixed_shapes)
    loop.restore() if resume else loop.start()
    return loop.run()


class _Loop:
    """One training run's moving parts: the model and its optimizer, the loop's position (`state`, what a
    checkpoint saves), the evaluations so far, and the clocks behind tokens/s and the time budget."""

    def __init__(self, model, objective, batches, cfg: TrainConfig, run_dir: Path, device, evaluate, dist: Distributed,
                 progress, flops_per_token: float | None, fixed_shapes: bool = False):
        self.model, self.objective, self.batches, self.cfg = model.to(device), objective, batches, cfg
        self.run_dir, self.device, self.evaluate, self.dist, self.progress = run_dir, device, evaluate, dist, progress
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "group": 0, "best": None, "best_step": None,
                                      "bad_evals": 0, "last_saved": 0}
        self.history: list[dict[str, Any]] = []  # this run's evaluations, those before a resume included
        self.flops_per_token, self.peak = flops_per_token, measured_peak_flops(device) if flops_per_token else None
        self.per_step = cfg.accumulate * dist.world_size  # micro-batches of all processes per optimizer step
        self.stopped = False  # early stopping
        self.fixed_shapes = fixed_shapes
        self.prefetch = device.type == "cuda"  # collate the next group in a thread while the device works

    def start(self) -> None:
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        if self.dist.is_main:  # a run started again from the beginning logs afresh
            (self.run_dir / checkpoint.METRICS).unlink(missing_ok=True)

    def restore(self) -> None:
        """The model, optimizer, loop position and random state of the last checkpoint."""
        saved = checkpoint.load_train_state(self.run_dir / checkpoint.TRAIN_STATE)
        checkpoint.load_into(self.model, self.run_dir / saved["weights"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state.update(saved["loop"])
        _set_rng_state(saved["rng"])
        kept = [r for r in read_jsonl(self.run_dir / checkpoint.METRICS) if r.get("step", 0) <= self.state["step"]]
        self.history = [{k: v for k, v in r.items() if k != "kind"} for r in kept if r.get("kind") == "eval"]
        if self.dist.is_main:  # forget what was logged after the checkpoint: those steps are done again
            write_lines(self.run_dir / checkpoint.METRICS, (json.dumps(r, ensure_ascii=False) for r in kept))
        log.info("resuming at step %d (epoch %d)", self.state["step"], self.state["epoch"] + 1)

    def run(self) -> TrainResult:
        self.net = self._wrapped()
        self.start_time = self.t_log = time.perf_counter()
        self.tokens_since = 0
        self.model.train()
        with StopRequests() as self.requests:
            try:
                while self._more_epochs():
                    self._run_epoch()
                if self.state["last_saved"] != self.state["step"] and not self.stopped:
                    self._evaluate_and_save()
            except torch.OutOfMemoryError:
                raise _out_of_memory(self.device.type.upper(), self.cfg) from None
        best = next((h for h in self.history if h["step"] == self.state["best_step"]), None)
        return TrainResult(self.state["step"], self.state["best_step"], best, self.stopped,
                           time.perf_counter() - self.start_time, self.history)

    def _wrapped(self) -> nn.Module:
        """The module the steps run: the model under DDP and torch.compile when asked for."""
        net = self.model
        if self.dist.enabled:
            net = self.ddp = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(net) if self.cfg.compile else net

    def _more_epochs(self) -> bool:
        cfg, state = self.cfg, self.state
        return state["step"] < cfg.max_steps and not self.stopped and (not cfg.max_epochs or state["epoch"] < cfg.max_epochs)

    def _run_epoch(self) -> None:
        epoch_batches = self.batches(self.state["epoch"])
        groups = len(epoch_batches) // self.per_step
        if groups == 0:
            raise ConfigError(f"an epoch has {len(epoch_batches)} batch(es), fewer than one optimizer step needs "
                              f"({self.cfg.accumulate} x {self.dist.world_size} processes); lower --max-tokens or --accumulate")
        with Prefetch(lambda g: self._micro_batches(epoch_batches, g), self.prefetch) as fetch:
            while self.state["group"] < groups and self.state["step"] < self.cfg.max_steps:
                g = self.state["group"]
                more = g + 1 < groups and self.state["step"] + 1 < self.cfg.max_steps
                self._step(fetch(g, g + 1 if more else None))
                if self._after_step():
                    return
        if self.state["group"] >= groups:
            self.state["epoch"] += 1
            self.state["group"] = 0

    def _micro_batches(self, epoch_batches, g: int) -> list:
        """This process's micro-batches of group `g`, collated on the CPU (pinned on a GPU, for copies that do not
        block)."""
        cfg, dist = self.cfg, self.dist
        micro = [epoch_batches[g * self.per_step + a * dist.world_size + dist.rank] for a in range(cfg.accumulate)]
        return [b.pin_memory() for b in micro] if self.device.type == "cuda" else micro

    def _step(self, micro: list) -> None:
        """One optimizer step over this process's micro-batches of the next group. Nothing here reads the device:
        the counts are the batches' host numbers."""
        cfg, dist, state = self.cfg, self.dist, self.state
        items: float | torch.Tensor = float(sum(b.target_tokens for b in micro))
        if dist.enabled:  # the count of every process, on the device for the collective
            items = torch.tensor([items], pin_memory=self.device.type == "cuda").to(self.device, non_blocking=True)
            torch.distributed.all_reduce(items)
            items = items[0]
        total_loss = torch.zeros((), device=self.device)
        with attention_shapes(self.device, fixed=self.fixed_shapes):
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1
                ctx = self.ddp.no_sync() if dist.enabled and not last else contextlib.nullcontext()
                with ctx, autocast(self.device, cfg.bf16):
                    loss, _ = self.objective(self.net, batch.to(self.device))
                    (loss * dist.world_size / items).backward()
                total_loss += loss.detach()
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        lr = learning_rate(state["step"] + 1, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["group"] += 1
        self.tokens_since += sum(b.tokens for b in micro)
        if state["step"] % cfg.log_every == 0 or state["step"] == 1:
            self._log_step(total_loss, items, lr)
        elif self.progress and dist.is_main:  # the bar moves every step (no device sync: the loss waits for a log)
            self.progress({"event": "step", "step": state["step"], "max_steps": cfg.max_steps, "lr": lr})

    def _log_step(self, total_loss: torch.Tensor, items, lr: float) -> None:
        """A training line in metrics.jsonl and on the progress bar: loss, lr, tokens/s (and MFU on GPU). The one
        place a step reads the device (the loss), every `log_every` steps."""
        dist = self.dist
        if dist.enabled:
            torch.distributed.all_reduce(total_loss)
        now = time.perf_counter()
        record = {"step": self.state["step"], "epoch": self.state["epoch"] + 1,
                  "train_loss": round(total_loss.item() / float(items), 4), "lr": lr,
                  "tokens_per_s": round(self.tokens_since * dist.world_size / max(now - self.t_log, 1e-9))}
        if self.peak:  # model FLOPs utilisation of this device (PaLM appendix B FLOPs)
            record["mfu"] = round(record["tokens_per_s"] / dist.world_size * self.flops_per_token / self.peak, 4)
        self.t_log, self.tokens_since = now, 0
        if dist.is_main:
            append_jsonl(self.run_dir / checkpoint.METRICS, {"kind": "train", **record})
            if self.progress:
                self.progress({"event": "train", "max_steps": self.cfg.max_steps, **record})

    def _after_step(self) -> bool:
        """Evaluate when due, stop on a signal or at the time budget; whether the run stops early here."""
        step = self.state["step"]
        if step % self.cfg.eval_every == 0:
            if self._evaluate_and_save():
                self.stopped = True
                return True
            self.t_log, self.tokens_since = time.perf_counter(), 0  # tokens/s counts training time only
        if _agreed(self.requests.signum, self.dist, self.device):
            self._save()
            raise Interrupted(self.run_dir, step, self.requests.signum or signal.SIGINT)
        if self.cfg.max_minutes and time.perf_counter() - self.start_time > self.cfg.max_minutes * 60:
            log.info("time budget of %g minutes reached at step %d", self.cfg.max_minutes, step)
            self.cfg = dataclasses.replace(self.cfg, max_steps=step)  # ends the loop; the last evaluation follows
        return False

    def _save(self, rng: dict[str, Any] | None = None) -> None:
        """A step checkpoint (weights, then the training state that names them); the oldest beyond
        keep_checkpoints go. `rng`: the random state after the step (read now when not given)."""
        state, run_dir = self.state, self.run_dir
        if not self.dist.is_main or state["last_saved"] == state["step"]:
            return
        name = f"{STEPS_DIR}/step-{state['step']:08d}.safetensors"
        checkpoint.save_weights(run_dir / name, checkpoint.saved_state(unwrap(self.model)))
        checkpoint.save_train_state(run_dir / checkpoint.TRAIN_STATE, {
            "weights": name, "optimizer": self.optimizer.state_dict(), "loop": dict(state, last_saved=state["step"]),
            "rng": rng if rng is not None else _rng_state(),
        })
        state["last_saved"] = state["step"]
        for old in sorted((run_dir / STEPS_DIR).glob("step-*.safetensors"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)

    def _evaluate_and_save(self) -> bool:
        """Evaluate on rank 0, record, keep the best weights, save; returns whether to stop early (agreed by
        every rank)."""
        should_stop = torch.zeros(1)
        if self.dist.is_main:
            rng = _rng_state() if self.state["last_saved"] != self.state["step"] else None  # before evaluating
            record = self._evaluation_or_stop(rng)
            self._keep_if_best(record)
            self._save(rng)
            state = self.state
            if self.progress:
                self.progress({"event": "eval", **record, "best": state["best"], "best_step": state["best_step"]})
            if self.cfg.patience and state["bad_evals"] >= self.cfg.patience:
                log.info("early stopping: no improvement in %d evaluations (best %s at step %s)",
                         self.cfg.patience, state["best"], state["best_step"])
                should_stop[0] = 1
        if self.dist.enabled:
            torch.distributed.broadcast(should_stop, 0)
        return bool(should_stop[0])

    def _evaluation_or_stop(self, rng: dict[str, Any] | None) -> dict[str, Any]:
        """The evaluation; in a single process, a signal before or during it stops it at once: the step's checkpoint
        is saved without it and `Interrupted` raised (under DDP the other processes wait for rank 0's evaluation,
        so the signal waits for its end)."""
        requests = self.requests
        if self.dist.enabled:
            return self._evaluation()
        try:
            if requests.signum:
                raise StopEvaluation
            requests.evaluating = True
            try:
                return self._evaluation()
            finally:
                requests.evaluating = False
        except StopEvaluation:
            self.model.train()
            self._save(rng)
            raise Interrupted(self.run_dir, self.state["step"], requests.signum) from None

    def _evaluation(self) -> dict[str, Any]:
        """The task's validation metrics now, recorded in metrics.jsonl."""
        record: dict[str, Any] = {"step": self.state["step"], "epoch": self.state["epoch"] + 1,
                                  "elapsed_s": round(time.perf_counter() - self.start_time, 1)}
        if self.evaluate is not None:
            self.model.eval()
            with autocast(self.device, self.cfg.bf16):
                record.update(self.evaluate(unwrap(self.model)))
            self.model.train()
        self.history.append(record)
        append_jsonl(self.run_dir / checkpoint.METRICS, {"kind": "eval", **record})
        return record

    def _keep_if_best(self, record: dict[str, Any]) -> None:
        """The weights of the best evaluation so far (by best_metric, else valid_loss) go to model.safetensors."""
        metric = self.cfg.best_metric if self.cfg.best_metric in record else "valid_loss"
        value = record.get(metric)
        if value is None or better(metric, value, self.state["best"]):
            self.state.update(best=value, best_step=self.state["step"], bad_evals=0)
            checkpoint.save_weights(self.run_dir / checkpoint.WEIGHTS, checkpoint.saved_state(unwrap(self.model)))
        else:
            self.state["bad_evals"] += 1


def _agreed(signum: int, dist: Distributed, device: torch.device) -> bool:
    """Whether any process was asked to stop (every process must stop at the same step)."""
    if not dist.enabled:
        return bool(signum)
    flag = torch.tensor([float(bool(signum))], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag[0])


# ---------------------------------------------------------------------------------------------------------
# Word vectors train with word2vec's own plain SGD and linearly decaying rate (no autograd, no optimizer), so
# they have this short loop of their own; it keeps the run folder layout and resumes at epoch boundaries.


CHUNK_TOKENS = 1 << 17  # tokens whose examples are made, shuffled and trained on together
NOISE_WORDS = 8  # noise words shared by each group of NOISE_GROUP examples (see nmtkit.models.embeddings)


def noise_table(counts: torch.Tensor, size: int = 1 << 22) -> torch.Tensor:
    """word2vec's unigram table: ids repeated in proportion to count ** 0.75, so a noise word is one random index."""
    noise = counts.double() ** 0.75
    cdf = torch.cumsum(noise / noise.sum(), 0)
    return torch.searchsorted(cdf, (torch.arange(size, dtype=torch.float64) + 0.5) / size).clamp(max=len(counts) - 1)


def train_word2vec(model, stream, counts: torch.Tensor, cfg: Word2VecTrainConfig, *, run_dir: str | Path,
                   resume: bool = False, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train skip-gram or CBOW vectors on `stream` (a `TokenStream`) with `counts` (V,) the corpus frequency of
    each id. Weights and the finished epoch are saved after every epoch; returns a summary."""
    from nmtkit.data.datasets import keep_probabilities

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
    start = time.perf_counter()
    loss_sum = examples = 0.0
    try:
        for epoch in range(first_epoch, cfg.epochs):
            g = torch.Generator().manual_seed(cfg.seed * 1009 + epoch)
            t_epoch, loss_sum, examples = time.perf_counter(), 0.0, 0
            for c in range(chunks):
                lo, hi = c * CHUNK_TOKENS, min(L, (c + 1) * CHUNK_TOKENS)
                loss, n = _word2vec_chunk(model, stream, keep, table, cfg, g, lo, hi, done=epoch * L, total=cfg.epochs * L)
                loss_sum, examples = loss_sum + loss, examples + n
                if progress:
                    progress({"event": "train", "step": epoch * chunks + c + 1, "max_steps": cfg.epochs * chunks,
                              "train_loss": loss_sum / max(examples, 1), "lr": _word2vec_lr(cfg, epoch * L + hi, cfg.epochs * L),
                              "tokens_per_s": round(hi / max(time.perf_counter() - t_epoch, 1e-9))})
            record = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(examples, 1), 4),
                      "examples": examples, "tokens_per_s": round(L / max(time.perf_counter() - t_epoch, 1e-9))}
            _save_word2vec_epoch(model, run_dir, record)
    except KeyboardInterrupt:
        log.warning("interrupted: epochs finished so far are saved in %s; continue with --resume", run_dir)
        raise
    return {"epochs": cfg.epochs, "tokens": L, "seconds": round(time.perf_counter() - start, 1),
            "train_loss": round(loss_sum / max(examples, 1), 4)}


def _word2vec_lr(cfg: Word2VecTrainConfig, done: float, total: float) -> float:
    """The learning rate once `done` of the run's `total` corpus tokens are behind us (linear decay)."""
    return max(cfg.min_lr, cfg.lr - (cfg.lr - cfg.min_lr) * done / total)


def _word2vec_chunk(model, stream, keep, table, cfg: Word2VecTrainConfig, g: torch.Generator, lo: int, hi: int, *,
                    done: int, total: int) -> tuple[float, int]:
    """Train on tokens lo..hi of the stream (subsampled, made into examples, shuffled, batched); returns the
    summed loss and the number of examples. `done`: corpus tokens of earlier epochs, for the learning rate."""
    from nmtkit.data.datasets import TokenStream, cbow_examples, skipgram_pairs

    ids = stream.ids[lo:hi]
    kept = torch.rand(hi - lo, generator=g) < keep[ids]
    part = TokenStream(ids[kept], stream.sentences[lo:hi][kept])
    if len(part) < 2:
        return 0.0, 0
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
    batch_size = cfg.batch_size or (2048 if model.cfg.arch == "skipgram" else 512)
    loss_sum = 0.0
    for b in range(0, n, batch_size):
        e = min(n, b + batch_size)
        lr = _word2vec_lr(cfg, done + lo + (hi - lo) * b / n, total)
        noise_rows = noise[b // NOISE_GROUP : -(-e // NOISE_GROUP)]
        if counts is None:
            loss_sum += model.sgd_step(inputs[b:e], truth[b:e], noise_rows, cfg.negative, lr)
        else:
            loss_sum += model.sgd_step(inputs[starts[b] : starts[e]], truth[b:e], noise_rows, cfg.negative, lr,
                                       counts[b:e])
    return loss_sum, n


def _save_word2vec_epoch(model, run_dir: Path, record: dict[str, Any]) -> None:
    """The epoch's weights under a new name, then the state that points to them: a kill in between leaves the
    state of the epoch before, whose weights are still there."""
    name = f"{STEPS_DIR}/epoch-{record['epoch']:04d}.safetensors"
    checkpoint.save_weights(run_dir / name, model.state_dict())
    append_jsonl(run_dir / checkpoint.METRICS, {"kind": "train", **record})
    checkpoint.save_train_state(run_dir / checkpoint.TRAIN_STATE, {"epoch": record["epoch"], "weights": name})
    checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, model.state_dict())
    for old in sorted((run_dir / STEPS_DIR).glob("epoch-*.safetensors"))[:-1]:
        old.unlink()
    log.info("epoch %d: loss %.4f per example, %s tokens/s", record["epoch"], record["train_loss"],
             f"{record['tokens_per_s']:,}")
