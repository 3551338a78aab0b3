"""GPT training throughput: nmtkit's GPT vs Hugging Face transformers' GPT2LMHeadModel, same architecture,
size, batch, data and machine, both driven by the same plain PyTorch loop (AdamW, forward, loss, backward,
step), their steps taken in turn; bf16 autocast on GPU. Also nmtkit's own training loop
(`nmtkit.training.train`) on the same model.

    pip install transformers          # for this benchmark only; never an nmtkit dependency
    python benchmarks/gpt_speed.py --device cpu --steps 20
    python benchmarks/gpt_speed.py --device cuda --steps 50 --batch 64

Prints a Markdown table: tokens/s of each, and the ratio nmtkit / transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402


def interleaved_loops(models: list, batches, device, steps: int, warmup: int) -> list[float]:
    """Tokens per second of a plain training loop for each (model, logits_of), their steps taken in turn (A B A
    B ...) so that a machine that speeds up or slows down during the run weighs on all of them alike."""
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda") for m, _ in models]
    seconds = [0.0] * len(models)
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        for k, ((model, logits_of), opt) in enumerate(zip(models, optimizers)):
            model.train()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with amp:
                loss = F.cross_entropy(logits_of(model, x).float().flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                seconds[k] += time.perf_counter() - start
    return [steps * batches[0][0].numel() / s for s in seconds]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--compile", action="store_true")
    add_append_flag(ap)
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    from nmtkit.models.gpt import GPT, GPTConfig

    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = []
    for _ in range(4):
        seq = torch.randint(0, args.vocab, (args.batch, args.block + 1), device=device)
        batches.append((seq[:, :-1], seq[:, 1:]))

    ours = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.block, d_model=args.d_model, heads=args.heads,
                         layers=args.layers, dropout=0.0)).to(device)
    hf_cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.block, n_embd=args.d_model, n_layer=args.layers,
                        n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    theirs = GPT2LMHeadModel(hf_cfg).to(device)
    if args.compile:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    rates = interleaved_loops([(theirs, lambda m, x: m(input_ids=x).logits), (ours, lambda m, x: m(x))], batches,
                              device, args.steps, args.warmup)
    rows = list(zip(["transformers GPT2LMHeadModel", "nmtkit GPT"], rates))

    # nmtkit's own loop (checkpointing, logging, schedule) on the same model and batch size
    from nmtkit.data.batching import LMBatch
    from nmtkit.objectives import lm_loss
    from nmtkit.training import TrainConfig, train

    lm_batches = [LMBatch(x.cpu(), y.cpu()) for x, y in batches]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(max_steps=args.warmup + args.steps, eval_every=10**9, log_every=args.warmup + args.steps,
                          warmup_steps=0, label_smoothing=0.0, max_tokens=args.batch * args.block, clip_norm=1.0)
        fresh = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.block, d_model=args.d_model, heads=args.heads,
                              layers=args.layers, dropout=0.0))
        start = time.perf_counter()
        train(fresh, lm_loss(), lambda epoch: lm_batches, cfg=cfg, run_dir=run_dir, device=device)
        loop_tps = (args.warmup + args.steps) * args.batch * args.block / (time.perf_counter() - start)
    rows.append(("nmtkit GPT in nmtkit's training loop (incl. warmup steps, final checkpoint)", loop_tps))

    base = rows[0][1]
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    import transformers

    publish("\n".join([
        f"`{command()}`: {where}; torch {torch.__version__}; transformers {transformers.__version__}; {datetime.date.today()}",
        f"model: d_model {args.d_model}, {args.layers} layers, {args.heads} heads, block {args.block}, vocab {args.vocab}, "
        f"batch {args.batch}; parameters nmtkit {n_ours:,}, transformers {n_theirs:,}; {args.steps} timed steps",
        "",
        "| implementation | tokens/s | ratio to transformers |",
        "| --- | --- | --- |",
        *(f"| {name} | {tps:,.0f} | {tps / base:.2f} |" for name, tps in rows),
    ]), args.append)


if __name__ == "__main__":
    main()
