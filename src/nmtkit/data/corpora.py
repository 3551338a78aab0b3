"""Readers: the one way every command reads data.

Plain text, line-aligned parallel files, TSV/CSV columns (named or numbered from 1), JSON and JSONL
records, SQuAD JSON, Alpaca-style instruction JSON, gzip (any of these ending in .gz), and Hugging Face
datasets. Readers stream where the format allows it and raise `DataError` with `file:line: problem` on bad
input. A line ends at "\n" (a "\r\n" ending is removed with it; a lone "\r", NUL or any other byte is part
of the line). Invalid UTF-8 is an error by default; with `on_bad_line="skip"` the line is skipped, with
`"replace"` its bad bytes become U+FFFD; either way they are counted and the count is logged when the file has
been read. What is *not* here: tokenization and batching.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal, get_args

from nmtkit.errors import DataError

log = logging.getLogger("nmtkit")

OnBadLine = Literal["error", "skip", "replace"]
ON_BAD_LINE_CHOICES = get_args(OnBadLine)
TABLE_SUFFIXES = (".tsv", ".csv")
JSON_SUFFIXES = (".json", ".jsonl")


@dataclass
class ReadStats:
    """What a reader skipped, for the caller to report."""

    skipped: int = 0
    first_skipped: list[str] = field(default_factory=list)

    def skip(self, where: str) -> None:
        self.skipped += 1
        if len(self.first_skipped) < 3:
            self.first_skipped.append(where)


def base_suffix(path: str | Path) -> str:
    """The suffix that says the format, looking through a final `.gz` (`train.tsv.gz` -> `.tsv`)."""
    path = Path(path)
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, gunzipping `.gz` transparently; a missing file is a `DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror}") from None
    if path.suffix.lower() == ".gz":
        return gzip.open(handle)  # type: ignore[return-value]
    return handle


def decode_lines(
    stream: Iterable[bytes], name: str, on_bad_line: OnBadLine = "error", stats: ReadStats | None = None,
    first_line: int = 1, report: bool = True,
) -> Iterator[str | None]:
    """Yield each line of a binary stream as text without its line ending, or `None` for a skipped line.

    Yielding `None` (instead of dropping the line) lets line-by-line writers keep one output line per input
    line. Invalid UTF-8 raises `DataError("name:line: ...")` unless `on_bad_line == "skip"`. `first_line` numbers
    the first line (a stream read in chunks); with `report` false the skipped lines are counted in `stats` only.
    """
    stats = stats if stats is not None else ReadStats()
    lineno = first_line - 1
    try:
        for lineno, raw in enumerate(stream, first_line):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if on_bad_line == "error":
                    raise DataError(
                        f"{name}:{lineno}: invalid UTF-8 (byte {exc.start + 1} of the line); "
                        "use --on-bad-line skip or replace"
                    ) from None
                stats.skip(f"{name}:{lineno}")
                yield raw.decode("utf-8", "replace") if on_bad_line == "replace" else None
    except READ_ERRORS as exc:
        raise DataError(f"{name}:{lineno + 1}: cannot read: {exc}") from None
    if report:
        report_skipped(name, stats, on_bad_line)


READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile)  # what reading a file (or a broken gzip stream) raises


def report_skipped(name: str, stats: ReadStats, on_bad_line: OnBadLine) -> None:
    """The warning that counts a file's lines skipped (or repaired) as invalid UTF-8, if there were any."""
    if stats.skipped:
        log.warning("%s: %s %d line(s) with invalid UTF-8 (first at %s)", name,
                    "replaced the bad bytes (U+FFFD) in" if on_bad_line == "replace" else "skipped", stats.skipped,
                    stats.first_skipped[0])


def read_lines(path: str | Path, on_bad_line: OnBadLine = "error", stats: ReadStats | None = None) -> Iterator[str]:
    """The lines of a text file (gzip too), streamed; skipped lines are left out."""
    with open_binary(path) as stream:
        for line in decode_lines(stream, str(path), on_bad_line, stats):
            if line is not None:
                yield line


