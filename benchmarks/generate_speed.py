"""GPT generation with the key/value cache vs without it: the same model continues the same prompt greedily
for --new-tokens tokens, once through `nmtkit.decoding.sample_stream` (the prompt fed once, then one token per
step, as `nmtkit generate` does) and once by running the whole sequence through the model at every step.

    python benchmarks/generate_speed.py --device cpu --new-tokens 512

The model is the nanoGPT shakespeare-char size (6 layers, 384 wide, 6 heads) with a context long enough for
prompt + new tokens, so neither side slides its window; its weights are random (speed does not depend on
them), and both sides must produce the same tokens. Prints a Markdown table; --append adds it to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402


@torch.inference_mode()
def without_cache(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    seq = prompt
    for _ in range(new_tokens):
        token = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, token], 1)
    return seq[0, prompt.size(1) :].tolist()


def with_cache(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    from nmtkit import decoding

    steps = decoding.sample_stream(model, prompt, max_new_tokens=new_tokens, temperature=0.0,
                                   context=model.cfg.block_size)
    return [int(token[0]) for token in steps]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    add_append_flag(ap)
    args = ap.parse_args()
    from nmtkit.models.gpt import GPT, GPTConfig
    from nmtkit.models.layers import for_cpu_inference

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, block_size=args.prompt_tokens + args.new_tokens, d_model=384, heads=6, layers=6,
                    dropout=0.0)
    model = GPT(cfg).to(device).eval()
    model = for_cpu_inference(model) if device.type == "cpu" else model  # as `nmtkit generate` loads a run
    prompt = torch.randint(4, cfg.vocab_size, (1, args.prompt_tokens), device=device)
    with_cache(model, prompt, 8)  # warm up both paths
    without_cache(model, prompt, 8)
    seconds, outputs = {}, {}
    for name, fn in (("with the cache", with_cache), ("without the cache", without_cache)):
        start = time.perf_counter()
        outputs[name] = fn(model, prompt, args.new_tokens)
        seconds[name] = time.perf_counter() - start
    if outputs["with the cache"] != outputs["without the cache"]:
        sys.exit("the two paths generated different tokens")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    speedup = seconds["without the cache"] / seconds["with the cache"]
    publish("\n".join([
        f"`{command()}`: {where}, torch {torch.__version__}, {datetime.date.today()}; GPT 6 x 384, 6 heads, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, prompt {args.prompt_tokens} tokens, greedy; "
        "the same tokens from both paths",
        "",
        "| generation | seconds | new tokens/s | speed-up |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {seconds[name]:.2f} | {args.new_tokens / seconds[name]:,.0f} | "
          f"{(speedup if name == 'with the cache' else 1.0):.1f}x |" for name in seconds),
    ]), args.append)


if __name__ == "__main__":
    main()
