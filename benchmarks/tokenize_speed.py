"""`nmtkit tokenize` vs sentencepiece's own batch encode: throughput and peak memory.

    python benchmarks/tokenize_speed.py [--corpus ../shared/corpora/multi30k] [--lines 1000000]

Trains (or reuses) a joint 8000-piece unigram tokenizer on Multi30k En+De, writes a file of N lines by
repeating train.en, then measures:
  - sentencepiece: `sp.encode(lines, out_type=str, num_threads=cores)` on the lines already in memory
    (encoding alone, no I/O), in one call and in 4096-line batches (nmtkit's batch size);
  - nmtkit: `nmtkit tokenize -t TOK FILE > /dev/null`, end to end (reading, decoding, encoding, writing),
    and its peak resident memory at N/10 and N lines (flat memory: the two should be about equal).
Prints a Markdown table row set for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402


def run_nmtkit(tok: Path, data: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `nmtkit tokenize` process."""
    code = (
        "import sys, time, runpy; t=time.perf_counter(); sys.argv=['nmtkit','tokenize','-t',sys.argv[1],sys.argv[2]];\n"
        "try: runpy.run_module('nmtkit', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "sys.stderr.write(f'{time.perf_counter()-t} {int(hwm)/1024}\\n')"
    )
    with open(os.devnull, "wb") as devnull:
        out = subprocess.run([sys.executable, "-c", code, str(tok), str(data)], stdout=devnull,
                             stderr=subprocess.PIPE, text=True, check=True)
    seconds, rss = out.stderr.strip().splitlines()[-1].split()
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "multi30k"))
    ap.add_argument("--lines", type=int, default=1_000_000)
    add_append_flag(ap)
    args = ap.parse_args()
    import sentencepiece as spm

    from nmtkit.config import TokenizerConfig
    from nmtkit.data.corpora import read_lines
    from nmtkit.tokenization import train_tokenizer

    corpus = Path(args.corpus)
    work = Path(tempfile.mkdtemp(prefix="nmtkit-bench-"))
    tok_dir = work / "tok"
    t = time.perf_counter()
    train_tokenizer(
        (s for f in ("train.en", "train.de") for s in read_lines(corpus / f)), tok_dir, TokenizerConfig(vocab_size=8000)
    )
    train_s = time.perf_counter() - t
    base = (corpus / "train.en").read_text(encoding="utf-8").splitlines()
    lines = (base * (args.lines // len(base) + 1))[: args.lines]
    big, small = work / "big.txt", work / "small.txt"
    big.write_text("\n".join(lines) + "\n", encoding="utf-8")
    small.write_text("\n".join(lines[: args.lines // 10]) + "\n", encoding="utf-8")

    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    t = time.perf_counter()
    sp.encode(lines, out_type=str, num_threads=os.cpu_count())
    spm_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(lines), 4096):
        sp.encode(lines[i : i + 4096], out_type=str, num_threads=os.cpu_count())
    chunked_s = time.perf_counter() - t
    del lines
    nmt_s, rss_big = run_nmtkit(tok_dir, big)
    _, rss_small = run_nmtkit(tok_dir, small)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, sentencepiece {spm.__version__}"
    publish("\n".join([
        f"`{command()}`: {machine}, {datetime.date.today()}",
        f"train-tokenizer multi30k en+de joint unigram 8000: {train_s:.1f} s",
        "",
        "| what | lines | seconds | lines/s | ratio to sentencepiece | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| sentencepiece batch encode (in memory, no I/O) | {args.lines:,} | {spm_s:.2f} | {args.lines / spm_s:,.0f} | 1.00 | - |",
        f"| sentencepiece batch encode, 4096-line batches (in memory) | {args.lines:,} | {chunked_s:.2f} | "
        f"{args.lines / chunked_s:,.0f} | {spm_s / chunked_s:.2f} | - |",
        f"| nmtkit tokenize FILE > /dev/null (end to end) | {args.lines:,} | {nmt_s:.2f} | {args.lines / nmt_s:,.0f} | "
        f"{spm_s / nmt_s:.2f} | {rss_big:.0f} MiB (at {args.lines // 10:,} lines: {rss_small:.0f} MiB) |",
    ]), args.append)


if __name__ == "__main__":
    main()
