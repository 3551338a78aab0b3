"""Translator training speed on CPU: nmtkit vs JoeyNMT 2.3, same model, data, batch size and machine, one run.

    python3 -m venv /tmp/joey && /tmp/joey/bin/pip install torch==2.13.0 joeynmt==2.3.0 importlib-metadata sentencepiece==0.2.0
    python benchmarks/joeynmt_speed.py --corpus ../shared/corpora/multi30k --joeynmt-python /tmp/joey/bin/python

JoeyNMT lives in its own virtual environment (never an nmtkit dependency) and runs as its users run it
(`python -m joeynmt train CONFIG`). Both toolkits train the same Transformer (pre-norm, ReLU, sinusoidal
positions, one embedding table shared by source, target and output; label smoothing 0.1, Adam, inverse-sqrt
warmup, clipping) on the same Multi30k De->En lines, cut into the same SentencePiece pieces (a joint unigram
model trained once by `nmtkit train-tokenizer`; JoeyNMT gets its model file and its pieces as the vocabulary),
with batches of the same padded size in tokens. Each reports its own throughput over logging windows; the
first window (start-up) is left out and the rest averaged. JoeyNMT counts target tokens per second (end of
sentence included); nmtkit counts source and target tokens, so its figure is converted to target tokens with
the target share of the training lines' tokens, and the table reports target tokens per second for both.

Prints a Markdown table; --append adds it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402

MODEL = {"d_model": 256, "heads": 4, "layers": 3, "ff_dim": 1024, "dropout": 0.1}


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def steady(windows: list[tuple[int, float]], first: int) -> float:
    """Mean throughput of the logging windows after the first `first` steps."""
    kept = [rate for step, rate in windows if step > first]
    if not kept:
        sys.exit("no logging window after the first; raise --steps")
    return sum(kept) / len(kept)


def joey_config(work: Path, sp_model: Path, vocab: Path, src: str, tgt: str, args) -> str:
    side = lambda lang: f"""
    {lang[0]}:
        lang: "{lang[1]}"
        max_length: 1000
        level: "bpe"
        voc_file: "{vocab}"
        tokenizer_type: "sentencepiece"
        tokenizer_cfg:
            model_file: "{sp_model}"
"""
    stack = lambda kind: f"""
    {kind}:
        type: "transformer"
        num_layers: {MODEL['layers']}
        num_heads: {MODEL['heads']}
        embeddings:
            embedding_dim: {MODEL['d_model']}
            scale: True
            dropout: 0.0
        hidden_size: {MODEL['d_model']}
        ff_size: {MODEL['ff_dim']}
        dropout: {MODEL['dropout']}
        layer_norm: "pre"
        activation: "relu"
"""
    return f"""name: "speed"
joeynmt_version: "2.3.0"
model_dir: "{work / 'joey-run'}"
use_cuda: False
fp16: False
random_seed: 1
data:
    train: "{work / 'data' / 'train'}"
    dev: "{work / 'data' / 'valid'}"
    dataset_type: "plain"
{side(('src', src))}{side(('trg', tgt))}
training:
    optimizer: "adam"
    adam_betas: [0.9, 0.98]
    learning_rate: 0.001
    scheduling: "warmupinversesquareroot"
    learning_rate_warmup: 400
    loss: "crossentropy"
    label_smoothing: 0.1
    normalization: "tokens"
    clip_grad_norm: 1.0
    batch_size: {args.max_tokens}
    batch_type: "token"
    epochs: 1000
    updates: {args.steps}
    validation_freq: {args.steps * 10}
    logging_freq: {args.log_every}
    eval_metrics: ["bleu"]
    early_stopping_metric: "loss"
    shuffle: True
    overwrite: True
    keep_best_ckpts: 1
testing:
    beam_size: 1
    eval_metrics: ["bleu"]
