"""Prepared training data (issue 18): a parallel corpus tokenized once into memory-mapped id files, reused from
the cache while its files and the tokenizer are unchanged, never trusted half-written."""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmtkit.cli import app
from nmtkit.data import mapped, prepared
from nmtkit.data.batching import token_batches
from nmtkit.data.datasets import encode_parallel
from nmtkit.data.sources import ParallelSource

from conftest import DEMO, ROOT, one_line_error, write

runner = CliRunner()
FILES = [f"{side}.{ext}" for side in ("src", "tgt") for ext in ("bin", "idx", "len")]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path):
    """The demo pairs twice over, with a pair whose source is empty and one far longer than the others."""
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()
    en, ko = en * 2 + ["", "word " * 200], ko * 2 + ["x", "y"]
    return write(tmp_path / "big.en", "\n".join(en) + "\n"), write(tmp_path / "big.ko", "\n".join(ko) + "\n")


def prepared_folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "prepared").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_prepared_pairs_are_the_ids_and_batches_of_tokenizing_directly(corpus, demo_tokenizer):
    source = ParallelSource(src=str(corpus[0]), tgt=str(corpus[1]))
    data = mapped.PreparedPairs(prepared.provide(source, demo_tokenizer), max_len=64)
    direct = encode_parallel(source.pairs(), demo_tokenizer, demo_tokenizer, 64, "training data")
    assert len(data) == len(direct) == 3600  # the empty pair and the long one are left out by both
    assert data.lengths().tolist() == direct.lengths()
    batches = token_batches(data.lengths(), 500, shuffle=True, seed=2, epoch=3)
    assert [b.tolist() for b in batches] == [b.tolist() for b in token_batches(direct.lengths(), 500, shuffle=True,
                                                                              seed=2, epoch=3)]
    for index in [*list(batches)[:25], np.arange(40)]:
        a, b = data.collate(index), direct.collate(index)
        for name in ("src", "src_mask", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_worker_processes_write_the_same_files_as_one_process(corpus, demo_tokenizer, tmp_path):
    """Whatever the reader (two line-aligned files, gzipped or not, or a table read as pairs) and however many
    processes."""
    table = write(tmp_path / "pairs.tsv", "en\tko\n" + "".join(
        f"{s}\t{t}\n" for s, t in zip(*(p.read_text(encoding="utf-8").splitlines() for p in corpus))))
    gz = [write(tmp_path / f"{path.name}.gz", gzip.compress(path.read_bytes())) for path in corpus]
    sources = {"files": ParallelSource(src=str(corpus[0]), tgt=str(corpus[1])),
               "gzip": ParallelSource(src=str(gz[0]), tgt=str(gz[1])),
               "table": ParallelSource(table=str(table), src_column="en", tgt_column="ko")}
    metas = {}
    for name, source in sources.items():
        for parallel in (False, True):
            folder = tmp_path / f"{name}-{parallel}"
            folder.mkdir()
            metas[folder.name] = prepared.prepare(source, demo_tokenizer, folder, folder, workers=2, parallel=parallel,
                                                  chunk=500)
    for name in FILES:
        expected = (tmp_path / "files-False" / name).read_bytes()
        assert all((tmp_path / folder / name).read_bytes() == expected for folder in metas), name
    assert {(m["pairs"], m["empty"]) for m in metas.values()} == {(3601, 1)}
    assert np.fromfile(tmp_path / "files-True" / "src.idx", dtype=np.int64)[-1] == metas["files-True"]["tokens"]["src"]


def test_sorting_by_length_a_block_at_a_time_is_a_stable_sort_of_a_random_permutation():
    from nmtkit.data.batching import _by_length

    lengths = np.random.default_rng(1).integers(2, 300, 5000).astype(np.uint16)
    for rng in (None, np.random.default_rng(7)):
        order, counts = _by_length(lengths, rng, block=512)
        ids = np.arange(len(lengths))
        if rng is not None:
            ids = np.random.default_rng(7).permutation(ids)
        assert order.tolist() == ids[np.argsort(lengths[ids], kind="stable")].tolist()
        assert counts.tolist() == np.bincount(lengths).tolist()


def test_bucketing_is_the_greedy_rule():
    """Each batch takes sorted examples while count x the last length stays within the budget."""
    from nmtkit.data.batching import _bucket_bounds

    rng = np.random.default_rng(0)
    for budget in (7, 64, 500):
        lengths = np.sort(rng.integers(1, 60, 2000))
        expected, count, longest = [0], 0, 0
        for i, n in enumerate(lengths):
            if count and max(longest, n) * (count + 1) > budget:
                expected.append(i)
                count, longest = 0, 0
            count, longest = count + 1, max(longest, n)
        assert _bucket_bounds(np.bincount(lengths), budget).tolist() == expected + [len(lengths)]


def test_prepare_reuses_the_cache_and_prepares_a_changed_file_again(corpus, demo_tokenizer, prepared_cache):
    args = ("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    first = run(*args)
    assert first.exit_code == 0, first.output
    folder = Path(first.stdout.strip())
    assert "prepared 3,601 pairs" in first.stderr and "(1 with an empty side left out)" in first.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "meta.json"])
    again = run(*args)
    assert again.exit_code == 0 and Path(again.stdout.strip()) == folder and "prepared" not in again.stderr
    # the same size, one character changed: the modification time says so
    text = corpus[1].read_bytes()
    stat = corpus[1].stat()
    corpus[1].write_bytes(text.replace(b"x\n", b"z\n"))
    os.utime(corpus[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = run(*args)
    assert changed.exit_code == 0 and "prepared 3,601 pairs" in changed.stderr
    assert Path(changed.stdout.strip()) != folder and prepared_folders(prepared_cache) == [Path(changed.stdout.strip())]


def test_train_translator_prepares_once_and_resume_reuses_it(corpus, demo_tokenizer, tmp_path, prepared_cache):
    tiny = ["--d-model", "16", "--heads", "2", "--layers", "1", "--ff-dim", "32", "--max-len", "64", "--device", "cpu",
            "--eval-every", "100", "--log-every", "1"]
    args = ("train-translator", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder, *tiny,
            "-o", tmp_path / "run")
    first = run(*args, "--max-steps", "2")
    assert first.exit_code == 0, first.output
    assert "prepared 3,601 pairs" in first.stderr and "skipped 1 pair(s) with an empty side" in first.stderr
    assert "left out 1 pair(s) longer than 64 pieces" in first.stderr
    resumed = run(*args, "--max-steps", "4", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "prepared" not in resumed.stderr and "left out 1 pair(s)" in resumed.stderr
    assert len(prepared_folders(prepared_cache)) == 1
    losses = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(losses) == 4


def test_training_reads_the_data_in_worker_processes_and_reports_bad_pairs(corpus, demo_tokenizer, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(prepared, "PARALLEL_BYTES", 0)  # small files in workers too
    monkeypatch.setattr(prepared, "CHUNK", 1000)
    tgt = write(tmp_path / "short.ko", "\n".join(corpus[1].read_text(encoding="utf-8").splitlines()[:-5]) + "\n")
    common = ("-t", demo_tokenizer.folder, "--d-model", "16", "--layers", "1", "--max-steps", "1", "--workers", "2")
    misaligned = run("train-translator", "--src", corpus[0], "--tgt", tgt, *common, "-o", tmp_path / "a")
    one_line_error(misaligned, f"{tgt}:3598: file ends after 3597 lines but {corpus[0]} has more")
    bad = write(tmp_path / "bad.ko", corpus[1].read_bytes().replace(b"x\n", b"\xff\n"))
    invalid = run("train-translator", "--src", corpus[0], "--tgt", bad, *common, "-o", tmp_path / "b")
    one_line_error(invalid, f"{bad}:3601: invalid UTF-8")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not [p for p in (Path(os.environ["NMTKIT_CACHE"]) / "prepared").iterdir() if p.is_dir()]
    skipped = run("train-translator", "--src", corpus[0], "--tgt", bad, *common, "--on-bad-line", "skip",
                  "-o", tmp_path / "c")
    assert skipped.exit_code == 0, skipped.output
    said = " ".join(skipped.stderr.split())
    assert f"{bad}: skipped 1 line(s) with invalid UTF-8" in said and said.count("invalid UTF-8") == 1
    assert "prepared 3,601 pairs" in skipped.stderr  # the bad line's pair (the empty one) is left out


def test_workers_are_never_forked_from_the_threaded_process(corpus, demo_tokenizer, tmp_path, monkeypatch):
    """fork() in a process that runs threads (torch's) can leave a worker waiting forever on a lock another thread
    held (a CI run on Python 3.13 hung so): the workers come from a forkserver, or are spawned."""
    import multiprocessing

    methods = []
    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: methods.append(method) or real(method))
    monkeypatch.setattr(prepared, "PARALLEL_BYTES", 0)
    result = run("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert methods and all(m in ("forkserver", "spawn") for m in methods), methods


def test_an_interrupted_preparation_leaves_nothing(corpus, demo_tokenizer, prepared_cache, monkeypatch):
    encoded = []

    def interrupted(chunk):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle
        encoded.append(original(chunk))
        return encoded[-1]

    original = prepared._encode_chunk
    monkeypatch.setattr(prepared, "_encode_chunk", interrupted)
    monkeypatch.setattr(prepared, "CHUNK", 500)
    with pytest.raises(KeyboardInterrupt):
        prepared.provide(ParallelSource(src=str(corpus[0]), tgt=str(corpus[1])), demo_tokenizer)
    assert [p.suffix for p in (prepared_cache / "prepared").iterdir()] == [".lock"]


def test_a_killed_preparation_is_never_trusted(corpus, demo_tokenizer, tmp_path, prepared_cache):
    """SIGKILL in the middle of preparing: no prepared folder; the next run prepares and removes the remains."""
    fifo = tmp_path / "slow.en"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-m", "nmtkit", "prepare", "--src", str(fifo), "--tgt", str(corpus[1]), "-t",
            str(demo_tokenizer.folder)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(fifo, "w", encoding="utf-8") as writer:
            writer.write("half of the source lines\n" * 1000)
            writer.flush()
            deadline = time.time() + 60
            while not list((prepared_cache / "prepared").glob(".*.tmp")) and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    except BrokenPipeError:
        pass
    finally:
        proc.kill()
    assert list((prepared_cache / "prepared").glob(".*.tmp")) and not prepared_folders(prepared_cache)
    fifo.unlink()
    write(fifo, corpus[0].read_bytes())
    done = run("prepare", "--src", fifo, "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    assert done.exit_code == 0, done.output
    assert prepared_folders(prepared_cache) == [Path(done.stdout.strip())]
    assert not list((prepared_cache / "prepared").glob(".*.tmp"))


def test_a_full_disk_while_preparing_is_one_line_and_keeps_nothing(corpus, demo_tokenizer, prepared_cache, monkeypatch):
    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    calls = []
    original = prepared._write

    def full(out, name, folder, array):
        calls.append(name)
        original({name: FullDisk()} if len(calls) == 3 else out, name, folder, array)  # 3: the first ids

    monkeypatch.setattr(prepared, "_write", full)
    result = run("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    one_line_error(result, "src.bin: cannot write: No space left on device")
    assert [p.suffix for p in (prepared_cache / "prepared").iterdir()] == [".lock"]


@pytest.fixture
def labelled(tmp_path):
    """3,000 labelled rows (a TSV with a header), one with an empty text, three labels."""
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()
    rows = [(en[i % len(en)], ("neg", "pos", "neutral")[i % 3]) for i in range(2999)] + [("", "pos")]
    return write(tmp_path / "labelled.tsv", "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows)), rows


def test_prepared_texts_are_the_seqs_and_labels_of_encoding_directly(labelled, demo_tokenizer):
    from nmtkit.data.sources import TaskSource
    from nmtkit.workflows.finetune import TaskData

    source = TaskSource(file=str(labelled[0]))
    labels = ["neg", "neutral", "pos"]
    folder = prepared.provide(source, demo_tokenizer, kind="labelled")
    data = mapped.PreparedTexts(folder, 16, labels, (0, 2900))
    direct = TaskData("classify", labelled[1][:2900], demo_tokenizer, 16, 0, labels, "training data")
    assert [data.seq(i) for i in range(len(data))] == direct.seqs and data.labels.tolist() == direct.labels
    batches = data.batches(32, shuffle=True, seed=1, epoch=2)
    assert [b.tolist() for b in batches.index_batches] == [b.tolist() for b in direct.batches(32, shuffle=True, seed=1,
                                                                                               epoch=2).index_batches]
    a, b = batches[3], direct.collate(batches.index_batches[3])
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels) and torch.equal(a.lengths, b.lengths)
    assert mapped.labels_present(folder, (0, 2)) == ["neg", "pos"]
    with pytest.raises(Exception, match="label 'neutral' is not one of the run's labels"):
        mapped.PreparedTexts(folder, 16, ["neg", "pos"])


def test_finetune_classify_prepares_once_and_holds_out_the_last_rows(labelled, gpt, tmp_path, prepared_cache):
    args = ("finetune", "--task", "classify", "-m", gpt, "--train", labelled[0], "--max-steps", "2", "--eval-every", "2",
            "--batch-size", "8", "--device", "cpu")
    first = run(*args, "-o", tmp_path / "a")
    assert first.exit_code == 0, first.output
    said = " ".join(first.stderr.split())
    assert "prepared 3,000 examples" in said and "the last 150 training examples are held out" in said
    assert "classify: 2850 training and 150 validation examples" in said
    config = (tmp_path / "a" / "config.json").read_text()
    assert '"neg",' in config and '"neutral",' in config
    again = run(*args, "-o", tmp_path / "b")
    assert again.exit_code == 0 and "prepared" not in again.stderr
    assert len(prepared_folders(prepared_cache)) == 1


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_batches_leave_no_mapped_pages_resident(corpus, demo_tokenizer):
    """Random reads map the pages around them; a batch releases them once copied out, so resident memory does
    not grow towards the data files' size over an epoch."""
    folder = prepared.provide(ParallelSource(src=str(corpus[0]), tgt=str(corpus[1])), demo_tokenizer)
    data = mapped.PreparedPairs(folder, max_len=64)
    for index in token_batches(data.lengths(), 300, shuffle=True, seed=0):
        data.collate(index)
    resident, path = {}, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and "-" in parts[0] and not parts[0].endswith(":"):
            path = parts[5] if len(parts) > 5 else None
        elif parts and parts[0] == "Rss:" and path and path.startswith(str(folder)):
            resident[Path(path).name] = int(parts[1])
    assert sorted(resident) == ["src.bin", "src.idx", "tgt.bin", "tgt.idx"] and set(resident.values()) == {0}


def test_an_empty_corpus_is_one_line_naming_its_files(tmp_path, demo_tokenizer, prepared_cache):
    src, tgt = write(tmp_path / "empty.en", ""), write(tmp_path / "blank.ko", "\n \n")
    tgt_short = write(tmp_path / "two.en", "\n\n")
    result = run("prepare", "--src", tgt_short, "--tgt", tgt, "-t", demo_tokenizer.folder)
    one_line_error(result, f"{tgt_short}, {tgt}: empty corpus (no non-empty sentence pairs)")
    empty = run("train-translator", "--src", src, "--tgt", write(tmp_path / "empty.ko", ""), "-t", demo_tokenizer.folder,
                "-o", tmp_path / "run")
    one_line_error(empty, f"{src}, {tmp_path / 'empty.ko'}: empty corpus")
    assert not (tmp_path / "run").exists()
    assert {p.suffix for p in (prepared_cache / "prepared").iterdir()} == {".lock"}  # nothing prepared is kept


# ---------------------------------------------------------------------------------------------------------
# Nothing in the cache is believed as it is (issue 26)


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


def _flip_meta(folder: Path, **changes) -> None:
    import json

    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **changes}))


DAMAGE = {  # what is done to a prepared folder of pairs, and what the warning says of it
    "src.bin truncated": (lambda f: _truncate(f / "src.bin", -10), "src.bin has"),
    "src.bin emptied": (lambda f: (f / "src.bin").write_bytes(b""), "src.bin has 0 bytes"),
    "src.bin overwritten, longer": (lambda f: (f / "src.bin").write_bytes(b"\x07" * 99), "src.bin has 99 bytes"),
    "tgt.idx truncated": (lambda f: _truncate(f / "tgt.idx", -8), "tgt.idx has"),
    "src.len overwritten, same size": (lambda f: (f / "src.len").write_bytes(b"\x01" * (f / "src.len").stat().st_size),
                                       "src.len changed since it was prepared"),
    "tgt.len deleted": (lambda f: (f / "tgt.len").unlink(), "tgt.len missing"),
    "meta.json emptied to {}": (lambda f: (f / "meta.json").write_text("{}"), "does not match its seal"),
    "meta.json truncated": (lambda f: _truncate(f / "meta.json", 20), "meta.json unreadable"),
    "meta.json dtype changed": (lambda f: _flip_meta(f, dtype="uint32"), "does not match its seal"),
    "meta.json deleted": (lambda f: (f / "meta.json").unlink(), "meta.json missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_prepared_folder_is_prepared_again_with_a_warning(damage, corpus, demo_tokenizer, tmp_path,
                                                                    prepared_cache):
    args = ("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    first = run(*args)
    folder = Path(first.stdout.strip())
    files = {name: (folder / name).read_bytes() for name in FILES}
    do, said = DAMAGE[damage]
    do(folder)
    again = run(*args)
    assert again.exit_code == 0, again.output
    warning = " ".join(again.stderr.split())
    assert "the prepared data is damaged" in warning and said in warning and "preparing it again" in warning
    assert Path(again.stdout.strip()) == folder and prepared.damage(folder) is None
    assert {name: (folder / name).read_bytes() for name in FILES} == files
    third = run(*args)  # and from then on it is used as it is
    assert third.exit_code == 0 and "prepared" not in third.stderr and "damaged" not in third.stderr


def test_training_never_uses_a_damaged_folder(corpus, demo_tokenizer, tmp_path, prepared_cache):
    first = run("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    folder = Path(first.stdout.strip())
    (folder / "src.bin").write_bytes(b"")  # once trained on empty sources, exit 0
    result = run("train-translator", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder, "--d-model",
                 "16", "--heads", "2", "--layers", "1", "--ff-dim", "32", "--max-len", "64", "--max-steps", "1",
                 "--device", "cpu", "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "src.bin has 0 bytes" in " ".join(result.stderr.split())
    assert mapped.PreparedPairs(folder, 64).ids["src"].size > 0


def test_one_file_however_it_is_spelled_is_one_prepared_folder(corpus, demo_tokenizer, prepared_cache, monkeypatch):
    monkeypatch.chdir(corpus[0].parent.parent)
    relative = [Path(corpus[0].parent.name) / p.name for p in corpus]
    spellings = [relative, [Path(".") / p for p in relative], [p.resolve() for p in corpus]]
    folders = {run("prepare", "--src", s, "--tgt", t, "-t", demo_tokenizer.folder).stdout.strip() for s, t in spellings}
    assert len(folders) == 1 and len(prepared_folders(prepared_cache)) == 1


def test_a_run_records_the_files_it_was_trained_on(corpus, demo_tokenizer, tmp_path, prepared_cache):
    """An edit that keeps a file's size and modification time is not seen (the files are not read again), but the
    run's record names what it was trained on: the sha256 taken while preparing."""
    import hashlib
    import json

    prepared_sha = hashlib.sha256(corpus[1].read_bytes()).hexdigest()
    run("prepare", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder)
    stat = corpus[1].stat()
    corpus[1].write_bytes(corpus[1].read_bytes().replace(b"x\n", b"z\n"))
    os.utime(corpus[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run("train-translator", "--src", corpus[0], "--tgt", corpus[1], "-t", demo_tokenizer.folder, "--d-model",
                 "16", "--heads", "2", "--layers", "1", "--ff-dim", "32", "--max-len", "64", "--max-steps", "1",
                 "--device", "cpu", "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    train = record["data"]["train"]
    assert train[1]["path"] == str(corpus[1].resolve()) and train[1]["sha256"] == prepared_sha
    assert train[1]["prepared"] == str(prepared_folders(prepared_cache)[0])
