"""Prepared training data: a corpus tokenized once into flat id files that training memory-maps (the
fairseq-preprocess step), reused by every run while its files and the tokenizer are unchanged.

A prepared folder of parallel pairs (kind "pairs") holds, for n pairs (pairs with an empty side are left out
and counted):

    src.bin, tgt.bin   every sentence's piece ids, one after another (uint16, or uint32 for vocabularies over
                       65,536 pieces); no <s> or </s>: those are added when a batch is made
    src.idx, tgt.idx   n + 1 offsets (int64): sentence i is bin[idx[i]:idx[i + 1]]
    src.len, tgt.len   n lengths (uint16, capped at 65,535), what batching and the --max-len filter read
    meta.json          what it was made from (the cache key's inputs), counts, and how long it took

A classification data set (kind "labelled") holds text.bin, text.idx, text.len and labels.bin (uint16 indices
into meta.json's "labels", in the order they first appear); every row is kept, an empty text too.

Training reads them through `nmtkit.data.mapped`: only the lengths in memory (2 bytes a field), ids and
offsets mapped and paged in by the batches that use them; processes under torchrun share the mapped pages.

The cache (`$NMTKIT_CACHE`, else `$XDG_CACHE_HOME/nmtkit`, else `~/.cache/nmtkit`) keeps a folder per key,
`prepared/KEY`. The key hashes the kind, the source's description, each input file's resolved path, size and
modification time (nanoseconds), the tokenizer model's sha256, the --on-bad-line choice and this format's
version: a file changed after preparation (its size or mtime changes) gives another key and is prepared
again, and the stale folder of the same source is removed. A folder is assembled under a temporary name and
renamed into place after its files are on disk, under a lock, so an interrupted or failed preparation leaves
nothing a later run would trust. The same file named in other words (`d/train.de`, `./d/train.de`, its absolute
path) is one key: the key holds each file's resolved path, not its spelling.

Nothing in the cache is believed as it is: meta.json records every file's size and the sha256 of the small
files (offsets, lengths, labels), and is itself sealed by a sha256 of its content. Before a folder is used,
`damage` checks the seal, the format, every size and those checksums (a few bytes a pair are read, never the
ids); a folder that fails is prepared again, with a warning saying what was wrong, and a damaged or half-deleted
folder never stands in the way of that. The input files' sha256 are taken while preparing, so a run records
what it was trained on (an edit that keeps a file's size and modification time is not seen: the files are not
read again to look for one).

Preparation streams the source through its reader (plain, gzip, TSV/CSV/JSON(L), Hugging Face datasets) in
chunks that worker processes tokenize, in order; memory does not grow with the corpus.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from nmtkit.data import corpora
from nmtkit.errors import DataError
from nmtkit.files import file_sha256, read_json, write_error, write_json

if TYPE_CHECKING:
    from nmtkit.tokenization import Tokenizer

log = logging.getLogger("nmtkit")

FORMAT = 2  # 2: sealed meta.json with sizes and checksums
META = "meta.json"
SIDES = ("src", "tgt")
MAX_LENGTH = 65535  # lengths are stored as uint16; longer sentences are over any --max-len anyway
CHUNK = 10_000  # pairs a worker tokenizes at a time
PARALLEL_BYTES = 16 << 20  # smaller inputs are tokenized in this process (starting workers costs more)


def cache_root() -> Path:
    """Where prepared data is cached: $NMTKIT_CACHE, else $XDG_CACHE_HOME/nmtkit, else ~/.cache/nmtkit."""
    if os.environ.get("NMTKIT_CACHE"):
        return Path(os.environ["NMTKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmtkit"


def describe(source, tokenizer: "Tokenizer", on_bad_line: str) -> dict:
    """What a prepared folder depends on: the source, its files (resolved path, size, mtime), the tokenizer."""
    from nmtkit.config import to_dict

    files = []
    for path in source.files():
        try:
            st = path.stat()
        except OSError:
            raise DataError(f"{path}: no such file") from None
        files.append({"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    named = to_dict(source)
    for field in ("src", "tgt", "table", "file"):  # the files as spelled: their resolved paths are in `files`
        named.pop(field, None)
    inputs = {"format": FORMAT, "source": named, "files": files, "on_bad_line": on_bad_line,
              "tokenizer": file_sha256(tokenizer.model_file)}
    if source.dataset:  # a Hugging Face dataset: its fingerprint changes when its data does
        from nmtkit.data.sources import load_dataset

        inputs["dataset_fingerprint"] = getattr(load_dataset(source), "_fingerprint", None)
    return inputs


def _key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def _same_source(inputs: dict) -> str:
    """The key of the source alone (its files' paths, not their sizes or times): stale folders share it."""
    kept = {**inputs, "files": [f["path"] for f in inputs["files"]]}
    kept.pop("dataset_fingerprint", None)
    return _key(kept)


def provide(source, tokenizer: "Tokenizer", *, kind: str = "pairs", on_bad_line: str = "error",
            cache_dir: str | Path | None = None, workers: int | None = None, may_prepare: bool = True,
            progress: Callable[[dict], None] | None = None) -> Path:
    """The prepared folder of `source` (a `ParallelSource` for `kind` "pairs", a `TaskSource` for "labelled")
    tokenized by `tokenizer`: from the cache, or prepared now (unless `may_prepare` is false: a torchrun process
    that is not rank 0 only looks it up, after rank 0 prepared it)."""
    import fcntl

    inputs = {**describe(source, tokenizer, on_bad_line), "kind": kind}
    root = Path(cache_dir) if cache_dir else cache_root() / "prepared"
    folder = root / _key(inputs)
    problem = damage(folder) if folder.is_dir() else "missing"
    if problem is None:
        return folder
    if not may_prepare:
        raise DataError(f"{folder}: the prepared data is {problem} (rank 0 should have prepared it)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = os.open(root / f"{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(root, exc) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process preparing the same data: wait for it, then reuse
        problem = damage(folder) if folder.is_dir() else "missing"
        if problem is None:
            return folder
        if folder.is_dir():  # damaged, or half deleted: it goes, and is prepared again
            log.warning("%s: the prepared data is damaged (%s); preparing it again", folder, problem)
            shutil.rmtree(folder, ignore_errors=True)
        _remove_abandoned(root, folder.name)
        _remove_stale(root, _same_source(inputs))
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=root))
        try:
            meta = prepare(source, tokenizer, tmp, folder, kind=kind, on_bad_line=on_bad_line, workers=workers,
                           progress=progress, parallel=workers != 1 and _input_bytes(inputs) >= PARALLEL_BYTES)
            files_sha256 = [file_sha256(path) for path in source.files()]  # what this folder was made of
            write_json(tmp / META, _sealed(tmp, {**meta, "inputs": inputs, "source_key": _same_source(inputs),
                                                 "files_sha256": files_sha256}))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        os.close(lock)
    log.info("prepared %s %s (%s pieces) in %.1f s, %s lines/s: %s", f"{meta['pairs']:,}",
             "pairs" if kind == "pairs" else "examples", " + ".join(f"{n:,}" for n in meta["tokens"].values()),
             meta["seconds"], f"{meta['lines_per_s']:,.0f}", folder)
    return folder


def _seal(meta: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "seal"}, sort_keys=True).encode()).hexdigest()