def read_parallel(src: str | Path, tgt: str | Path, on_bad_line: OnBadLine = "error") -> Iterator[tuple[str, str]]:
    """Line-aligned pairs from two files; files of different lengths are an error naming the line. Skipped
    lines are counted and reported per file; their pairs are left out."""
    stats = (ReadStats(), ReadStats())
    for first, s_block, t_block in parallel_line_blocks(src, tgt):
        yield from decode_pairs(first, s_block, t_block, (str(src), str(tgt)), on_bad_line, stats)
    for name, side in zip((src, tgt), stats):
        report_skipped(str(name), side, on_bad_line)


def parallel_line_blocks(src: str | Path, tgt: str | Path, size: int = 10_000) -> Iterator[tuple[int, bytes, bytes]]:
    """The two files' raw bytes, `size` whole lines of each at a time, with the number of each block's first
    line; files of different lengths are an error naming the line where the shorter one ends."""
    with open_binary(src) as fs, open_binary(tgt) as ft:
        first = 1
        while True:
            s_lines, t_lines = _read_lines(fs, src, first, size), _read_lines(ft, tgt, first, size)
            if len(s_lines) != len(t_lines):
                n = first - 1 + min(len(s_lines), len(t_lines))
                short, long_ = (src, tgt) if len(s_lines) < len(t_lines) else (tgt, src)
                raise DataError(f"{short}:{n + 1}: file ends after {n} lines but {long_} has more; "
                                "parallel files must have the same number of lines")
            if not s_lines:
                return
            yield first, b"".join(s_lines), b"".join(t_lines)
            first += len(s_lines)


def _read_lines(stream: IO[bytes], name: str | Path, first: int, size: int) -> list[bytes]:
    try:
        return list(itertools.islice(stream, size))
    except READ_ERRORS as exc:
        raise DataError(f"{name}:{first}: cannot read: {exc}") from None


def decode_block(block: bytes, name: str, first: int, on_bad_line: OnBadLine, stats: ReadStats) -> list[str | None]:
    """The lines of a block of whole raw lines, as `decode_lines` gives them (None for a skipped line). A block
    of valid UTF-8 without carriage returns, the usual case, is decoded in one go."""
    if b"\r" not in block:
        try:
            lines = block.decode("utf-8").split("\n")
            return lines[:-1] if block.endswith(b"\n") else lines
        except UnicodeDecodeError:
            pass
    raw = block.split(b"\n")
    raw = [line + b"\n" for line in raw[:-1]] + ([raw[-1]] if raw[-1] else [])
    return list(decode_lines(raw, name, on_bad_line, stats, first, report=False))


def decode_pairs(first: int, s_block: bytes, t_block: bytes, names: tuple[str, str], on_bad_line: OnBadLine,
                 stats: tuple[ReadStats, ReadStats]) -> list[tuple[str, str]]:
    """Blocks of line-aligned raw lines (from `parallel_line_blocks`) as text pairs; a pair with a skipped line
    goes too, so the sides stay aligned, and the skip is counted in that side's `stats`."""
    s_lines = decode_block(s_block, names[0], first, on_bad_line, stats[0])
    t_lines = decode_block(t_block, names[1], first, on_bad_line, stats[1])
    return [(s, t) for s, t in zip(s_lines, t_lines) if s is not None and t is not None]  # type: ignore[misc]


class _LineTracker:
    """Feeds decoded lines to the csv module, each with its line ending (so a quoted field that spans lines keeps
    its line breaks) and the first without a byte-order mark (what spreadsheets write before the header), while
    remembering the current line number."""

    def __init__(self, lines: Iterator[str | None]):
        self.lines = lines
        self.lineno = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.lineno += 1
            if line is not None:
                yield (line[1:] if self.lineno == 1 and line.startswith("\ufeff") else line) + "\n"


FIELD_LIMIT = 1 << 30  # the csv module's limit on one field (128 KB by default): a long text is a text


