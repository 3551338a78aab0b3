"""Data at scale: what a parallel corpus of 0.25, 1 and 4 million pairs costs `train-translator`.

    python benchmarks/scale.py --corpus ../shared/corpora/multi30k --sizes 250000 1000000 4000000 --append

The corpora are Multi30k De-En training pairs drawn with replacement (seeded), written under --work, never
committed. For each size it reports:

- sentencepiece x1: lines/s of one sentencepiece process (one thread) reading and encoding the same lines (both
  sides), the reference the first preparation is compared with (the best of --repeat runs, as for prepare:
  a shared machine's speed varies by 20% from one minute to the next);
- prepare: `nmtkit prepare` into an empty cache: the command's wall time (Python and imports included), and the
  lines/s of the preparation itself (reading, tokenizing, writing, syncing: what `nmtkit prepare --json` says)
  with its ratio to sentencepiece x1;
- first run / second run: `nmtkit train-translator --src big.de --tgt big.en -t TOK --arch transformer
  --d-model 64 --layers 1 --max-steps 2` (the first into an empty cache, so it prepares; the second reuses what
  the first prepared): wall time, time to the end of the first training step, and peak resident memory;
- tokens/s: the same model for 40 more steps (steady training throughput).

`--recipe-steps N` also runs N steps of the CPU recipe (Multi30k De-En Transformer, examples/transformer-multi30k.toml's
model, on the 29,000 original pairs) and reports its training tokens/s (the mean of the logged windows after
the first), to check that the data path leaves training speed as it was.

Peak resident memory is the largest resident set of the command's processes (`ru_maxrss` of its children,
measured by a small wrapper), the main process in practice. `--src-root` runs another checkout's `src` (the
"before" figures come from the commit before issue 18, which has no `prepare` and no cache).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import add_append_flag, command, publish  # noqa: E402


def measured(argv: list[str], env: dict[str, str], watch: Path | None = None) -> dict:
    """Run a command; its wall time, peak resident memory (MB) and, when `watch` is given, the seconds until that
    file appeared (metrics.jsonl: written at the end of the first training step)."""
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    seen: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if watch is not None:
        def poll() -> None:
            while proc.poll() is None and not watch.exists():
                time.sleep(0.02)
            if watch.exists():
                seen["first_step"] = time.perf_counter() - start
        threading.Thread(target=poll, daemon=True).start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{err[-3000:]}")
    return {"wall": wall, "rss_mb": int(err.strip().splitlines()[-1]) / 1024, "out": out, **seen}


def make_corpus(corpus: Path, n: int, folder: Path, seed: int) -> tuple[Path, Path]:
    """n pairs drawn with replacement from the corpus's training pairs (the same n and seed: the same files)."""
    import numpy as np

    src, tgt = folder / f"pairs-{n}.de", folder / f"pairs-{n}.en"
    if src.exists() and tgt.exists():
        return src, tgt
    de = (corpus / "train.de").read_text(encoding="utf-8").splitlines()
    en = (corpus / "train.en").read_text(encoding="utf-8").splitlines()
    pick = np.random.default_rng(seed).integers(0, len(de), n)
    for path, lines in ((src, de), (tgt, en)):
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for start in range(0, n, 100_000):
                f.write("".join(lines[i] + "\n" for i in pick[start : start + 100_000]))
        path.with_suffix(".tmp").replace(path)
    return src, tgt