model:
    initializer: "xavier_uniform"
    embed_initializer: "xavier_uniform"
    tied_embeddings: True
    tied_softmax: True
{stack('encoder')}{stack('decoder')}"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True, help="The multi30k folder (train.de, train.en, val.de, val.en).")
    ap.add_argument("--joeynmt-python", required=True, help="The python of a virtual environment with joeynmt 2.3.0.")
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    ap.add_argument("--lines", type=int, default=8000, help="Training lines (the first ones).")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--out", type=Path, help="Keep logs and runs here (default: a temporary folder).")
    add_append_flag(ap)
    args = ap.parse_args()
    from nmtkit.tokenization import Tokenizer

    work = args.out or Path(tempfile.mkdtemp(prefix="joey-speed-"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    val = "valid" if (args.corpus / f"valid.{args.src}").is_file() else "val"
    for lang in (args.src, args.tgt):
        lines = (args.corpus / f"train.{lang}").read_text(encoding="utf-8").splitlines()[: args.lines]
        (work / "data" / f"train.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        lines = (args.corpus / f"{val}.{lang}").read_text(encoding="utf-8").splitlines()[:200]
        (work / "data" / f"valid.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    nmtkit = [sys.executable, "-m", "nmtkit"]
    env = {"PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    tok_dir = work / "tokenizer"
    if not tok_dir.is_dir():
        run([*nmtkit, "train-tokenizer", str(args.corpus / f"train.{args.src}"), str(args.corpus / f"train.{args.tgt}"),
             "--vocab-size", "8000", "-o", str(tok_dir)], log, env)
    tok = Tokenizer(tok_dir)
    (work / "vocab.txt").write_text("".join(tok.id_to_piece(i) + "\n" for i in range(len(tok))), encoding="utf-8")
    counts = {}
    for lang in (args.src, args.tgt):
        lines = (work / "data" / f"train.{lang}").read_text(encoding="utf-8").splitlines()
        counts[lang] = sum(len(ids) + 1 for ids in tok.encode(lines))  # + </s>
    target_share = counts[args.tgt] / (counts[args.src] + counts[args.tgt])

    ours = work / "nmtkit-run"
    run([*nmtkit, "train-translator", "--src", str(work / "data" / f"train.{args.src}"),
         "--tgt", str(work / "data" / f"train.{args.tgt}"), "--valid-src", str(work / "data" / f"valid.{args.src}"),
         "--valid-tgt", str(work / "data" / f"valid.{args.tgt}"), "-t", str(tok_dir), "--arch", "transformer",
         "--d-model", str(MODEL["d_model"]), "--heads", str(MODEL["heads"]), "--layers", str(MODEL["layers"]),
         "--ff-dim", str(MODEL["ff_dim"]), "--dropout", str(MODEL["dropout"]), "--lr", "1e-3", "--warmup", "400",
         "--label-smoothing", "0.1", "--clip-norm", "1.0", "--max-tokens", str(args.max_tokens),
         "--max-steps", str(args.steps), "--eval-every", str(args.steps * 10), "--log-every", str(args.log_every),
         "--device", "cpu", "-o", str(ours)], log, env)
    windows = [(r["step"], r["tokens_per_s"]) for r in map(json.loads, (ours / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"]
    ours_all = steady(windows, args.log_every)
    ours_tgt = ours_all * target_share

    config = work / "joey.yaml"
    config.write_text(joey_config(work, tok_dir / "tokenizer.model", work / "vocab.txt", args.src, args.tgt, args))
    run([args.joeynmt_python, "-m", "joeynmt", "train", str(config), "--skip-test"], log)
    pattern = re.compile(r"Step:\s+(\d+),.*Tokens per Sec:\s+(\d+)")
    theirs_tgt = steady([(int(m[1]), float(m[2])) for m in map(pattern.search, log.read_text().splitlines()) if m],
                        args.log_every)

    import torch

    cpu = platform.processor() or platform.machine()
    table = (f"\n### Training speed on CPU: nmtkit vs JoeyNMT 2.3 ({datetime.date.today()})\n\n"
             f"Command: `{command()}`. Machine: {cpu}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads. Transformer "
             f"{MODEL['layers']}+{MODEL['layers']} layers, {MODEL['d_model']} wide, {MODEL['heads']} heads, "
             f"feed-forward {MODEL['ff_dim']}; Multi30k {args.src}->{args.tgt}, first {args.lines:,} lines; batches "
             f"of {args.max_tokens} padded tokens; steps {args.log_every + 1}-{args.steps} averaged. nmtkit's "
             f"source+target figure x {target_share:.3f} (the target share of the lines' tokens).\n\n"
             "| toolkit | target tokens/s | ratio |\n| --- | --- | --- |\n"
             f"| nmtkit | {ours_tgt:,.0f} ({ours_all:,.0f} source+target) | **{ours_tgt / theirs_tgt:.2f}x** |\n"
             f"| JoeyNMT 2.3.0 | {theirs_tgt:,.0f} | 1.00x |\n")
    publish(table, args.append)
    print(f"logs: {log}", file=sys.stderr)


if __name__ == "__main__":
    main()
