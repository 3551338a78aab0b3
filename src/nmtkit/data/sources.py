"""Where a command's data comes from: typed descriptions of data sources, and the texts they give.

A source is a frozen dataclass: files as given (or `NAME/FILE` of a known corpus), a split of a known corpus,
or a Hugging Face dataset. A run stores its sources in config.json (`to_dict`) and `--resume` reads them back
(`from_dict`), so a run always knows what it was trained on.

    ParallelSource  sentence pairs (translators): two line-aligned files, a known corpus split, a dataset
    TextSource      documents (GPT pretraining), texts (vocabularies, word vectors)
    TaskSource      labelled texts, SQuAD questions or instructions (fine-tuning)

Also here: the lines of line-by-line commands (`input_lines`, stdin when no file is named) and the buffers they are
worked on in (`line_chunks`: on a pipe that stays open, what has come so far), known corpus names
expanded into their files (`expand_inputs`), and the provenance of data files (`describe_files`). What is *not*
here: the readers of each format (`nmtkit.data.corpora`) and encoding (`nmtkit.data.datasets`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from nmtkit.data import corpora, registry
from nmtkit.errors import DataError
from nmtkit.files import file_sha256

log = logging.getLogger("nmtkit")


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, `NAME/FILE` of a known corpus, or a bare known corpus name (its training files)."""
    paths: list[Path] = []
    for spec in inputs:
        if not Path(spec).exists() and spec in registry.manifest():
            info = registry.corpus_info(spec)
            folder = registry.corpus_dir(spec)
            train = info.get("splits", {}).get("train")
            if train and info.get("languages"):
                paths += [folder / f"{train}.{lang}" for lang in info["languages"]]
            else:
                paths += [folder / name for name in info.get("files", {})][:1]
        else:
            paths.append(registry.resolve(spec))
    return paths


def input_lines(files: Iterable[str | Path] | None, stdin=None,
                on_bad_line: corpora.OnBadLine = "error") -> "InputLines":
    """The decoded lines of the given files (known corpus names resolved), or of `stdin` when there are none.
    `None` stands for a line skipped as invalid UTF-8, so line-by-line commands keep the line count."""
    return InputLines(list(files or []), stdin, on_bad_line)


class InputLines:
    """The lines `input_lines` gives, and where each came from: `where(n)` is "file:line" of the n-th line read
    (from 1), for messages about a line of several input files."""

    def __init__(self, files: list, stdin, on_bad_line: corpora.OnBadLine):
        self.files, self.stdin, self.on_bad_line = files, stdin, on_bad_line
        self.starts: list[int] = []  # lines read before each input
        self.names: list[str] = []
        self.count = 0

    def __iter__(self) -> Iterator[str | None]:
        if not self.files:
            if self.stdin is None:
                raise DataError("no input: stdin is closed; give input files")
            yield from self._read(self.stdin, "<stdin>")
        for spec in self.files:
            with corpora.open_binary(registry.resolve(spec)) as stream:
                yield from self._read(stream, str(spec))

    def _read(self, stream, name: str) -> Iterator[str | None]:
        self.starts.append(self.count)
        self.names.append(name)
        for line in corpora.decode_lines(stream, name, self.on_bad_line):
            self.count += 1
            yield line

    def where(self, n: int) -> str:
        import bisect

        i = bisect.bisect_right(self.starts, n - 1) - 1
        return f"{self.names[i]}:{n - self.starts[i]}" if i >= 0 else f"line {n}"


def line_names(lines) -> Callable[[int], str]:
    """How messages name the n-th line (from 1) of `lines`: "file:line" where `lines` can say (`InputLines`),
    else "line n"."""
    return getattr(lines, "where", lambda n: f"line {n}")


T = TypeVar("T")