def _sealed(tmp: Path, meta: dict) -> dict:
    """meta.json's content with every file's size, the sha256 of the small files (all but the ids), and the seal."""
    names = sorted(p.name for p in tmp.iterdir() if p.name != META)
    meta = {**meta, "bytes": {name: (tmp / name).stat().st_size for name in names},
            "checks": {name: file_sha256(tmp / name) for name in names if not name.endswith(".bin") or name == "labels.bin"}}
    return {**meta, "seal": _seal(meta)}


def damage(folder: Path) -> str | None:
    """What is wrong with a prepared folder, or None when it may be used: meta.json readable, sealed (its seal
    the sha256 of its content) and of this format; every file there with the size meta.json records; the small
    files (offsets, lengths, labels) with their recorded sha256. The ids are checked by size only."""
    if not (folder / META).is_file():
        return f"{META} missing"
    try:
        meta = read_json(folder / META)
    except Exception:  # noqa: BLE001 - unreadable in any way: not to be trusted
        return f"{META} unreadable"
    if not isinstance(meta, dict) or meta.get("seal") != _seal(meta):
        return f"{META} does not match its seal"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')}, not {FORMAT}"
    for name, size in meta["bytes"].items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} missing"
        if actual != size:
            return f"{name} has {actual:,} bytes, not {size:,}"
    for name, digest in meta["checks"].items():
        if file_sha256(folder / name) != digest:
            return f"{name} changed since it was prepared"
    return None


def trained_on(folder: Path) -> list[dict]:
    """The input files of a prepared folder as run records name data files: path, size and the sha256 taken
    while preparing (what the run is trained on, whatever the files hold now)."""
    meta = read_json(folder / META)
    return [{"path": f["path"], "bytes": f["bytes"], "sha256": digest, "prepared": str(folder)}
            for f, digest in zip(meta["inputs"]["files"], meta["files_sha256"])]


def _input_bytes(inputs: dict) -> int:
    files = inputs["files"]
    return sum(f["bytes"] for f in files) if files else PARALLEL_BYTES  # a dataset: assume it is large