def sentencepiece_one_process(tokenizer: Path, files: tuple[Path, Path]) -> float:
    """Lines/s of one sentencepiece process with one thread reading and encoding the files in chunks."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    lines, start = 0, time.perf_counter()
    for path in files:
        with open(path, encoding="utf-8") as f:
            chunk: list[str] = []
            for line in f:
                chunk.append(line.rstrip("\n"))
                if len(chunk) == 10_000:
                    sp.Encode(chunk, num_threads=1)
                    lines, chunk = lines + len(chunk), []
            sp.Encode(chunk, num_threads=1)
            lines += len(chunk)
    return lines / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "multi30k")
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nmtkit-scale")
    ap.add_argument("--src-root", type=Path, default=ROOT / "src", help="the nmtkit source tree to run")
    ap.add_argument("--label", default="after", help="what the rows are called (before/after)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="sentencepiece x1 and prepare: the best of this many runs.")
    ap.add_argument("--recipe-steps", type=int, default=0, help="Also measure the CPU recipe's tokens/s over this many steps.")
    add_append_flag(ap)
    args = ap.parse_args()
    if not (args.corpus / "train.de").is_file():
        raise SystemExit(f"{args.corpus}: no Multi30k here (train.de, train.en); give --corpus")
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(args.src_root.resolve())}
    nmtkit = [sys.executable, "-m", "nmtkit"]
    tokenizer = args.work / "tokenizer"
    if not tokenizer.is_dir():
        measured([*nmtkit, "train-tokenizer", str(args.corpus / "train.de"), str(args.corpus / "train.en"),
                  "--vocab-size", "8000", "-o", str(tokenizer)], env)
    has_prepare = "prepare" in measured([*nmtkit, "--help"], env)["out"]
    rows = []
    for n in args.sizes:
        files = make_corpus(args.corpus, n, args.work, args.seed)
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=args.work))
        run_env = {**env, "NMTKIT_CACHE": str(cache)}
        row = {"pairs": n, "sp1": max(sentencepiece_one_process(tokenizer, files) for _ in range(args.repeat))}
        data = ["--src", str(files[0]), "--tgt", str(files[1]), "-t", str(tokenizer)]
        if has_prepare:
            preps = [measured([*nmtkit, "prepare", *data, "--cache-dir", str(cache / f"explicit-{k}"), "--json"], run_env)
                     for k in range(args.repeat)]
            row["prepare"] = max((p | {"lines_per_s": json.loads(p["out"])["lines_per_s"]} for p in preps),
                                 key=lambda p: p["lines_per_s"])
        train = [*nmtkit, "train-translator", *data, "--arch", "transformer", "--d-model", "64", "--layers", "1"]
        run = args.work / f"run-{n}"
        for name in ("first", "second"):
            shutil.rmtree(run, ignore_errors=True)
            row[name] = measured([*train, "--max-steps", "2", "-o", str(run)], run_env, watch=run / "metrics.jsonl")
        shutil.rmtree(run)
        measured([*train, "--max-steps", "42", "--log-every", "20", "-o", str(run)], run_env)
        steady = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        row["tokens_per_s"] = [r["tokens_per_s"] for r in steady if r.get("kind") == "train"][-1]
        rows.append(row)
        print(json.dumps({k: ({x: y for x, y in v.items() if x != "out"} if isinstance(v, dict) else v)
                          for k, v in row.items()}), file=sys.stderr)
        shutil.rmtree(cache)
        shutil.rmtree(run)

    recipe = None
    if args.recipe_steps:
        run = args.work / "run-recipe"
        shutil.rmtree(run, ignore_errors=True)
        measured([*nmtkit, "train-translator", "--src", str(args.corpus / "train.de"), "--tgt", str(args.corpus / "train.en"),
                  "-t", str(tokenizer), "--arch", "transformer", "--d-model", "256", "--heads", "4", "--layers", "3",
                  "--ff-dim", "1024", "--dropout", "0.1", "--label-smoothing", "0.1", "--max-tokens", "4096",
                  "--max-steps", str(args.recipe_steps), "--log-every", "10", "-o", str(run)], env)
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["tokens_per_s"] for r in logged if r.get("kind") == "train" and r["step"] > 10]
        recipe = sum(speeds) / len(speeds)
        shutil.rmtree(run)

    def seconds(r: dict, key: str) -> str:
        return f"{r[key]:.1f} s" if key in r else "-"

    lines = [f"### Data at scale ({args.label}): {datetime.date.today()}", "",
             f"Command: `{command()}`" + (" (source tree: the commit before issue 18)" if args.label == "before" else ""),
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; Python {platform.python_version()}.", "",
             "| pairs | sentencepiece x1 lines/s | prepare: command wall, lines/s (ratio) | first run: wall, to step 1, peak RSS "
             "| second run: wall, to step 1, peak RSS | tokens/s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        prep = r.get("prepare")
        prepared = (f"{prep['wall']:.1f} s, {prep['lines_per_s']:,.0f} ({prep['lines_per_s'] / r['sp1']:.2f}x)"
                    if prep else "-")
        runs = [f"{r[k]['wall']:.1f} s, {seconds(r[k], 'first_step')}, {r[k]['rss_mb']:,.0f} MB" for k in ("first", "second")]
        lines.append(f"| {r['pairs']:,} | {r['sp1']:,.0f} | {prepared} | {runs[0]} | {runs[1]} | {r['tokens_per_s']:,} |")
    if recipe:
        lines += ["", f"CPU recipe (Multi30k De-En Transformer d-model 256, 3+3 layers, 4,096 tokens a batch), steps 11-"
                      f"{args.recipe_steps}: {recipe:,.0f} training tokens/s."]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
