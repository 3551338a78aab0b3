"""Training throughput, MFU and peak memory of nmtkit's own training loop (`nmtkit.training.train`: bf16
autocast on GPU, clipping, schedule, logging) on fixed-size random batches, so the FLOP count is exact.

    python benchmarks/training_speed.py --model transformer-base --device cuda --compile --append
    python benchmarks/training_speed.py --model gpt2-small --device cuda --compile --append
    python benchmarks/training_speed.py --model transformer-cpu gpt-cpu --device cpu --steps 12

MFU counts the PaLM-appendix-B FLOPs (6 N per token plus 12 L T D for attention; `flops_per_token` of each
model) over the device's measured bf16 matrix-multiply peak (`nmtkit.runtime.measured_peak_flops`). On a CPU
the table gives the achieved FLOP/s over a measured float32 matrix-multiply peak instead. Peak memory: the
most CUDA memory allocated, or the process's peak resident set on a CPU. The first logging window (start-up,
compilation) is left out; the others are averaged. "Loop / bare": nmtkit's loop against the bare step on the
same model and batches (already on the device; forward, backward, clipping and AdamW, nothing else), both in
steady state. The GPT runs with the attention kernels `pretrain` uses (fixed shapes, `train(fixed_shapes=True)`),
the translator with those of `train-translator`. Prints a Markdown table; --append adds it to
docs/benchmarks.md with the command, machine and date. `--profile DIR` also writes, for each model, the
torch.profiler table of five training steps (the operators that take the time), to see what to fix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402

# name: (kind, model settings, sentence lengths (source, target) or the GPT's window, tokens per batch)
PRESETS = {
    "transformer-base": ("translator", dict(src_vocab=8000, tgt_vocab=8000, d_model=512, heads=8, encoder_layers=6,
                                            decoder_layers=6, ff_dim=2048, dropout=0.1), (32, 32), 32768),
    "transformer-cpu": ("translator", dict(src_vocab=8000, tgt_vocab=8000, d_model=256, heads=4, encoder_layers=3,
                                           decoder_layers=3, ff_dim=1024, dropout=0.1), (24, 24), 4096),
    "gpt2-small": ("gpt", dict(vocab_size=50304, block_size=1024, d_model=768, heads=12, layers=12, dropout=0.0),
                   (1024,), 16 * 1024),
    "gpt-cpu": ("gpt", dict(vocab_size=65, block_size=256, d_model=384, heads=6, layers=6, dropout=0.0), (256,), 16 * 256),
}


def cpu_peak_flops() -> float:
    """float32 matrix-multiply FLOP/s of this CPU with torch's threads: the best of three timings."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 2 * 2048**3 * 4 / (time.perf_counter() - start))
    return best


def build(name: str, device: torch.device, max_tokens: int | None):
    """The model, its batches (random ids of fixed lengths), its objective and its FLOPs per token."""
    from nmtkit.data.batching import LMBatch, collate_pairs
    from nmtkit.models.gpt import GPT, GPTConfig
    from nmtkit.models.transformer import Transformer, TransformerConfig
    from nmtkit.objectives import lm_loss, seq2seq_loss

    kind, settings, lengths, tokens = PRESETS[name]
    tokens = max_tokens or tokens
    g = torch.Generator().manual_seed(0)
    if kind == "gpt":
        model = GPT(GPTConfig(**settings))
        rows = tokens // lengths[0]
        batches = []
        for _ in range(4):
            seq = torch.randint(4, settings["vocab_size"], (rows, lengths[0] + 1), generator=g)
            batches.append(LMBatch(seq[:, :-1], seq[:, 1:]))
        return model, batches, lm_loss(), model.flops_per_token(), f"{rows} x {lengths[0]}"
    model = Transformer(TransformerConfig(**settings))
    src_len, tgt_len = lengths
    rows = tokens // max(src_len, tgt_len + 1)
    batches = []
    for _ in range(4):
        src = torch.randint(4, settings["src_vocab"], (rows, src_len - 1), generator=g).tolist()
        tgt = torch.randint(4, settings["tgt_vocab"], (rows, tgt_len), generator=g).tolist()
        batches.append(collate_pairs([s + [3] for s in src], [[2] + t + [3] for t in tgt]))
    flops = model.flops_per_token(src_len, tgt_len + 1)
    return model, batches, seq2seq_loss(0.1, 1.0), flops, f"{rows} x ({src_len} + {tgt_len + 1})"


