"""Shared fixtures: the demo corpus, a small demo tokenizer, and ../shared/corpora when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "corpora" / "demo"
SHARED = Path(os.environ.get("NMTKIT_SHARED_CORPORA", ROOT.parent / "shared" / "corpora"))


@pytest.fixture(autouse=True)
def prepared_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own cache of prepared training data (never the user's ~/.cache)."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NMTKIT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def demo_tokenizer(tmp_path_factory):
    """A 600-piece unigram tokenizer trained jointly on the demo corpus (both languages)."""
    from nmtkit.config import TokenizerConfig
    from nmtkit.data.corpora import read_lines
    from nmtkit.tokenization import train_tokenizer
    import itertools

    folder = tmp_path_factory.mktemp("tok") / "demo-600"
    lines = itertools.chain(read_lines(DEMO / "train.en"), read_lines(DEMO / "train.ko"))
    return train_tokenizer(lines, folder, TokenizerConfig(vocab_size=600, byte_fallback=True))


@pytest.fixture(scope="session")
def gpt(tmp_path_factory):
    """A tiny character GPT pretrained for 4 steps on the demo corpus's English side, through the command line."""
    from typer.testing import CliRunner

    from nmtkit.cli import app

    folder = tmp_path_factory.mktemp("gpt")
    text = write(folder / "text.txt", (DEMO / "train.en").read_text(encoding="utf-8"))
    result = CliRunner().invoke(app, [str(a) for a in (
        "pretrain", text, "--tokenizer-type", "char", "--vocab-size", "60", "--block-size", "32", "--d-model", "16",
        "--heads", "2", "--layers", "1", "--max-steps", "4", "--eval-every", "4", "-o", folder / "gpt", "--device", "cpu")])
    assert result.exit_code == 0, result.output
    return folder / "gpt"


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory):
    """Tiny data sets of each fine-tuning task (6 sentiment rows, 2 SQuAD questions, 2 instructions), repeated."""
    import json

    folder = tmp_path_factory.mktemp("tasks")
    rows = ["text\tlabel"] + [f"{t}\t{l}" for t, l in [("I am happy today", "pos"), ("this is great fun", "pos"),
                                                     ("what a lovely day", "pos"), ("I am sad today", "neg"),
                                                     ("this is awful", "neg"), ("what a terrible day", "neg")] * 4]
    squad = {"data": [{"title": "t", "paragraphs": [
        {"context": "The cat sat on the mat. The dog ran in the park.",
         "qas": [{"id": "1", "question": "Where did the cat sit?", "answers": [{"text": "on the mat", "answer_start": 12}]},
                 {"id": "2", "question": "Who ran?", "answers": [{"text": "The dog", "answer_start": 24}]}]}]}]}
    alpaca = [{"instruction": "Say hello.", "input": "", "output": "hello there"},
              {"instruction": "Repeat the word.", "input": "cat", "output": "cat cat"}] * 4
    return {"classify": write(folder / "sent.tsv", "\n".join(rows) + "\n"),
            "qa": write(folder / "squad.json", json.dumps(squad)), "generate": write(folder / "alpaca.json", json.dumps(alpaca)),
            "folder": folder}


@pytest.fixture
def shared_corpora() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference corpora not found at {SHARED} (set NMTKIT_SHARED_CORPORA to run this test)")
    return SHARED


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def error_line(result) -> str:
    """A command's error: exit 1, its last line on stderr `error: ...` (log lines may come before), no traceback."""
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in result.output
    return line


def one_line_error(result, *fragments: str) -> str:
    """`error_line`, the only error said, holding each of `fragments`."""
    line = error_line(result)
    assert not [x for x in result.stderr.strip().splitlines()[:-1] if "error" in x], result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def line_reader(stream):
    """`next_line(seconds)`: the next line of a subprocess's stdout, or None when none comes in time (a thread
    reads the lines: `select` cannot see lines already in Python's buffer)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()

    def next_line(seconds: float) -> str | None:
        try:
            return lines.get(timeout=seconds)
        except queue.Empty:
            return None

    return next_line
