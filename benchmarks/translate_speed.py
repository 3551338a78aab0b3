"""Translation speed: nmtkit's own decoder vs CTranslate2 running the same weights, side by side.

    python benchmarks/translate_speed.py -m checkpoints/bench-m30k-cpu/transformer-de-en \
        [--src ../shared/corpora/multi30k/test_2016_flickr.de] [--lines 1000] [--device cpu] [--append]

Exports the run with `nmtkit export --format ctranslate2` (float32) into a temporary folder, then translates
the same lines through the same `nmtkit.workflows.translation.translate` pipeline (tokenize, sort by length, batch,
detokenize) twice, in alternating chunks: with nmtkit's decoder (`Translator`) and with CTranslate2
(`CT2Translator`, same thread count as torch). For beam 1 and 5 and batch 1 and 32 it reports target tokens
per second of each and their ratio, and how many greedy outputs are identical. Without ctranslate2 installed (the GPU machine has none),
it reports nmtkit's figures alone. Prints a Markdown table; `--append` adds it to docs/benchmarks.md with the
command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from report import add_append_flag, command, publish  # noqa: E402


def timed(translators: list, lines: list[str], beam: int, batch: int, chunks: int = 5) -> list[tuple[list[str], float]]:
    """Each translator's outputs and seconds for `lines`, the lines cut into chunks that the translators take in
    turn (A B A B ...), so that a machine whose speed drifts during the run weighs on all of them alike."""
    from nmtkit.workflows import translation

    results = [([], 0.0) for _ in translators]
    size = -(-len(lines) // chunks)
    for i in range(0, len(lines), size):
        for k, translator in enumerate(translators):
            t = time.perf_counter()
            out = list(translation.translate(translator, lines[i : i + size], beam=beam, batch_size=batch,
                                           buffer_lines=max(batch * 8, 64)))
            results[k] = (results[k][0] + out, results[k][1] + time.perf_counter() - t)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True, help="a Transformer translator run folder")
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "corpora" / "multi30k" / "test_2016_flickr.de"))
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    add_append_flag(ap)
    args = ap.parse_args()
    import torch

    from nmtkit.workflows import translation
    from nmtkit.export import export_ctranslate2

    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
    lines = Path(args.src).read_text(encoding="utf-8").splitlines()[: args.lines]
    ours = translation.Translator(args.model, args.device)
    theirs = None
    if ctranslate2 is not None:
        out = Path(tempfile.mkdtemp(prefix="nmtkit-ct2-")) / "model"
        export_ctranslate2(args.model, out)
        theirs = translation.CT2Translator(out, args.device)
    threads = torch.get_num_threads()
    rows = []
    for beam in (1, 5):
        for batch in (1, 32):
            translators = [ours] if theirs is None else [ours, theirs]
            timed(translators, lines[:32], beam, batch, chunks=1)  # warm up
            (a, ta), *other = timed(translators, lines, beam, batch)
            ours_tps = sum(len(x) for x in ours.tok.encode(a)) / ta
            if not other:
                rows.append(f"| {beam} | {batch} | {ours_tps:,.0f} | - | - | - |")
            else:
                ((b, tb),) = other
                theirs_tps = sum(len(x) for x in ours.tok.encode(b)) / tb
                same = sum(x == y for x, y in zip(a, b))
                rows.append(f"| {beam} | {batch} | {ours_tps:,.0f} | {theirs_tps:,.0f} | "
                            f"**{ours_tps / theirs_tps:.2f}x** | {same}/{len(lines)} |")
            print(rows[-1], flush=True)
    where = torch.cuda.get_device_name(ours.device) if ours.device.type == "cuda" else platform.machine()
    machine = (f"{where}, {threads} torch threads, {args.device}, torch {torch.__version__}, "
               f"ctranslate2 {ctranslate2.__version__ if ctranslate2 else 'not installed'}")
    table = "\n".join([
        f"`{command()}`: {len(lines)} lines of {Path(args.src).name}, {datetime.date.today()}, {machine}",
        "",
        "| beam | batch | nmtkit tokens/s | CTranslate2 tokens/s | nmtkit / CTranslate2 | identical outputs |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    publish(table, args.append)


if __name__ == "__main__":
    main()