def read_table(
    path: str | Path,
    columns: list[str],
    *,
    header: bool = True,
    delimiter: str | None = None,
    on_bad_line: OnBadLine = "error",
    numbered: bool = False,
) -> Iterator[tuple[str, ...]]:
    """The chosen columns of a TSV or CSV file (by header name, or numbered from 1 as in `cut`); with `numbered`,
    each as (where, fields), where = "path:line".

    `.tsv` files are split on tabs with no quoting (as GLUE's are), `.csv` files as the csv module and
    spreadsheets read them: quoted fields may hold the delimiter, quotes and line breaks.
    """
    path = Path(path)
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    is_tsv = (delimiter or ("\t" if base_suffix(path) == ".tsv" else ",")) == "\t"
    with open_binary(path) as stream:
        tracker = _LineTracker(decode_lines(stream, str(path), on_bad_line))
        if is_tsv:
            reader = csv.reader(iter(tracker), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(iter(tracker), delimiter=delimiter or ",")
        names: list[str] = []
        if header:
            names = next(reader, [])
            if not names:
                raise DataError(f"{path}: empty file (expected a header row)")
        indices = [_column_index(c, names, path) for c in columns]
        need = max(indices) + 1
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) < need:
                    missing = columns[[i for i, j in enumerate(indices) if j >= len(row)][0]]
                    message = f"{path}:{tracker.lineno}: row has {len(row)} field(s), so column {missing!r} is missing"
                    if on_bad_line == "error":
                        raise DataError(message + "; use --on-bad-line skip to skip such rows")
                    log.warning("%s (skipped)", message)
                    continue
                fields = tuple(row[i] for i in indices)
                yield (f"{path}:{tracker.lineno}", fields) if numbered else fields  # type: ignore[misc]
        except csv.Error as exc:
            raise DataError(f"{path}:{tracker.lineno}: malformed row: {exc}") from None


def _column_index(column: str, names: list[str], path: Path) -> int:
    if column in names:
        return names.index(column)
    if column.isdigit() and int(column) >= 1:
        return int(column) - 1
    if names:
        raise DataError(f"{path}:1: no column {column!r}; columns are: {', '.join(names)}")
    raise DataError(f"{path}: column {column!r} must be a number from 1 when the file has no header row")


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """JSON objects from a JSONL file (one per line) or a JSON file holding a list of them (or `{"data": [...]}`).

    Yields `(where, record)`, `where` being `file:line` for JSONL and `file: record N` for JSON, for messages.
    """
    path = Path(path)
    if base_suffix(path) == ".jsonl":
        with open_binary(path) as stream:
            for lineno, line in enumerate(decode_lines(stream, str(path)), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                yield f"{path}:{lineno}", record
        return
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or JSONL, one object per line)")
    for i, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a {type(record).__name__}, expected a JSON object")
        yield f"{path}: record {i}", record


def load_json(path: str | Path) -> Any:
    """A whole JSON document; malformed JSON is reported with its line and column."""
    with open_binary(path) as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None


def record_field(record: dict[str, Any], name: str, where: str) -> str:
    """One string field of a record, with an error naming the record when it is missing."""
    if name not in record:
        raise DataError(f"{where}: no field {name!r}; fields are: {', '.join(map(str, record)) or '(none)'}")
    value = record[name]
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {name!r} is a {type(value).__name__}, expected text")
    return str(value)


def read_texts(
    path: str | Path, column: str | None = None, *, header: bool = True, on_bad_line: OnBadLine = "error"
) -> Iterator[str]:
    """Text from any supported file: every line of a text file, or one column/field of a table or JSON file."""
    suffix = base_suffix(path)
    if suffix in TABLE_SUFFIXES or suffix in JSON_SUFFIXES:
        if column is None:
            raise DataError(f"{path}: a {suffix[1:].upper()} file needs --column to say which column holds the text")
        if suffix in TABLE_SUFFIXES:
            return (row[0] for row in read_table(path, [column], header=header, on_bad_line=on_bad_line))
        return (record_field(rec, column, where) for where, rec in read_records(path))
    return read_lines(path, on_bad_line)


def nonempty(texts: Iterable[str], name: str) -> Iterator[str]:
    """Pass texts through, raising `DataError` if there was not a single non-blank one (an empty corpus)."""
    seen = False
    for text in texts:
        seen = seen or bool(text.strip())
        yield text
    if not seen:
        raise DataError(f"{name}: empty corpus (no non-blank text)")


# ---------------------------------------------------------------------------------------------------------
# Task formats


