"""The table of `benchmarks/gpu.sh`: one row per check, with its figure and its target, from the work folder
that gpu.sh fills (each step's exit status, output and log, and the runs' run.json and metrics.jsonl).

    python benchmarks/gpu_report.py /tmp/nmtkit-gpu
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def main() -> None:
    work = Path(sys.argv[1])
    status = {}
    for line in (work / "status.txt").read_text().splitlines() if (work / "status.txt").is_file() else []:
        name, rc, seconds = line.split()
        status[name] = (int(rc), int(seconds))
    rows: list[tuple[str, str, str]] = []

    def outcome(name: str) -> str | None:
        """None when the step succeeded, else what happened to it."""
        if name not in status:
            return "not run"
        rc, seconds = status[name]
        if rc == 0:
            return None
        return f"timed out after {seconds} s" if rc in (124, 137) else f"failed (exit {rc}, see {name}.log)"

    environment = (work / "environment.out").read_text().strip() if (work / "environment.out").is_file() else "?"

    tests = (work / "tests.out").read_text().strip().splitlines() if (work / "tests.out").is_file() else []
    rows.append(("GPU tests (`pytest -m gpu tests/test_gpu.py`)",
                 tests[-1] if tests else (outcome("tests") or "no output"), "all pass"))

    targets = {"de-en": "BLEU tok+lc >= 40 in <= 5 min", "en-de": "BLEU tok+lc >= 38 in <= 5 min"}
    for pair, target in targets.items():
        name = f"m30k-{pair}"
        run = read_json(work / "keep" / name / "run.json") or {}
        training = (run.get("training") or [{}])[-1]
        best = training.get("best") or {}
        evaluation = read_json(work / f"translate-{pair}-beam5.out") or {}
        bleu = evaluation.get("scores", {}).get("bleu", {}).get("score")
        result = outcome(name) or (
            f"test2016 BLEU tok+lc {bleu} (beam 5), valid BLEU {best.get('bleu')} (greedy); {training.get('steps')} "
            f"steps, best at {training.get('best_step')}, {training.get('seconds', 0) / 60:.1f} min (GPU shared "
            "with the other quality runs)")
        rows.append((f"Multi30k Transformer {pair}", result, target))
        for beam, goal in ((5, "<= 2 s"), (1, "<= 1 s")):
            step = f"translate-{pair}-beam{beam}"
            data = read_json(work / f"{step}.out") or {}
            figure = outcome(step) or f"{data.get('seconds')} s for {data.get('sentences')} sentences (evaluate, alone on the device)"
            rows.append((f"decoding {pair}, beam {beam}", figure, goal if pair == "de-en" else "-"))

    first = (work / "first-line.out").read_text().strip() if (work / "first-line.out").is_file() else ""
    rows.append(("translate: first line out, input still open", outcome("first-line") or first[:60] or "no line",
                 "before the input ends"))

    chars = read_json(work / "keep" / "shakespeare" / "run.json") or {}
    training = (chars.get("training") or [{}])[-1]
    best = training.get("best") or {}
    rows.append(("tinyshakespeare (nanoGPT's shakespeare-char)", outcome("shakespeare") or
                 f"{best.get('bits_per_char')} bits/char at step {training.get('best_step')} "
                 f"({best.get('elapsed_s')} s into training; {training.get('steps')} steps in {training.get('seconds')} s)",
                 "<= 2.05 bits/char within 3 minutes"))

    speed = (work / "training-speed.out").read_text() if (work / "training-speed.out").is_file() else ""
    for line in speed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("model", "---"):
            goal = {"transformer-base": "MFU >= 40%; loop >= 0.9x bare", "gpt2-small": "MFU >= 50%; loop >= 0.9x bare"}
            rows.append((f"fixed shapes: {cells[0]} ({cells[2]})", f"{cells[3]} tokens/s, MFU {cells[5]}, loop / bare "
                         f"{cells[8]}, {cells[6]}", goal.get(cells[0], "-")))
    if not speed:
        rows.append(("fixed shapes (training_speed.py)", outcome("training-speed") or "no output", "-"))

    records = [r for r in read_jsonl(work / "keep" / "bucketed" / "metrics.jsonl") if r.get("kind") == "train"]
    windows = [r for r in records if r["step"] > (records[1]["step"] if len(records) > 1 else 0)]  # after the first
    if windows:
        mfu = sum(r.get("mfu", 0.0) for r in windows) / len(windows)
        tps = sum(r["tokens_per_s"] for r in windows) / len(windows)
        figure = f"{tps:,.0f} tokens/s, MFU {mfu:.1%} (steps {windows[0]['step']}-{windows[-1]['step']}, logging windows)"
    else:
        figure = outcome("bucketed") or "no training records"
    rows.append(("real bucketed batches: Transformer-base on Multi30k", figure, "MFU >= 35%"))

    print(f"### GPU checks ({environment}; {datetime.date.today()})\n")
    print("Command: `bash benchmarks/gpu.sh`.\n")
    print("| check | result | target |\n| --- | --- | --- |")
    for check, result, target in rows:
        print(f"| {check} | {re.sub(r'[|]', '/', str(result))} | {target} |")
    print("\nSteps (exit status, seconds): " + ", ".join(f"{k} {rc} ({s} s)" for k, (rc, s) in status.items()))
    lora = work / "lora.out"  # benchmarks/lora.py's own table
    if outcome("lora") is None and lora.is_file() and lora.read_text().strip():
        print("\n#### Full fine-tuning vs LoRA on GPT-2's shape (`benchmarks/lora.py`)\n\n" + lora.read_text().strip())


if __name__ == "__main__":
    main()
