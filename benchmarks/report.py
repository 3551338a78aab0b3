"""What every benchmark script does with its result: print the Markdown table, and with --append add it to
docs/benchmarks.md (the table carries its command, machine and date)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def add_append_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--append", action="store_true", help="Append the table to docs/benchmarks.md.")


def command() -> str:
    """The command line that ran this script, without --append."""
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *(a for a in sys.argv[1:] if a != "--append")])


def publish(table: str, append: bool) -> None:
    print(table)
    if append:
        with open(DOCS, "a", encoding="utf-8") as f:
            f.write("\n" + table.strip("\n") + "\n")