def line_chunks(lines: Iterable[T], size: int, wait: float | None = None) -> Iterator[list[T]]:
    """The lines in lists of at most `size`, for commands that work on a buffer of lines at a time.

    Without `wait`, every list but the last is full. With `wait` (seconds), the lines are read in a background
    thread and a list also ends when no line has come for that long: on a pipe that stays open (a user typing,
    a slow producer), the lines that have come are worked on, and answered, before the input ends. A file's lines
    come far faster than that, so its lists are full as without `wait`. An error reading the input is raised
    after the lines before it have been given."""
    if wait is None:
        it = iter(lines)
        while chunk := list(itertools.islice(it, size)):
            yield chunk
        return
    inbox: queue.Queue = queue.Queue(maxsize=2 * size)
    end = object()

    def read() -> None:
        try:
            for line in lines:
                inbox.put((line, None))
            inbox.put((end, None))
        except BaseException as exc:  # given to the reader after the lines before it
            inbox.put((end, exc))

    threading.Thread(target=read, daemon=True, name="nmtkit-input").start()
    error, over = None, False
    while not over:
        chunk: list[T] = []
        while len(chunk) < size:
            try:
                line, error = inbox.get(timeout=wait if chunk else None)
            except queue.Empty:
                break
            if line is end:
                over = True
                break
            chunk.append(line)
        if chunk:
            yield chunk
    if error is not None:
        raise error


