"""Never lose a user's data: what `-o` does to an existing path, what nmtkit never deletes, what `--resume`
keeps. Every test goes through the command line, as a user would."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmtkit import checkpoint
from nmtkit.cli import app

from conftest import DEMO, one_line_error, write

runner = CliRunner()
TINY = ["--d-model", "32", "--heads", "2", "--layers", "1", "--ff-dim", "64", "--vocab-size", "100", "--tokenizer-type",
        "char", "--eval-every", "4", "--device", "cpu"]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def tree(folder) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userdata")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:24]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:24]
    src, tgt = write(folder / "tiny.en", "\n".join(en) + "\n"), write(folder / "tiny.ko", "\n".join(ko) + "\n")
    result = run("train-translator", "--src", src, "--tgt", tgt, *TINY, "--max-steps", "12", "-o", folder / "run")
    assert result.exit_code == 0, result.output
    return {"folder": folder, "src": src, "tgt": tgt, "run": folder / "run"}


def test_train_tokenizer_never_deletes_a_folder_of_other_files(tiny, tmp_path):
    project = tmp_path / "project"
    write(project / "corpus.txt", "the cat sat on the mat\n" * 20)
    write(project / "notes" / "todo.md", "keep me\n")
    before = tree(project)
    one_line_error(run("train-tokenizer", project / "corpus.txt", "-o", project, "--model-type", "char"),
                   f"{project}: holds files that are not a tokenizer", "--overwrite")
    assert tree(project) == before
    finished = tiny["run"]
    kept = tree(finished)
    one_line_error(run("train-tokenizer", project / "corpus.txt", "-o", finished, "--model-type", "char"),
                   "holds files that are not a tokenizer")
    assert tree(finished) == kept
    result = run("train-tokenizer", project / "corpus.txt", "-o", project, "--model-type", "char", "--overwrite")
    assert result.exit_code == 0, result.output
    after = tree(project)
    assert {k: after[k] for k in before} == before and {"tokenizer.model", "tokenizer.json"} <= set(after)
    # a tokenizer folder of its own is replaced; nothing is left beside it
    result = run("train-tokenizer", project / "corpus.txt", "-o", tmp_path / "tok", "--model-type", "char")
    assert result.exit_code == 0
    result = run("train-tokenizer", project / "corpus.txt", "-o", tmp_path / "tok", "--model-type", "bpe",
                 "--vocab-size", "20")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["config"]["model_type"] == "bpe"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "tok"]


def test_train_tokenizer_onto_a_file_is_one_line_and_leaves_nothing_behind(tmp_path):
    corpus = write(tmp_path / "corpus.txt", "the cat sat on the mat\n" * 20)
    one_line_error(run("train-tokenizer", corpus, "-o", corpus, "--model-type", "char"),
                   f"{corpus}: is a file; --output names the folder to write")
    assert corpus.read_text() == "the cat sat on the mat\n" * 20
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]


def test_output_files_that_are_not_regular_files_are_written_through(tiny, tmp_path):
    tok = tiny["run"] / "tokenizer"
    target = write(tmp_path / "target.txt", "old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert run("tokenize", "-t", tok, "-o", link, input="hello\n").exit_code == 0
    assert link.is_symlink() and target.read_text() != "old\n"  # the link still points to the file it named

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert run("tokenize", "-t", tok, "-o", fifo, input="hello\nworld\n").exit_code == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and got[0].count(b"\n") == 2

    if os.path.exists("/dev/full"):
        one_line_error(run("tokenize", "-t", tok, "-o", "/dev/full", input="hello\n"),
                       "/dev/full: cannot write: No space left on device")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)

    old = os.umask(0o022)
    try:
        assert run("tokenize", "-t", tok, "-o", tmp_path / "new.txt", input="hello\n").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o644  # the umask's mode, not mkstemp's 0600


def test_average_onto_another_run_is_refused(tiny, tmp_path):
    other = tmp_path / "other"
    result = run("train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], *TINY, "--max-steps", "4", "-o", other)
    assert result.exit_code == 0, result.output
    before = tree(other)
    one_line_error(run("average", "-m", tiny["run"], "--last", "2", "-o", other),
                   f"{other}: holds files that are not an average of checkpoints")
    assert tree(other) == before
    avg = tmp_path / "avg"
    assert run("average", "-m", tiny["run"], "--last", "2", "-o", avg).exit_code == 0
    assert run("average", "-m", tiny["run"], "--last", "3", "-o", avg).exit_code == 0  # its own kind: replaced


def test_the_best_evaluation_survives_a_resume(tiny, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], *TINY, "--max-steps", "8", "-o", run_dir]
    assert run(*args).exit_code == 0
    result = run(*args, "--resume")  # nothing left to train: the record must still know the best evaluation
    assert result.exit_code == 0, result.output
    training = json.loads((run_dir / "run.json").read_text())["training"]
    assert training[1]["best"] == training[0]["best"] and training[1]["best"] is not None


def test_a_stale_lock_takes_only_nmtkit_s_temporary_files(tiny, tmp_path):
    import shutil

    run_dir = shutil.copytree(tiny["run"], tmp_path / "run")
    write(run_dir / checkpoint.LOCK, "nmtkit pid 999999 on elsewhere since 2026-01-01T00:00:00\n")
    write(run_dir / ".run.json.abc123.tmp", b"half")
    mine = write(run_dir / "steps" / ".notes.txt.abc123.tmp", b"a user's file")
    result = run("train-translator", "-o", run_dir, "--resume", "--max-steps", "12")
    assert result.exit_code == 0, result.output
    assert not (run_dir / ".run.json.abc123.tmp").exists() and mine.read_bytes() == b"a user's file"


def test_a_resume_refused_on_a_bad_training_state_rewrites_nothing(tiny, tmp_path):
    import shutil

    run_dir = shutil.copytree(tiny["run"], tmp_path / "run")
    write(run_dir / checkpoint.TRAIN_STATE, b"garbage")
    before = tree(run_dir)
    one_line_error(run("train-translator", "-o", run_dir, "--resume", "--max-steps", "20"),
                   f"{run_dir / checkpoint.TRAIN_STATE}: refused")
    assert tree(run_dir) == before


def test_pretrain_on_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import nmtkit.data.datasets

    text = write(tmp_path / "text.txt", (DEMO / "train.en").read_text(encoding="utf-8"))

    real = os.fsync

    def full(fd):  # the disk fills up while the token ids are written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".bin.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(nmtkit.data.datasets.os, "fsync", full)
    result = run("pretrain", text, "--tokenizer-type", "char", "--vocab-size", "60", "--block-size", "16", "--d-model",
                 "16", "--heads", "2", "--layers", "1", "--max-steps", "2", "-o", tmp_path / "gpt", "--device", "cpu")
    one_line_error(result, f"{tmp_path / 'gpt' / 'data' / 'train.bin'}: cannot write: No space left on device")
    assert not list((tmp_path / "gpt").rglob("*.tmp"))


def test_evaluate_prints_its_scores_before_it_fails_to_record_them(tiny, monkeypatch):
    import nmtkit.files

    real = nmtkit.files.tempfile.mkstemp

    def refuse_run_json(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".run.json."):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(tiny["run"] / ".run.json.x.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(nmtkit.files.tempfile, "mkstemp", refuse_run_json)
    result = run("evaluate", "-m", tiny["run"], "--src", tiny["src"], "--ref", tiny["tgt"], "--beam", "1",
                 "--device", "cpu")
    assert result.stdout.startswith("BLEU ") and "CHRF" in result.stdout
    one_line_error(result, "the scores above are not recorded in the run", "run.json: cannot write")


def test_training_into_a_folder_of_other_files_needs_overwrite_and_keeps_them(tiny, tmp_path):
    project = tmp_path / "project"
    write(project / "paper.tex", "my thesis\n")
    args = ["train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], *TINY, "--max-steps", "4", "-o", project]
    one_line_error(run(*args), f"{project}: holds files that are not a run", "--overwrite")
    assert sorted(p.name for p in project.iterdir()) == ["paper.tex"]
    assert run(*args, "--overwrite").exit_code == 0
    assert (project / "paper.tex").read_text() == "my thesis\n" and (project / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------
# Hostile input: one line, exit 1 (exit 2 for a flag out of its range), never a traceback


def test_generate_takes_blank_prompts_and_refuses_meaningless_sampling(gpt):
    result = run("generate", "-m", gpt, " ", "-n", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = run("generate", "-m", gpt, " ", "hello", "-n", "3", "--json", "--device", "cpu")
    assert result.exit_code == 0 and [json.loads(x)["prompt"] for x in result.stdout.splitlines()] == [" ", "hello"]
    for flags, message in ((["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
                           (["--top-p", "-1"], "--top-p must be in (0, 1], got -1.0")):
        result = run("generate", "-m", gpt, "hello", *flags, "--device", "cpu")
        one_line_error(result, message)
        assert result.stdout == ""
    for flags in (["--temperature", "nan"], ["--top-k", "-3"], ["--seed", "1e20"]):
        result = run("generate", "-m", gpt, "hello", *flags)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("flags", [["translate", "--batch-size", "0"], ["translate", "--beam", "100000"],
                                   ["train-translator", "--heads", "0"], ["train-translator", "--d-model", "0"],
                                   ["train-translator", "--layers", "0"], ["train-translator", "--dropout", "2"],
                                   ["train-translator", "--hidden-dim", "-1"], ["train-translator", "--lr", "nan"],
                                   ["finetune", "--task", "classify", "--max-len", "0"]])
def test_options_out_of_range_are_refused_by_the_parser_with_the_range(flags):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nmtkit", *flags], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: Invalid value for") and ("greater than" in line or "less than" in line), line


def test_closed_stdin_and_empty_files(tiny, tmp_path):
    import subprocess
    import sys

    tok = tiny["run"] / "tokenizer"

    def closed_stdin(*args):
        return subprocess.run([sys.executable, "-m", "nmtkit", *map(str, args)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))

    done = closed_stdin("tokenize", "-t", tok, tiny["src"])
    assert done.returncode == 0 and done.stdout.count("\n") == 24, done.stderr
    done = closed_stdin("tokenize", "-t", tok)
    assert done.returncode == 1 and done.stderr.strip() == "error: no input: stdin is closed; give input files"
    empty = write(tmp_path / "empty.txt", "")
    one_line_error(run("score", "-r", empty, "-i", empty), f"{empty}: no lines to score")


def damaged_runs(tiny, gpt, tmp_path):
    """Run folders damaged in every way tried so far: (folder, what the error must say)."""
    import pickle
    import shutil

    import torch

    def copy(src, name, change):
        folder = Path(shutil.copytree(src, tmp_path / name))
        change(folder)
        return folder

    def config(folder, edit):
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        write(folder / "config.json", json.dumps(cfg))

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def nan_weights(folder):
        weights = checkpoint.load_weights(folder / "model.safetensors")
        name = next(k for k, v in weights.items() if v.is_floating_point())
        weights[name] = torch.full_like(weights[name], float("nan"))
        checkpoint.save_weights(folder / "model.safetensors", weights)

    def bad_tied(folder):
        from safetensors.torch import load_file, save_file

        save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors",
                  metadata={"format": "pt", "nmtkit_tied": json.dumps({"x": "no-such-tensor"})})

    foreign = tmp_path / "foreign-tok"
    assert run("train-tokenizer", tiny["src"], "-o", foreign, "--model-type", "char").exit_code == 0
    cases = []
    for src, prefix in ((tiny["run"], "tr"), (gpt, "gpt")):
        cases += [
            (copy(src, f"{prefix}-null-model", lambda f: config(f, lambda c: c.update(model=None))), "'model' must be a table"),
            (copy(src, f"{prefix}-list-model", lambda f: config(f, lambda c: c.update(model=[1]))), "'model' must be a table"),
            (copy(src, f"{prefix}-no-model", lambda f: config(f, lambda c: c.pop("model"))), "'model' must be a table"),
            (copy(src, f"{prefix}-kind", lambda f: config(f, lambda c: c.update(kind="robot"))), "unknown kind 'robot'"),
            (copy(src, f"{prefix}-negative", lambda f: config(f, lambda c: c["model"].update(d_model=-4))),
             "d_model must be at least 1"),
            (copy(src, f"{prefix}-absurd", lambda f: config(f, lambda c: c["model"].update(d_model=10**12))),
             "d_model must be at most"),
            (copy(src, f"{prefix}-pickle", lambda f: write(f / "model.safetensors", pickle.dumps(Payload()))),
             "not a valid safetensors weights file"),
            (copy(src, f"{prefix}-truncated", lambda f: write(f / "model.safetensors", (f / "model.safetensors")
                                                               .read_bytes()[:100])), "not a valid safetensors"),
            (copy(src, f"{prefix}-nan", nan_weights), "holds NaN or infinite values"),
            (copy(src, f"{prefix}-tied", bad_tied), "tied-weight record names tensors the file does not hold"),
            (copy(src, f"{prefix}-foreign-tok", lambda f: (shutil.rmtree(f / "tokenizer"),
                                                            shutil.copytree(foreign, f / "tokenizer"))),
             "this is not the run's own tokenizer"),
        ]
    return cases, marker


def test_damaged_run_folders_are_one_line_through_every_command(tiny, gpt, tmp_path):
    cases, marker = damaged_runs(tiny, gpt, tmp_path)
    for folder, message in cases:
        if folder.name.startswith("tr-"):
            commands = [["translate", "-m", folder], ["classify", "-m", folder]]
        else:
            commands = [["generate", "-m", folder, "hi", "-n", "2"], ["classify", "-m", folder]]
        for args in commands:
            result = run(*args, "--device", "cpu", input="hello\n")
            line = one_line_error(result)
            if args[0] != "classify":  # classify may first say that the run is not a classifier
                assert message in line, (folder.name, line)
        result = run("info", folder)
        assert result.exit_code in (0, 1) and "Traceback" not in result.output, (folder.name, result.output)
    assert not marker.exists()


def test_a_training_state_with_the_wrong_keys_is_refused_and_nothing_rewritten(tiny, tmp_path):
    import shutil

    import torch

    run_dir = shutil.copytree(tiny["run"], tmp_path / "run")
    torch.save({"x": 1}, run_dir / checkpoint.TRAIN_STATE)
    before = tree(run_dir)
    one_line_error(run("train-translator", "-o", run_dir, "--resume", "--max-steps", "20"),
                   "not a training state nmtkit wrote")
    assert tree(run_dir) == before


@pytest.mark.parametrize("content, message", [
    (b'[model]\nd_model = -4\n', "d_model must be at least 1"),
    (b'model = 5\n', "must be a table of settings"),
    (b'[train]\nlr = nan\n', "lr must be a finite number"),
    (b'[train]\nlr = inf\n', "lr must be a finite number"),
    (b'[train]\nwarmup = 5\neval_every = "ten"\n', "eval_every must be an integer"),
    (b'\xff\xfe[train]\n', "not a UTF-8 text file"),
    (b'[model]\nunknown = 1\n', "unknown setting(s) unknown"),
    (b'[model]\nmax_positions = 8\n', "max_positions 8 is shorter than --max-len 256"),
    (b'[model]\nd_model = 65536\nff_dim = 1048576\nencoder_layers = 1024\n', "does not fit in this machine's memory"),
])
def test_bad_settings_files_are_one_line(tiny, tmp_path, content, message):
    settings = write(tmp_path / "s.toml", content)
    result = run("train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], "--settings", settings, "--max-steps",
                 "2", "--vocab-size", "100", "--tokenizer-type", "char", "-o", tmp_path / "run", "--device", "cpu")
    one_line_error(result, message)


def test_a_settings_file_may_start_with_a_byte_order_mark(tiny, tmp_path):
    settings = write(tmp_path / "s.toml", "\ufeff[train]\nmax-steps = 2\neval-every = 2\n".encode("utf-8"))
    result = run("train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], "--settings", settings, *TINY,
                 "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output


def test_a_tokenizer_with_other_special_ids_is_refused(tmp_path):
    import sentencepiece as spm

    corpus = write(tmp_path / "c.txt", "the cat sat on the mat\n" * 50)
    folder = tmp_path / "foreign"
    folder.mkdir()
    spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=20,
                                   model_type="char", minloglevel=2)  # sentencepiece's own ids: unk 0, bos 1, eos 2
    one_line_error(run("tokenize", "-t", folder, input="hello\n"),
                   "special ids (pad, unk, bos, eos) are (-1, 0, 1, 2), not nmtkit's (0, 1, 2, 3)")


# ---------------------------------------------------------------------------------------------------------
# --overwrite writes beside a user's files, never over them; averages are runs of their own (issue 26)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_overwrite_never_writes_over_a_users_file_of_a_runs_name(name, tiny, tmp_path):
    project = tmp_path / "project"
    write(project / name, "mine\n")
    write(project / "paper.tex", "my thesis\n")
    before = tree(project)
    args = ["train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], *TINY, "--max-steps", "2", "-o", project]
    one_line_error(run(*args, "--overwrite"), f"{project}: holds {name}, which a run would replace",
                   "choose another --output")  # was: 'already holds a run', or the user's file replaced
    assert tree(project) == before


def test_average_onto_itself_or_another_run_is_one_line_and_changes_nothing(tiny, tmp_path):
    before = tree(tiny["run"])
    one_line_error(run("average", "-m", tiny["run"], "--last", "2", "-o", tiny["run"]),
                   f"{tiny['run']}: is the run being averaged")  # was: PosixPath(...) and PosixPath(...) are the same file
    other = tmp_path / "other"
    assert run("train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"], *TINY, "--max-steps", "4",
               "-o", other).exit_code == 0
    kept = tree(other)
    one_line_error(run("average", "-m", tiny["run"], "--last", "2", "-o", other, "--overwrite"),
                   f"{other}: holds config.json, metrics.jsonl, model.safetensors, run.json, steps, tokenizer, "
                   "train_state.pt, which an average of checkpoints would replace")  # was: a mixed run
    assert tree(tiny["run"]) == before and tree(other) == kept


def test_an_average_keeps_tied_weights_once(tiny, tmp_path):
    from safetensors import safe_open

    avg = tmp_path / "avg"
    assert run("average", "-m", tiny["run"], "--last", "2", "-o", avg).exit_code == 0
    with safe_open(str(avg / "model.safetensors"), framework="pt") as averaged, \
            safe_open(str(tiny["run"] / "model.safetensors"), framework="pt") as trained:
        assert sorted(averaged.keys()) == sorted(trained.keys())  # the tied tables stored once, as training saved them
    info = lambda folder: json.loads(run("info", folder, "--json").stdout)["parameters"]  # noqa: E731
    assert info(avg) == info(tiny["run"])
