"""Full fine-tuning against LoRA on the GPT-2-small shape (12 layers, 768 wide, 12 heads, 1,024 positions,
50,257 tokens: 124 M parameters): speed, trained parameters and peak memory of `nmtkit finetune --task classify`
on SST-2, each mode in a process of its own, through the command line as a user runs it.

    python benchmarks/lora.py --corpora ../shared/corpora --out runs/lora               # CPU: 20 steps each
    python benchmarks/lora.py --corpora .data --out $OUT/lora --device cuda --steps 200   # the lent GPU

The model: the real `gpt2` when it is in the local Hugging Face cache (`--model gpt2`), else a GPT-2 of that
shape with random weights written by transformers' save_pretrained (speed and memory depend on the shape only),
with a byte-level BPE tokenizer trained on the SST-2 text and filled up to 50,257 tokens. Peak memory is what
the run records (run.json): on a GPU the tensors torch allocated, on a CPU the process's peak resident size.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gpt2_small(folder: Path, corpora: Path) -> Path:
    """A GPT-2-small-shaped folder with random weights and a 50,257-token byte-level BPE tokenizer."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    if (folder / "model.safetensors").is_file():
        return folder
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpora / "sst2" / "train.tsv"), str(corpora / "squad" / "train.json")], vocab_size=50256,
              special_tokens=[])
    fill = 50256 - bpe.get_vocab_size()  # a small corpus runs out of merges: the rest are unused tokens
    bpe.add_tokens([f"<unused{i}>" for i in range(fill)])
    bpe.add_special_tokens(["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
    assert len(fast) == 50257, len(fast)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def finetune(model: str, corpora: Path, out: Path, steps: int, device: str, batch: int, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "nmtkit", "finetune", "--task", "classify", "-m", model,
            "--train", str(corpora / "sst2" / "train.tsv"), "--valid", str(corpora / "sst2" / "valid.tsv"),
            "--text-column", "sentence", "--max-len", "128", "--batch-size", str(batch), "--max-steps", str(steps),
            "--eval-every", str(steps), "--log-every", "5", "--device", device, "-o", str(out), "--overwrite", *extra]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=log, check=True)
    summary = json.loads((out / "run.json").read_text())["training"][-1]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m.get("kind") == "train"]
    rates = [m["tokens_per_s"] for m in train[1:]] or [m["tokens_per_s"] for m in train]  # the first has warm-up
    return {**summary, "tokens_per_s": sum(rates) / len(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "lora")
    ap.add_argument("--model", default=None, help="A GPT-2 folder or hub name (default: a random GPT-2-small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    model = a.model or str(gpt2_small(a.out / "gpt2-small-random", a.corpora))
    rows = []
    for name, extra in (("full", []), (f"LoRA r={a.rank} attn", ["--lora-rank", str(a.rank)]),
                        (f"LoRA r={a.rank} attn,mlp", ["--lora-rank", str(a.rank), "--lora-targets", "attn,mlp"])):
        s = finetune(model, a.corpora, a.out / name.replace(" ", "-").replace("=", ""), a.steps, a.device,
                     a.batch_size, extra)
        rows.append((name, s))
    full = rows[0][1]
    print(f"GPT-2-small shape ({'random weights' if not a.model else a.model}), SST-2 classify, max-len 128, batch "
          f"{a.batch_size}, {a.steps} steps, {a.device}, {platform.processor() or platform.machine()}, "
          f"{datetime.date.today()}\n")
    print("| fine-tuning | trained parameters | tokens/s | speed vs full | peak memory (MiB) | memory vs full | "
          "run folder |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, s in rows:
        size = sum(f.stat().st_size for f in Path(s["run"]).glob("model.safetensors")) / 2**20
        print(f"| {name} | {s['trained_parameters']:,} of {s['parameters']:,} | {s['tokens_per_s']:,.0f} | "
              f"{s['tokens_per_s'] / full['tokens_per_s']:.2f}x | {s['peak_memory_mb']:,.0f} | "
              f"{s['peak_memory_mb'] / full['peak_memory_mb']:.2f}x | {size:,.1f} MB |")


if __name__ == "__main__":
    main()