def read_two_columns(path: str | Path, first: str, second: str, *, header: bool = True, delimiter: str | None = None,
                     on_bad_line: OnBadLine = "error", numbered: bool = False) -> Iterator[tuple[str, str]]:
    """Pairs from two columns of a TSV/CSV file (by name, or numbered from 1) or two fields of JSON(L) records:
    (text, label) examples, or (source, target) sentence pairs; with `numbered`, each as (where, pair)."""
    suffix = base_suffix(path)
    if suffix in TABLE_SUFFIXES or delimiter:
        yield from read_table(path, [first, second], header=header, delimiter=delimiter,  # type: ignore[misc]
                              on_bad_line=on_bad_line, numbered=numbered)
    elif suffix in JSON_SUFFIXES:
        for where, rec in read_records(path):
            pair = record_field(rec, first, where), record_field(rec, second, where)
            yield (where, pair) if numbered else pair  # type: ignore[misc]
    else:
        raise DataError(f"{path}: two columns come from a TSV, CSV, JSON or JSONL file (got {suffix or 'no suffix'}; "
                        "a table of another name needs --delimiter)")


@dataclass(frozen=True)
class QAExample:
    """One SQuAD question: its context, and the answers as (text, character offset in the context)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[tuple[str, int], ...]


def read_squad(path: str | Path) -> list[QAExample]:
    """Questions from a file in the official SQuAD v1.1 format (`data` -> `paragraphs` -> `qas`)."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD format: expected an object with a 'data' list of articles")
    examples = []
    for a, article in enumerate(doc["data"], 1):
        title = str(article.get("title", ""))
        for p, para in enumerate(article.get("paragraphs", []), 1):
            where = f"{path}: article {a} ({title!r}), paragraph {p}"
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError(f"{where}: no 'context' text")
            for qa in para.get("qas", []):
                qid = str(qa.get("id", ""))
                if not isinstance(qa.get("question"), str):
                    raise DataError(f"{where}, question {qid!r}: no 'question' text")
                answers = []
                for ans in qa.get("answers", []):
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise DataError(f"{where}, question {qid!r}: an answer needs 'text' and 'answer_start'")
                    if context[start : start + len(text)] != text:
                        raise DataError(
                            f"{where}, question {qid!r}: answer {text!r} is not at character {start} of the context"
                        )
                    answers.append((text, start))
                examples.append(QAExample(qid, title, context, qa["question"], tuple(answers)))
    if not examples:
        raise DataError(f"{path}: empty corpus (no questions)")
    return examples


@dataclass(frozen=True)
class Instruction:
    """One instruction-tuning example (Alpaca style)."""

    instruction: str
    input: str
    output: str


def read_instructions(path: str | Path) -> list[Instruction]:
    """Alpaca-style records: `instruction`, optional `input`, and `output` (or `response`, as Code Alpaca has)."""
    examples = []
    for where, rec in read_records(path):
        answer_key = "output" if "output" in rec else "response"
        examples.append(
            Instruction(
                record_field(rec, "instruction", where),
                record_field(rec, "input", where) if "input" in rec else "",
                record_field(rec, answer_key, where),
            )
        )
    if not examples:
        raise DataError(f"{path}: empty corpus (no instruction records)")
    return examples


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_hf_dataset(name: str, config: str | None = None, split: str = "train", data_files: list[str] | None = None):
    """`datasets.load_dataset(name, config, split=split)`; also serves local files (`name="json"` + data_files)."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise DataError("--dataset needs the 'datasets' package: pip install datasets") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as exc:  # datasets raises many kinds (FileNotFound, ConnectionError, ValueError...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"dataset {name!r}{f' ({config})' if config else ''}, split {split!r}: {message}") from None


def hf_column(dataset, column: str, name: str) -> Iterator[str]:
    """One text column of a loaded Hugging Face dataset."""
    if column not in dataset.column_names:
        raise DataError(f"dataset {name!r}: no column {column!r}; columns are: {', '.join(dataset.column_names)}")
    for value in hf_rows(dataset, column):
        yield "" if value is None else str(value)


def hf_rows(dataset, column: str, batch_size: int = 1000) -> Iterator[Any]:
    """One column's values, read from the dataset's memory-mapped Arrow files a batch at a time (never the
    whole column in a Python list)."""
    for batch in dataset.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]