def _remove_abandoned(root: Path, own: str) -> None:
    """Remove the temporary folders of preparations that were killed: those of the key whose lock this process
    holds (`own`), and those of other keys whose lock nobody holds."""
    import fcntl

    for tmp in root.glob(".*.tmp"):
        key = tmp.name[1:].split(".")[0]
        if key == own:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        try:
            fd = os.open(root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already, or free: nobody is writing it
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # another process is preparing it now
            pass
        finally:
            os.close(fd)


def _remove_stale(root: Path, source_key: str) -> None:
    """Remove prepared folders of the same source made from files that have changed since."""
    for meta in root.glob(f"*/{META}"):
        try:
            if read_json(meta).get("source_key") == source_key:
                shutil.rmtree(meta.parent, ignore_errors=True)
        except Exception:  # noqa: BLE001 - an unreadable folder is not ours to judge
            continue


# ---------------------------------------------------------------------------------------------------------
# Preparing: chunks of pairs tokenized in worker processes, written in order


def prepare(source, tokenizer: "Tokenizer", tmp: Path, folder: Path, *, kind: str = "pairs", on_bad_line: str = "error",
            workers: int | None = None, parallel: bool = True, chunk: int | None = None,
            progress: Callable[[dict], None] | None = None) -> dict:
    """Tokenize a source into the files of a prepared folder in `tmp` (named after `folder` in errors); returns
    the counts for meta.json. `kind` "pairs": a `ParallelSource`'s sentence pairs (two line-aligned files are
    read as raw lines that the workers decode, so the reading process does little more than read; other formats
    as pairs by their reader); "labelled": a `TaskSource`'s (text, label) pairs. Raises DataError on bad or
    empty data, WriteError when a file cannot be written."""
    import numpy as np

    dtype = "uint16" if len(tokenizer) <= 65536 else "uint32"
    fields = SIDES if kind == "pairs" else ("text",)
    names = [f"{field}.{ext}" for field in fields for ext in ("bin", "idx", "len")] + ["labels.bin"] * (kind != "pairs")
    out = {name: open(tmp / name, "wb") for name in names}
    counts = {"pairs": 0, "empty": 0, "tokens": {field: 0 for field in fields}}
    labels: dict[str, int] = {}  # label names in the order they first appear
    skipped = (corpora.ReadStats(), corpora.ReadStats())
    read = [0]
    start = time.perf_counter()

    def write(result) -> None:
        chunk_read, empty, encoded, stats, chunk_labels = result
        counts["empty"] += empty
        for field, (ids, lengths) in zip(fields, encoded):
            offsets = counts["tokens"][field] + np.cumsum(lengths, dtype=np.int64)
            _write(out, f"{field}.bin", folder, ids)
            _write(out, f"{field}.idx", folder, offsets)
            _write(out, f"{field}.len", folder, np.minimum(lengths, MAX_LENGTH).astype(np.uint16))
            counts["tokens"][field] += int(lengths.sum())
        if chunk_labels is not None:
            ids = [labels.setdefault(label, len(labels)) for label in chunk_labels]
            if len(labels) > 65535:
                raise DataError("training data: more than 65,535 different labels")
            _write(out, "labels.bin", folder, np.asarray(ids, dtype=np.uint16))
        counts["pairs"] += len(encoded[0][1])
        for total, side in zip(skipped, stats):
            total.skipped += side.skipped
            total.first_skipped += side.first_skipped[: 3 - len(total.first_skipped)]
        read[0] += chunk_read
        if progress:
            progress({"event": "prepare", "done": read[0], "what": "pairs" if kind == "pairs" else "examples",
                      "lines_per_s": len(fields) * read[0] / max(time.perf_counter() - start, 1e-9)})

    files = source.line_files() if kind == "pairs" else None
    if files:
        chunks: Iterable = (("lines", (first, s, t, (str(files[0]), str(files[1])), on_bad_line))
                            for first, s, t in corpora.parallel_line_blocks(*files, chunk or CHUNK))
    elif kind == "pairs":
        chunks = (("pairs", c) for c in _chunks(source.pairs(on_bad_line), chunk or CHUNK))
    else:
        chunks = (("labelled", c) for c in _chunks(source.labelled(on_bad_line), chunk or CHUNK))
    try:
        for field in fields:
            _write(out, f"{field}.idx", folder, np.zeros(1, dtype=np.int64))
        if parallel:
            _in_workers(chunks, tokenizer, dtype, workers or len(os.sched_getaffinity(0)), write)
        else:
            _start_worker(str(tokenizer.model_file), tokenizer.threads, dtype)
            for c in chunks:
                write(_encode_chunk(c))
        for name, f in out.items():
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                raise write_error(folder / name, exc) from None
    finally:
        for f in out.values():
            try:
                f.close()
            except OSError:  # what it still held could not be written either: the folder goes anyway
                pass
    if files:
        for name, stats in zip(files, skipped):
            corpora.report_skipped(str(name), stats, on_bad_line)  # type: ignore[arg-type]
    if not counts["pairs"]:
        where = ", ".join(str(path) for path in source.files()) or f"dataset {source.dataset!r}"
        raise DataError(f"{where}: empty corpus (" + ("no non-empty sentence pairs)" if kind == "pairs"
                                                      else "no labelled rows)"))
    seconds = time.perf_counter() - start
    return {"format": FORMAT, "kind": kind, "dtype": dtype, **counts, "labels": list(labels) if labels else None,
            "seconds": round(seconds, 2), "lines_per_s": round(len(fields) * read[0] / max(seconds, 1e-9))}


def _write(out: dict, name: str, folder: Path, array) -> None:
    try:
        out[name].write(array.tobytes())
    except OSError as exc:
        raise write_error(folder / name, exc) from None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    return iter(lambda: list(itertools.islice(it, size)), [])


def _in_workers(chunks: Iterable, tokenizer: "Tokenizer", dtype: str, workers: int, write) -> None:
    """Tokenize chunks in `workers` processes, at most two chunks per worker in flight, written in order."""
    import multiprocessing

    # forkserver where there is one (Linux, macOS): workers forked from a clean single-threaded server. Not fork:
    # forking a process that runs threads (torch's, a caller's) can leave a worker waiting forever on a lock some
    # other thread held at that moment (seen in CI on Python 3.13: a preparation that never ended)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with _sigterm_stops(), context.Pool(workers, _start_pool_worker, (str(tokenizer.model_file), 1, dtype)) as pool:
        pending: collections.deque = collections.deque()
        for c in chunks:
            pending.append(pool.apply_async(_encode_chunk, (c,)))
            if len(pending) >= 2 * workers:
                write(pending.popleft().get())
        while pending:
            write(pending.popleft().get())


@contextlib.contextmanager
def _sigterm_stops():
    """While the workers run, SIGTERM stops the preparation as Ctrl-C does (`Stopped`): the pool is terminated
    (its workers die quietly, SIGTERM's default in them) and the temporary folder removed, instead of the workers
    outliving their parent and dying of broken pipes, each with a traceback."""
    import signal
    import threading

    from nmtkit.errors import Stopped

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_tok, _dtype = None, "uint16"  # the worker's tokenizer, the ids' type


def _start_pool_worker(model: str, threads: int, dtype: str) -> None:
    """A worker process leaves Ctrl-C to the process that started it, which stops the pool (no tracebacks)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's terminate() ends it, without a traceback
    _start_worker(model, threads, dtype)


def _start_worker(model: str, threads: int, dtype: str) -> None:
    global _tok, _dtype
    from nmtkit.tokenization import load_tokenizer

    _tok, _dtype = load_tokenizer(model), dtype
    _tok.threads = threads


def _encode_chunk(chunk):
    """(examples read, pairs left out for an empty side, ((ids, lengths) of each text field), skipped-line counts
    of each side, the labels or None) of a chunk: ("lines", raw lines of both files), ("pairs", text pairs) or
    ("labelled", (text, label) pairs: every text kept, an empty one too)."""
    import numpy as np

    kind, payload = chunk
    stats = (corpora.ReadStats(), corpora.ReadStats())
    labels = None
    if kind == "lines":
        first, s_block, t_block, names, on_bad_line = payload
        fields = [corpora.decode_block(block, name, first, on_bad_line, side)
                  for block, name, side in zip((s_block, t_block), names, stats)]
    elif kind == "pairs":
        fields = [list(side) for side in zip(*payload)] if payload else [[], []]
    else:
        fields, labels = [[text for text, _ in payload]], [label for _, label in payload]
    read = len(fields[0])
    kept = read
    # the usual chunk of pairs: no line skipped, no empty side (checked at C speed); else the pairs are sifted
    if kind != "labelled" and (stats[0].skipped or stats[1].skipped or not all(map(str.strip, fields[0]))
                               or not all(map(str.strip, fields[1]))):
        pairs = [(s, t) for s, t in zip(*fields) if s is not None and t is not None]
        kept = len(pairs)
        pairs = [(s, t) for s, t in pairs if s.strip() and t.strip()]
        fields = [list(side) for side in zip(*pairs)] if pairs else [[], []]
    encoded = []
    for texts in fields:
        ids = _tok.encode(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.uint32, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_dtype, count=int(lengths.sum(dtype=np.int64)))
        encoded.append((flat, lengths))
    return read, kept - len(fields[0]), tuple(encoded), stats, labels