def profile(name: str, device: torch.device, max_tokens: int | None, out: Path) -> None:
    """Five training steps (forward, loss, backward, AdamW) under torch.profiler; the operator table to a file."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from nmtkit.runtime import autocast

    model, batches, objective, _, _ = build(name, device, max_tokens)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def step(batch) -> None:
        with autocast(device):
            loss, items = objective(model, batch.to(device))
        (loss / items).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    with profiler(activities=activities) as prof:
        for i in range(5):
            step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))


def measure(name: str, device: torch.device, steps: int, window: int, compile_: bool, max_tokens: int | None) -> dict:
    from nmtkit.training import TrainConfig, train

    model, batches, objective, flops, shape = build(name, device, max_tokens)
    params = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(max_steps=steps, eval_every=10**9, log_every=window, warmup_steps=max(steps // 4, 1),
                          max_tokens=batches[0].tokens, compile=compile_, clip_norm=1.0, keep_checkpoints=1)
        train(model, objective, lambda epoch: batches * (steps // len(batches) + 1), cfg=cfg, run_dir=run_dir,
              device=device, flops_per_token=flops, fixed_shapes=PRESETS[name][0] == "gpt")
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["kind"] == "train" and r["step"] > window]
    tps = sum(r["tokens_per_s"] for r in kept) / len(kept)
    if device.type == "cuda":
        mfu = sum(r["mfu"] for r in kept) / len(kept)
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB allocated"
    else:
        mfu = tps * flops / cpu_peak_flops()
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB resident"
    bare = bare_tokens_per_s(name, device, steps, window, compile_, max_tokens)
    return {"model": name, "params": params, "batch": shape, "tokens_per_s": tps,
            "tflops": tps * flops / 1e12, "mfu": mfu, "memory": memory, "bare": bare}


def bare_tokens_per_s(name: str, device: torch.device, steps: int, window: int, compile_: bool,
                      max_tokens: int | None) -> float:
    """Tokens/s of the plainest training step on the same model and batches (on the device before timing):
    autocast forward, backward, clipping, AdamW; the steps after the first window, timed between two syncs."""
    from nmtkit.runtime import attention_shapes, autocast

    model, batches, objective, _, _ = build(name, device, max_tokens)
    model.to(device).train()
    net = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    on_device = [b.to(device) for b in batches]

    def step(batch) -> None:
        with autocast(device), attention_shapes(device, fixed=PRESETS[name][0] == "gpt"):
            loss, items = objective(net, batch)
            (loss / items).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(window):
        step(on_device[i % len(on_device)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(window, steps):
        step(on_device[i % len(on_device)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (steps - window) * batches[0].tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", nargs="+", choices=sorted(PRESETS), default=["transformer-cpu"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=40, help="Optimizer steps in all.")
    ap.add_argument("--window", type=int, default=0, help="Steps per logging window (default: steps / 4).")
    ap.add_argument("--max-tokens", type=int, help="Tokens per batch (default: the preset's).")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (GPU).")
    add_append_flag(ap)
    ap.add_argument("--profile", type=Path, help="Also write each model's torch.profiler table into this folder.")
    args = ap.parse_args()
    device = torch.device(args.device)
    window = args.window or max(args.steps // 4, 1)
    rows = []
    for name in args.model:  # each in a fresh process, so its peak memory is its own
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(measure, name, device, args.steps, window, args.compile, args.max_tokens).result())
    for name in args.model if args.profile else []:
        profile(name, device, args.max_tokens, args.profile)

    if device.type == "cuda":
        where, of = torch.cuda.get_device_name(device), "MFU (of measured bf16 matmul peak)"
    else:
        where, of = f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads", \
                    "share of measured fp32 matmul peak"
    table = (f"\n### Training throughput and MFU, {where} ({datetime.date.today()})\n\n"
             f"Command: `{command()}`. torch {torch.__version__}; {'bf16 autocast' if device.type == 'cuda' else 'float32'}"
             f"{', torch.compile' if args.compile else ''}; steps {window + 1}-{args.steps} averaged.\n\n"
             f"| model | parameters | batch (sentences x tokens) | tokens/s | model TFLOP/s | {of} | peak memory "
             "| bare step tokens/s | loop / bare |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
             + "".join(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.2f} "
                       f"| {r['mfu']:.1%} | {r['memory']} | {r['bare']:,.0f} | {r['tokens_per_s'] / r['bare']:.2f}x |\n"
                       for r in rows))
    publish(table, args.append)


if __name__ == "__main__":
    main()
