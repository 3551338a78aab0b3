"""Downstream quality: pretrain one GPT on text from ../shared/corpora, then fine-tune it, and the same
architecture from scratch, on SST-2 (classify), SQuAD (qa) and Code Alpaca (generate).

    python benchmarks/finetune.py --mode cpu --corpora ../shared/corpora --out runs/finetune
    python benchmarks/finetune.py --mode gpu --corpora .data --out $OUT/finetune     # on the lent GPU

Pretraining text (one document each, written to --out): the SST-2 training sentences (labels dropped), the
SQuAD training contexts, the Code Alpaca training instructions, inputs and outputs, and tinyshakespeare; no
validation text. Every run goes through `python -m nmtkit` as a user would; the script prints a Markdown
table of the held-out metrics: SST-2 valid accuracy, SQuAD valid EM/F1, Code Alpaca valid chrF/BLEU of greedy
responses. Logs go to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPES = {  # pretraining model and steps; fine-tuning steps per task
    "cpu": {"model": ["--vocab-size", "2000", "--d-model", "128", "--heads", "4", "--layers", "4", "--block-size", "256",
                      "--dropout", "0.1"],
            "pretrain": ["--max-steps", "800", "--batch-size", "16", "--eval-every", "400", "--lr", "1e-3"],
            "classify": ["--max-steps", "3000", "--batch-size", "32", "--eval-every", "500", "--max-len", "96"],
            "qa": ["--max-steps", "800", "--batch-size", "16", "--eval-every", "400", "--max-len", "256", "--stride", "64"],
            "generate": ["--max-steps", "400", "--batch-size", "16", "--eval-every", "200", "--max-len", "256",
                         "--max-new-tokens", "96"]},
    "gpu": {"model": ["--vocab-size", "8000", "--d-model", "512", "--heads", "8", "--layers", "8", "--block-size", "512",
                      "--dropout", "0.1"],
            "pretrain": ["--max-steps", "6000", "--batch-size", "64", "--eval-every", "1000", "--lr", "6e-4", "--compile"],
            "classify": ["--max-steps", "3000", "--batch-size", "64", "--eval-every", "250", "--max-len", "128",
                         "--patience", "4"],
            "qa": ["--max-steps", "6000", "--batch-size", "32", "--eval-every", "500", "--max-len", "384", "--stride", "128",
                   "--patience", "4"],
            "generate": ["--max-steps", "1500", "--batch-size", "32", "--eval-every", "250", "--max-len", "512",
                         "--max-new-tokens", "200", "--patience", "4"]},
}
TASKS = {  # task: (train file, valid file, extra flags, metrics shown)
    "classify": ("sst2/train.tsv", "sst2/valid.tsv", ["--text-column", "sentence"], ("accuracy", "macro_f1")),
    "qa": ("squad/train.json", "squad/valid.json", [], ("exact_match", "f1")),
    "generate": ("code_alpaca/train.json", "code_alpaca/valid.json", [], ("chrf", "bleu")),
}


def nmtkit(*args: str, log: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as err:
        err.write("$ nmtkit " + " ".join(args) + "\n")
        err.flush()
        out = subprocess.run([sys.executable, "-m", "nmtkit", *args], env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    if out.returncode:
        raise SystemExit(f"nmtkit {' '.join(args)} failed (exit {out.returncode}); see {log}")
    return out.stdout


def pretraining_text(corpora: Path, out: Path) -> Path:
    """Training-split text only: SST-2 sentences, SQuAD contexts, Code Alpaca records, tinyshakespeare."""
    sys.path.insert(0, str(ROOT / "src"))
    from nmtkit.data.corpora import read_instructions, read_squad, read_texts

    docs = ["\n".join(read_texts(corpora / "sst2" / "train.tsv", "sentence"))]
    docs += list(dict.fromkeys(ex.context for ex in read_squad(corpora / "squad" / "train.json")))
    docs += ["\n".join(x for x in (ex.instruction, ex.input, ex.output) if x) for ex in read_instructions(corpora / "code_alpaca" / "train.json")]
    docs.append((corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    path = out / "pretrain.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=list(RECIPES), default="gpu")
    ap.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmark-runs/finetune"))
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--no-scratch", action="store_true", help="Skip the from-scratch runs.")
    args = ap.parse_args()
    recipe, corpora, out = RECIPES[args.mode], Path(args.corpora).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NMTKIT_DATA"] = str(out / "data")
    log = out / "log.txt"
    for name in ("sst2", "squad", "code_alpaca"):
        nmtkit("download", name, "--from", str(corpora / name), log=log)
    text = pretraining_text(corpora, out)
    gpt = out / "gpt"
    t = time.perf_counter()
    if not (gpt / "model.safetensors").exists():
        nmtkit("pretrain", str(text), "--column", "text", "-o", str(gpt), "--valid-fraction", "0.02",
               *recipe["model"], *recipe["pretrain"], log=log)
    rows = [f"| pretrain (SST-2 + SQuAD + Code Alpaca training text, tinyshakespeare) | - | "
            f"{json.loads((gpt / 'run.json').read_text())['training'][-1]['best']} | {time.perf_counter() - t:.0f} s |"]
    for task in args.tasks:
        train, valid, extra, metrics = TASKS[task]
        for init in (["pretrained"] + ([] if args.no_scratch else ["scratch"])):
            run_dir = out / f"{task}-{init}"
            t = time.perf_counter()
            if not (run_dir / "model.safetensors").exists():
                nmtkit("finetune", "--task", task, "-m", str(gpt), *(["--from-scratch"] if init == "scratch" else []),
                       "--train", train, "--valid", valid, *extra, *recipe[task], "-o", str(run_dir), log=log)
            seconds = time.perf_counter() - t
            result = json.loads(nmtkit("evaluate", "-m", str(run_dir), "--data", valid, "--json", log=log))
            shown = ", ".join(f"{m} {result[m]}" for m in metrics)
            rows.append(f"| {task} | {init} | {shown} | {seconds:.0f} s |")
    print(f"\nDownstream ({args.mode} recipe), {datetime.date.today()}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| task | weights | held-out result | time |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
