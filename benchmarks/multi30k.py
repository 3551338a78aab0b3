"""Multi30k quality runs: rnn, attention and transformer De->En, transformer En->De; test_2016_flickr, beam 5.

    python benchmarks/multi30k.py --mode gpu --corpus ../shared/corpora/multi30k --out runs/m30k
    python benchmarks/multi30k.py --mode cpu --only transformer-de-en      # the 2-core CPU recipe

Runs the installed-or-source `nmtkit` as a user would (`python -m nmtkit` with src/ on the path), times each
training, evaluates the best checkpoint on test_2016_flickr with beam 5, and prints a Markdown table with both
BLEU flavours: detokenised sacreBLEU on true case (`tok:13a`), and tokenised lower-cased BLEU
(`--tokenize 13a --lowercase`), which is what papers on this test set report. Logs go to --out.
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

# (name, src, tgt, arch, settings per mode). GPU: sized for one H100, each run well inside 5 minutes.
COMMON = ["--label-smoothing", "0.1", "--patience", "6"]
RUNS = {
    "rnn-de-en": ("de", "en", "rnn", {
        "gpu": ["--cell", "gru", "--embed-dim", "256", "--hidden-dim", "512", "--dropout", "0.3", "--lr", "1e-3",
                "--warmup", "200", "--max-tokens", "8192", "--max-steps", "3000", "--eval-every", "250"],
        "cpu": ["--cell", "gru", "--embed-dim", "128", "--hidden-dim", "256", "--dropout", "0.2", "--lr", "1e-3",
                "--warmup", "200", "--max-tokens", "4096", "--max-steps", "300", "--eval-every", "300"]}),
    "attention-de-en": ("de", "en", "attention", {
        "gpu": ["--attention", "bahdanau", "--cell", "gru", "--embed-dim", "256", "--hidden-dim", "512",
                "--dropout", "0.3", "--lr", "1e-3", "--warmup", "200", "--max-tokens", "8192", "--max-steps", "3000",
                "--eval-every", "250"],
        "cpu": ["--attention", "bahdanau", "--cell", "gru", "--embed-dim", "128", "--hidden-dim", "256",
                "--dropout", "0.2", "--lr", "1e-3", "--warmup", "200", "--max-tokens", "4096", "--max-steps", "300",
                "--eval-every", "300"]}),
    "transformer-de-en": ("de", "en", "transformer", {
        "gpu": ["--d-model", "512", "--heads", "8", "--layers", "3", "--ff-dim", "2048", "--dropout", "0.3",
                "--lr", "1e-3", "--warmup", "1000", "--max-tokens", "8192", "--max-steps", "4000", "--eval-every", "250"],
        "cpu": ["--d-model", "256", "--heads", "4", "--layers", "3", "--ff-dim", "1024", "--dropout", "0.1",
                "--lr", "1e-3", "--warmup", "400", "--max-tokens", "4096", "--max-steps", "1100", "--eval-every", "275"]}),
    "transformer-en-de": ("en", "de", "transformer", {
        "gpu": ["--d-model", "512", "--heads", "8", "--layers", "3", "--ff-dim", "2048", "--dropout", "0.3",
                "--lr", "1e-3", "--warmup", "1000", "--max-tokens", "8192", "--max-steps", "4000", "--eval-every", "250"],
        "cpu": ["--d-model", "256", "--heads", "4", "--layers", "3", "--ff-dim", "1024", "--dropout", "0.1",
                "--lr", "1e-3", "--warmup", "400", "--max-tokens", "4096", "--max-steps", "550", "--eval-every", "550"]}),
}


def nmtkit(*args: str, log: Path | None = None, capture: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "nmtkit", *args]
    with open(log, "a") if log else open(os.devnull, "w") as err:
        err.write("$ nmtkit " + " ".join(args) + "\n")
        err.flush()
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    if out.returncode:
        raise SystemExit(f"nmtkit {' '.join(args)} failed (exit {out.returncode}); see {log}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "multi30k"))
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmark-runs/multi30k"))
    ap.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--vocab-size", default="8000")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NMTKIT_DATA"] = str(out / "data")
    log = out / "log.txt"
    nmtkit("download", "multi30k", "--from", args.corpus, log=log)
    tok = out / "tokenizer"
    if not tok.is_dir():
        nmtkit("train-tokenizer", "multi30k/train.de", "multi30k/train.en", "-o", str(tok),
               "--vocab-size", args.vocab_size, log=log)
    rows = []
    for name in args.only:
        src, tgt, arch, settings = RUNS[name]
        run = out / name
        start = time.perf_counter()
        nmtkit("train-translator", "--corpus", "multi30k", "--src-lang", src, "--tgt-lang", tgt, "--arch", arch,
               "-t", str(tok), "-o", str(run), "--device", "auto", *COMMON, *settings[args.mode], log=out / f"{name}.log")
        minutes = (time.perf_counter() - start) / 60
        test = ["--src", f"multi30k/test_2016_flickr.{src}", "--ref", f"multi30k/test_2016_flickr.{tgt}", "--beam", "5"]
        detok = json.loads(nmtkit("evaluate", "-m", str(run), *test, "--json", log=out / f"{name}.log"))
        lower = json.loads(nmtkit("evaluate", "-m", str(run), *test, "--tokenize", "13a", "--lowercase", "--json",
                                  log=out / f"{name}.log"))
        info = json.loads(nmtkit("info", str(run), "--json"))
        train = info["run"]["training"][-1]
        rows.append((name, f"{info['parameters']:,}", train["steps"], train["best_step"], f"{minutes:.1f}",
                     detok["scores"]["bleu"]["score"], lower["scores"]["bleu"]["score"], detok["scores"]["chrf"]["score"],
                     f"{detok['seconds']:.1f}"))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"Multi30k test_2016_flickr, beam 5; mode {args.mode}; {device}; torch {torch.__version__}; "
          f"{platform.python_version()}; {datetime.date.today()}")
    print("| run | parameters | steps | best step | train minutes | sacreBLEU (detok, cased) | BLEU tok+lc | chrF | test translate s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"signatures: {detok['scores']['bleu']['signature']} ; {lower['scores']['bleu']['signature']}")


if __name__ == "__main__":
    main()