class InOrder:
    """The results of a buffer of `n` lines worked on out of order (batches sorted by length), handed back in
    input order as soon as every earlier line's result is there. Lines in `skipped` need no work (their result
    is None). `add(pairs)` takes (index, result) pairs and returns the (index, result) pairs now ready."""

    def __init__(self, n: int, skipped: Iterable[int] = ()):
        self.n, self.next = n, 0
        self.results: dict[int, Any] = dict.fromkeys(skipped)

    def add(self, pairs: Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
        self.results.update(pairs)
        start = self.next
        while self.next < self.n and self.next in self.results:
            self.next += 1
        return [(i, self.results.pop(i)) for i in range(start, self.next)]


def describe_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Provenance for run records: each data file with its size and sha256."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths if p.is_file()]


def load_dataset(source) -> Any:
    """The Hugging Face dataset a source names (memory-mapped Arrow files; read in batches, never copied whole)."""
    return corpora.load_hf_dataset(source.dataset, source.config, source.split,
                                   list(source.data_files) if source.data_files else None)


@dataclasses.dataclass(frozen=True)
class ParallelSource:
    """Sentence pairs: files `src` and `tgt`, two columns of one table or JSON(L) file (`table`), a split of a
    known `corpus`, or a Hugging Face `dataset` with a `translation` column (keyed by language) or two text
    columns."""

    src: str | None = None  # line-aligned files (or NAME/FILE of a known corpus)
    tgt: str | None = None
    table: str | None = None  # a TSV/CSV/JSON(L) file whose src_column and tgt_column hold the pairs
    header: bool = True  # the table starts with a header row
    delimiter: str | None = None  # the table's delimiter (default: from its extension)
    corpus: str | None = None  # a known translation corpus, with src_lang, tgt_lang and split
    dataset: str | None = None  # a Hugging Face dataset (or json/csv with data_files)
    config: str | None = None
    data_files: tuple[str, ...] | None = None
    split: str = "train"
    src_column: str | None = None  # the table's columns, or the dataset's when it has no 'translation' column
    tgt_column: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None

    def __post_init__(self) -> None:
        self.validate("data")

    def validate(self, where: str) -> None:
        if not (self.src or self.table or self.corpus or self.dataset):
            raise DataError("no training data: give --src/--tgt files, --train TABLE, --corpus NAME, or --dataset NAME")
        if self.src and not self.tgt:
            raise DataError(f"{where}: --src needs --tgt, the line-aligned target file")
        if self.table and not (self.src_column and self.tgt_column):
            raise DataError(f"{self.table}: name the columns of the pairs with --src-column and --tgt-column")
        for path in (self.src, self.tgt):
            if path and corpora.base_suffix(path) in corpora.TABLE_SUFFIXES + corpora.JSON_SUFFIXES:
                raise DataError(f"{path}: a table, not a text file of one sentence per line: give it as --train "
                                f"{path} with --src-column and --tgt-column")

    def pairs(self, on_bad_line: corpora.OnBadLine = "error") -> Iterator[tuple[str, str]]:
        if self.table:
            return corpora.read_two_columns(registry.resolve(self.table), self.src_column, self.tgt_column,
                                            header=self.header, delimiter=self.delimiter, on_bad_line=on_bad_line)
        if self.line_files():
            return corpora.read_parallel(*self.line_files(), on_bad_line)
        ds, name = load_dataset(self), self.dataset
        if self.src_column:
            return zip(corpora.hf_column(ds, self.src_column, name), corpora.hf_column(ds, self.tgt_column or "", name))
        if "translation" not in ds.column_names:
            raise DataError(f"dataset {name!r}: no 'translation' column; name the columns with --src-column/--tgt-column")
        return ((row[self.src_lang], row[self.tgt_lang]) for row in corpora.hf_rows(ds, "translation"))

    def line_files(self) -> tuple[Path, Path] | None:
        """The two line-aligned files of the pairs (--src/--tgt or a known corpus), or None (a table, a dataset)."""
        return tuple(self.files()) if self.src or self.corpus else None  # type: ignore[return-value]

    def files(self) -> list[Path]:
        """The source and target files (the table; none for a dataset)."""
        if self.table:
            return [registry.resolve(self.table)]
        if self.src:
            return [registry.resolve(self.src), registry.resolve(self.tgt)]
        if self.corpus:
            return list(registry.parallel_files(self.corpus, self.src_lang, self.tgt_lang, self.split))
        return []


@dataclasses.dataclass(frozen=True)
class TextSource:
    """Texts: files (plain text, or a `column` of TSV/CSV/JSON(L) files; known corpora by name) and/or a
    `column` of a Hugging Face `dataset`."""

    inputs: tuple[str, ...] = ()
    column: str | None = None
    dataset: str | None = None
    config: str | None = None
    data_files: tuple[str, ...] | None = None
    split: str = "train"
    header: bool = True  # TSV/CSV files start with a header row

    @staticmethod
    def saved(data: dict[str, Any]) -> dict[str, Any]:
        """The text source in a run's config.json `data`: its "text" record, or the fields of a run started
        before sources were typed (inputs and column beside the other settings; a dataset as a record)."""
        if "text" in data:
            return data["text"]
        dataset = data.get("dataset") or {}
        return {"inputs": data.get("inputs", []), "column": data.get("column"), "dataset": dataset.get("name"),
                "config": dataset.get("config"), "split": dataset.get("split", "train"),
                "data_files": dataset.get("data_files")}

    def files(self) -> list[Path]:
        return expand_inputs(self.inputs)

    def texts(self, on_bad_line: corpora.OnBadLine = "error") -> Iterator[str]:
        """Every text: each line of a text file, each row or record of a table or JSON file, each dataset row."""
        for path in self.files():
            yield from corpora.read_texts(path, self.column, header=self.header, on_bad_line=on_bad_line)
        if self.dataset:
            yield from corpora.hf_column(load_dataset(self), self.column or "text", self.dataset)

    def documents(self, on_bad_line: corpora.OnBadLine = "error") -> Iterator[str]:
        """Documents for language modelling: a plain text file is one document (its lines joined by
        newlines); each row or record of a table, JSON file or dataset column is one."""
        for path in self.files():
            if corpora.base_suffix(path) in corpora.TABLE_SUFFIXES + corpora.JSON_SUFFIXES:
                yield from corpora.read_texts(path, self.column, header=self.header, on_bad_line=on_bad_line)
            else:
                yield "\n".join(corpora.read_lines(path, on_bad_line))
        if self.dataset:
            yield from corpora.hf_column(load_dataset(self), self.column or "text", self.dataset)

    def name(self) -> str:
        return ", ".join([str(p) for p in self.files()] + ([self.dataset] if self.dataset else [])) or "the data"


def _labels_checked(rows: Iterable[tuple[str, tuple[str, Any]]], column: str,
                    on_bad_line: corpora.OnBadLine) -> Iterator[tuple[str, str]]:
    """(text, label) pairs with each label as a class name: the cell's text without the spaces around it (`1 ` is
    class `1`); an empty label is an error naming its row (skipped and counted with --on-bad-line skip)."""
    skipped = corpora.ReadStats()
    for where, (text, label) in rows:
        label = str(label).strip()
        if not label:
            if on_bad_line == "error":
                raise DataError(f"{where}: the label (column {column!r}) is empty; use --on-bad-line skip to skip such rows")
            skipped.skip(where)
            continue
        yield text, label
    if skipped.skipped:
        log.warning("skipped %d row(s) with an empty label (first at %s)", skipped.skipped, skipped.first_skipped[0])


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """A fine-tuning task's examples: a `file` (TSV/CSV/JSON(L) for classify, SQuAD JSON for qa, Alpaca-style
    JSON for generate) or a Hugging Face `dataset`."""

    file: str | None = None
    dataset: str | None = None
    config: str | None = None
    data_files: tuple[str, ...] | None = None
    split: str = "train"
    text_column: str = "text"  # classify: the column or field holding the text
    label_column: str = "label"  # classify: the column or field holding the label

    def files(self) -> list[Path]:
        return [registry.resolve(self.file)] if self.file else []

    def labelled(self, on_bad_line: corpora.OnBadLine = "error") -> Iterator[tuple[str, str]]:
        """The (text, label) pairs of a classification data set, streamed."""
        if self.file:
            rows = corpora.read_two_columns(registry.resolve(self.file), self.text_column, self.label_column,
                                            on_bad_line=on_bad_line, numbered=True)
        else:
            ds, name = self._dataset()
            rows = ((f"dataset {name!r}, row {i + 1}", pair) for i, pair in enumerate(
                zip(corpora.hf_column(ds, self.text_column, name), corpora.hf_column(ds, self.label_column, name))))
        return _labels_checked(rows, self.label_column, on_bad_line)

    def examples(self, task: str, on_bad_line: corpora.OnBadLine = "error") -> list:
        """(text, label) pairs for classify, `QAExample`s for qa, `Instruction`s for generate."""
        if task == "classify":
            pairs = list(self.labelled(on_bad_line))
            if not pairs:
                raise DataError(f"{self.file or self.dataset}: empty corpus (no labelled rows)")
            return pairs
        if self.file:
            return self._file_examples(task, registry.resolve(self.file))
        ds, name = self._dataset()
        if task == "qa":
            need = {"context", "question", "answers"} - set(ds.column_names)
            if need:
                raise DataError(f"dataset {name!r}: a squad-style dataset needs columns {', '.join(sorted(need))}")
            return [corpora.QAExample(str(row.get("id", i)), str(row.get("title", "")), row["context"], row["question"],
                                      tuple(zip(row["answers"]["text"], row["answers"]["answer_start"])))
                    for i, row in enumerate(ds)]
        answer = "output" if "output" in ds.column_names else "response"
        return [corpora.Instruction(row["instruction"], row.get("input") or "", row[answer]) for row in ds]

    def _dataset(self) -> tuple[Any, str]:
        if not self.dataset:
            raise DataError("no data: give a file, a known corpus file (sst2/train.tsv), or --dataset")
        return load_dataset(self), self.dataset

    @staticmethod
    def _file_examples(task: str, path: Path) -> list:
        return corpora.read_squad(path) if task == "qa" else corpora.read_instructions(path)
