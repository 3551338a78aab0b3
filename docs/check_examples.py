"""Run the transcripts in nmtkit's Markdown and check that each command still prints what the page says.

A transcript is a fenced block whose info string is `console`. In it, a line starting with `$ ` is a command
(continued on the next line after a trailing backslash); the lines after it, up to the next command, are what it
prints. Each of those lines must appear in the command's output (stdout and stderr together, in order; other
lines may come between them), with runs of spaces counted as one and `…` standing for any text (a time, a
path). A line that is just `...` marks lines left out. A command must exit 0 unless its lines show an `error:`.

A block may need files that only a long run makes: an HTML comment just before it, `<!-- needs: PATH ... -->`,
names them (relative to the repository), and the block is skipped, saying so, when one is missing. Commands run
in the repository root, page after page (the README and the tutorial first: other pages use their runs), with
this Python's `bin` folder first on PATH (so `nmtkit` is the one installed beside it).

    python docs/check_examples.py                  # README.md, the tutorial, every other page under docs/
    python docs/check_examples.py docs/tutorial.md # one page
    python docs/check_examples.py --figures report # figures that differ are reported, not failures

Figures that come out of training (a loss, a BLEU score) are what the machine that measured them prints: another
CPU (AVX-512 or not), or another torch, trains to slightly other weights. Check them exactly where they were
measured (the default, before committing a page); elsewhere `--figures report` (what CI runs, on machines that
vary) still fails on a command that fails or a line whose words are not printed, and lists the lines printed
with other numbers.

Exit status 0 when every block that ran printed what its page says, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDS = re.compile(r"<!--\s*needs:\s*(.*?)\s*-->")


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    needs: list[str]
    steps: list[Step]


def transcripts(page: Path) -> list[Block]:
    """The console blocks of a Markdown page, with their commands and expected lines."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        match = NEEDS.search(before)
        needs = match.group(1).split() if match else []
        block = Block(page, i + 1, needs, [])
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            text = lines[i]
            if text.startswith("$ "):
                command = text[2:]
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command + "\n" + lines[i]
                block.steps.append(Step(command))
            elif block.steps and text.strip() and text.strip() != "...":
                block.steps[-1].expected.append(text)
            i += 1
        blocks.append(block)
        i += 1
    return blocks


NUMBER = re.compile(r"([0-9][0-9.,]*)")


def _pattern(expected: str, figures: bool = True) -> re.Pattern:
    """The regular expression of one expected line; with `figures` False, any number stands for its numbers."""
    parts = []
    for text in " ".join(expected.split()).split("…"):
        pieces = NUMBER.split(text)  # text, number, text, number, ..., text
        parts.append("".join(r"[0-9][0-9.,]*" if k % 2 and not figures else re.escape(piece)
                             for k, piece in enumerate(pieces)))
    return re.compile("^" + ".*".join(parts) + "$")


def missing_lines(expected: list[str], output: str, figures: bool = True) -> list[str]:
    """The expected lines not found, in order, among the output's lines (spaces collapsed)."""
    actual = [" ".join(line.split()) for line in output.split("\n")]
    at = 0
    for n, want in enumerate(expected):
        pattern = _pattern(want, figures)
        while at < len(actual) and not pattern.match(actual[at]):
            at += 1
        if at == len(actual):
            return expected[n:]
        at += 1
    return []


def run(step: Step, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", step.command], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
    )
    return done.returncode, done.stdout


def check(block: Block, env: dict[str, str], exact: bool = True) -> tuple[str | None, list[str]]:
    """What went wrong (None when the block printed what its page says), and, when figures are not `exact`, the
    expected lines whose text was printed with other figures."""
    differ: list[str] = []
    for step in block.steps:
        status, output = run(step, env)
        errors_expected = any(line.lstrip().startswith("error:") for line in step.expected)
        if status != 0 and not errors_expected:
            return f"$ {step.command}\n  exited {status}; its output ends:\n{_tail(output)}", differ
        absent = missing_lines(step.expected, output)
        if absent and (exact or missing_lines(step.expected, output, figures=False)):
            return f"$ {step.command}\n  does not print: {absent[0]!r}\n  it printed:\n{_tail(output)}", differ
        if absent:
            differ.append(f"$ {step.command.splitlines()[0]}\n  other figures than: {absent[0]!r}")
    return None, differ


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in output.rstrip("\n").split("\n")[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path,
                        help="Markdown pages (default README.md, docs/tutorial.md, then the rest of docs/)")
    parser.add_argument("--figures", choices=["exact", "report"], default="exact",
                        help="report: a line printed with other figures is reported, not a failure (a machine other "
                             "than the one that measured them: another CPU trains to slightly other weights)")
    args = parser.parse_args(argv)
    # the README (the quick start) and the tutorial first: the guide's transcripts use their runs; docs/commands.md
    # is generated usage, not transcripts
    first = [ROOT / "README.md", ROOT / "docs" / "tutorial.md"]
    rest = sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in first and p.name != "commands.md")
    pages = args.pages or first + rest
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    failed = ran = skipped = other_figures = 0
    for page in pages:
        for block in transcripts(page):
            shown = page.resolve().relative_to(ROOT) if page.resolve().is_relative_to(ROOT) else page
            where = f"{shown}:{block.line}"
            absent = [need for need in block.needs if not (ROOT / need).exists()]
            if absent:
                skipped += 1
                print(f"skip {where}: needs {', '.join(absent)}", flush=True)
                continue
            start = time.monotonic()
            problem, differ = check(block, env, exact=args.figures == "exact")
            ran += 1
            if problem:
                failed += 1
                print(f"FAIL {where}\n{problem}", flush=True)
            else:
                print(f"ok   {where} ({time.monotonic() - start:.0f} s)", flush=True)
            for line in differ:
                other_figures += 1
                print(f"     {line}", flush=True)
    print(f"{ran} transcript(s) run, {failed} failed, {skipped} skipped for want of their runs"
          + (f"; {other_figures} line(s) printed with other figures" if other_figures else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
