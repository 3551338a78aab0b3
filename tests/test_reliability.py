"""Reliability: killed and interrupted runs, full disks, one writer per run folder, untrusted run folders,
hostile text, out-of-memory and closed pipes. Each guarantee lives in a shared mechanism (run-folder I/O,
the training loop, the readers, the line writers); these tests hold it from the outside."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from nmtkit import checkpoint
from nmtkit.workflows import translation
from nmtkit.cli import app
from nmtkit.config import TokenizerConfig
from nmtkit.data import corpora

from conftest import DEMO, write

runner = CliRunner()
N_PAIRS = 24
TRAIN_FLAGS = ["--arch", "transformer", "--d-model", "32", "--heads", "2", "--layers", "1", "--ff-dim", "64",
               "--dropout", "0.1", "--max-steps", "120", "--eval-every", "30", "--log-every", "10",
               "--max-tokens", "400", "--lr", "3e-3", "--warmup", "10", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 demo pairs and a character tokenizer trained on them."""
    from nmtkit.tokenization import train_tokenizer

    folder = tmp_path_factory.mktemp("reliability")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    src, tgt = write(folder / "tiny.en", "\n".join(en) + "\n"), write(folder / "tiny.ko", "\n".join(ko) + "\n")
    tok = folder / "tok"
    train_tokenizer(en + ko, tok, TokenizerConfig(model_type="char", vocab_size=400))
    return {"folder": folder, "src": src, "tgt": tgt, "tok": tok}


def train_args(data, run_dir, *extra) -> list[str]:
    return ["train-translator", "--src", str(data["src"]), "--tgt", str(data["tgt"]), "--valid-src", str(data["src"]),
            "--valid-tgt", str(data["tgt"]), "--src-lang", "en", "--tgt-lang", "ko", "-t", str(data["tok"]),
            *TRAIN_FLAGS, "-o", str(run_dir), *extra]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nmtkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def straight(data):
    """The run never interrupted, and how long it took from process start to exit."""
    run_dir = data["folder"] / "straight"
    t0 = time.perf_counter()
    proc = start(train_args(data, run_dir))
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return run_dir, time.perf_counter() - t0


def same_run(a: Path, b: Path) -> None:
    """Same final and best weights, and the same metrics, step by step."""
    for name in ("steps/step-00000120.safetensors", checkpoint.WEIGHTS):
        wa, wb = checkpoint.load_weights(a / name), checkpoint.load_weights(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name

    def records(run):
        return [(r["kind"], r["step"], r.get("train_loss"), r.get("valid_loss"), r.get("bleu"))
                for r in map(json.loads, (run / checkpoint.METRICS).read_text().splitlines())]

    assert records(a) == records(b)
    assert not list(b.rglob("*.tmp")) and not (b / checkpoint.LOCK).exists()


def kill_then_resume(data, straight, run_dir: Path, moment: float) -> None:
    """SIGKILL the training `moment` seconds after its process started, then run it again with --resume."""
    proc = start(train_args(data, run_dir))
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    resumed = start(train_args(data, run_dir, "--resume"))
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err
    same_run(straight[0], run_dir)


@pytest.mark.parametrize("share", [0.15, 0.6])  # in the imports, before a checkpoint; in training, after some
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(data, straight, tmp_path, share):
    kill_then_resume(data, straight, tmp_path / "run", share * straight[1])


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(20))
def test_sigkill_at_a_random_moment_20_times(data, straight, tmp_path, trial):
    """`pytest -m slow -k random_moment`: 20 kills at moments drawn uniformly over the whole run."""
    kill_then_resume(data, straight, tmp_path / "run", random.Random(trial).uniform(0.0, straight[1]))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_says_how_to_resume_and_exits_130_or_143(data, straight, tmp_path, signum, code):
    run_dir = tmp_path / "run"
    proc = start(train_args(data, run_dir))
    metrics = run_dir / checkpoint.METRICS
    while not (metrics.exists() and '"step": 20' in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate()
    assert proc.returncode == code, err
    assert f"continue with: nmtkit train-translator --output {run_dir} --resume" in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert 20 <= step < 120 and checkpoint.load_train_state(run_dir / checkpoint.TRAIN_STATE)["loop"]["step"] == step
    assert "Traceback" not in err
    result = runner.invoke(app, ["train-translator", "--output", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    same_run(straight[0], run_dir)


def test_disk_full_gives_one_line_and_keeps_the_last_checkpoint(data, straight, tmp_path, monkeypatch):
    import nmtkit.files

    run_dir = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):
        if (run_dir / checkpoint.TRAIN_STATE).exists():  # the first checkpoint is on disk: now the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(nmtkit.files.os, "fsync", fsync)
    result = runner.invoke(app, train_args(data, run_dir))
    monkeypatch.setattr(nmtkit.files.os, "fsync", real_fsync)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "cannot write: No space left on device" in lines[-1], result.stderr
    assert str(run_dir) in lines[-1] and "Traceback" not in result.output
    assert not list(run_dir.rglob("*.tmp"))
    state = checkpoint.load_train_state(run_dir / checkpoint.TRAIN_STATE)
    assert state["loop"]["step"] == 30
    checkpoint.load_weights(run_dir / state["weights"])
    result = runner.invoke(app, ["train-translator", "--output", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    same_run(straight[0], run_dir)


def test_unwritable_output_gives_one_line(data, tmp_path, monkeypatch):
    import nmtkit.files

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "out" / ".x.tmp"))

    monkeypatch.setattr(nmtkit.files.tempfile, "mkstemp", refuse)
    result = runner.invoke(app, ["tokenize", "-t", str(data["tok"]), "-o", str(tmp_path / "out" / "pieces.txt")],
                           input="hello\n")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'out' / 'pieces.txt'}: cannot write: Permission denied " \
                                    "(the file on disk, if any, is unchanged)"


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(data, tmp_path):
    run_dir = tmp_path / "run"
    with checkpoint.lock_run(run_dir):
        holder = (run_dir / checkpoint.LOCK).read_text().strip()
        result = runner.invoke(app, train_args(data, run_dir))
        assert result.exit_code == 1
        assert result.stderr.strip() == (f"error: {run_dir}: in use by {holder}; wait for it to finish or choose "
                                         "another --output")
    assert not run_dir.exists()  # made for the lock, empty, removed with it
    run_dir.mkdir()
    write(run_dir / checkpoint.LOCK, "nmtkit pid 999999 on elsewhere since 2026-01-01T00:00:00\n")
    write(run_dir / ".model.safetensors.abc.tmp", b"half")
    result = runner.invoke(app, train_args(data, run_dir, "--max-steps", "10"))
    assert result.exit_code == 0, result.output
    assert "taking over the lock of nmtkit pid 999999" in result.stderr
    assert not (run_dir / checkpoint.LOCK).exists() and not list(run_dir.glob("*.tmp"))


def test_two_processes_one_run_folder(data, tmp_path):
    run_dir = tmp_path / "run"
    first = start(train_args(data, run_dir, "--max-steps", "100000"))
    try:
        while not (run_dir / checkpoint.CONFIG).exists():
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.02)
        second = start(train_args(data, run_dir, "--resume"))
        _, err = second.communicate()
        assert second.returncode == 1 and f"in use by nmtkit pid {first.pid} on" in err, err
    finally:
        first.kill()
        first.communicate()


# ---------------------------------------------------------------------------------------------------------
# Untrusted run folders


@pytest.fixture(scope="module")
def run(data):
    """A tiny trained translator."""
    run_dir = data["folder"] / "small"
    result = runner.invoke(app, train_args(data, run_dir, "--max-steps", "60"))
    assert result.exit_code == 0, result.output
    return run_dir


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to))


def translate_error(run_dir: Path) -> str:
    result = runner.invoke(app, ["translate", "-m", str(run_dir)], input="hello\n")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    return line


def test_untrusted_run_folders_are_refused_with_clear_errors(run, tmp_path):
    import pickle

    bad = copy_run(run, tmp_path / "shapes")
    config = json.loads((bad / checkpoint.CONFIG).read_text())
    config["model"]["ff_dim"] = 128
    write(bad / checkpoint.CONFIG, json.dumps(config))
    assert translate_error(bad) == (f"error: {bad / checkpoint.WEIGHTS}: weights do not match config.json: "
                                    "encoder.0.ff.up.weight has shape (64, 32), the config makes it (128, 32)")

    bad = copy_run(run, tmp_path / "version")
    write(bad / checkpoint.CONFIG, json.dumps({**json.loads((run / checkpoint.CONFIG).read_text()), "format_version": 7}))
    assert "format version 7 is not supported" in translate_error(bad)

    bad = copy_run(run, tmp_path / "tokenizer")
    for f in (bad / checkpoint.TOKENIZER_DIR).iterdir():
        f.unlink()
    assert translate_error(bad) == f"error: {bad / checkpoint.TOKENIZER_DIR}: no tokenizer here (expected tokenizer.model)"

    bad = copy_run(run, tmp_path / "truncated")
    weights = (bad / checkpoint.WEIGHTS).read_bytes()
    write(bad / checkpoint.WEIGHTS, weights[: len(weights) // 2])
    assert "not a valid safetensors weights file" in translate_error(bad)

    bad = copy_run(run, tmp_path / "pickle")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write(bad / checkpoint.WEIGHTS, pickle.dumps(Payload()))
    assert "not a valid safetensors weights file" in translate_error(bad)
    write(bad / checkpoint.TRAIN_STATE, pickle.dumps(Payload()))
    result = runner.invoke(app, ["train-translator", "-o", str(bad), "--resume"])
    assert result.exit_code == 1 and "refused: not a safe training-state file" in result.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# Hostile text: random bytes in, exactly one line out per line in, never a traceback

HOSTILE = st.lists(
    st.one_of(st.binary(max_size=30), st.sampled_from([b"\x00", b"\r", b"\r\n", b"\xff", b"\xc3", b"\xed\xa0\x80",
                                                       "한국어 문장".encode(), b"hello world", b"a" * 3000])),
    max_size=12,
).map(lambda parts: b"\n".join(parts) if len(parts) % 2 else b"".join(parts))


def lines_of(data: bytes) -> list[bytes]:
    """What nmtkit calls the lines of `data`: split at "\\n", one more if the last has no "\\n"."""
    lines = data.split(b"\n")
    return lines[:-1] if data.endswith(b"\n") or not data else lines


def bad_lines(data: bytes) -> list[int]:
    bad = []
    for n, line in enumerate(lines_of(data), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(n)
    return bad


def check_line_command(args: list[str], data: bytes, on_bad_line: str) -> list[bytes]:
    result = runner.invoke(app, [*args, "--on-bad-line", on_bad_line], input=data)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    bad = bad_lines(data)
    if on_bad_line == "error" and bad:
        assert result.exit_code == 1 and result.stdout_bytes == b""
        assert result.stderr.strip() == f"error: <stdin>:{bad[0]}: " + result.stderr.strip().split(": ", 2)[2]
        assert "invalid UTF-8" in result.stderr
        return []
    assert result.exit_code == 0, result.stderr
    out = result.stdout_bytes.split(b"\n")
    assert out[-1] == b"" and len(out) - 1 == len(lines_of(data))
    if bad:
        verb = "replaced the bad bytes (U+FFFD) in" if on_bad_line == "replace" else "skipped"
        report = f"<stdin>: {verb} {len(bad)} line(s) with invalid UTF-8 (first at <stdin>:{bad[0]})"
        assert report in " ".join(result.stderr.split())
    return out[:-1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=HOSTILE, on_bad_line=st.sampled_from(["error", "skip", "replace"]))
def test_readers_keep_every_line(data, on_bad_line):
    import io

    from nmtkit.errors import DataError

    bad = bad_lines(data)
    try:
        got = list(corpora.decode_lines(io.BytesIO(data), "f.txt", on_bad_line))
    except DataError as exc:
        assert on_bad_line == "error" and str(exc).startswith(f"f.txt:{bad[0]}: invalid UTF-8")
        return
    assert len(got) == len(lines_of(data)) and not (on_bad_line == "error" and bad)
    lines = lines_of(data)
    for n, (raw, text) in enumerate(zip(lines, got), 1):
        ended = n < len(lines) or data.endswith(b"\n")
        raw = raw[:-1] if ended and raw.endswith(b"\r") else raw  # "\r\n" ends a line; a lone "\r" is text
        if n in bad:
            assert text is None if on_bad_line == "skip" else text == raw.decode("utf-8", "replace")
        else:
            assert text == raw.decode("utf-8") and "\n" not in text


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=HOSTILE, on_bad_line=st.sampled_from(["error", "skip", "replace"]), ids=st.booleans())
def test_tokenize_hostile_bytes(data, on_bad_line, ids, demo_tokenizer):
    out = check_line_command(["tokenize", "-t", str(demo_tokenizer.folder), *(["--ids"] if ids else [])], data, on_bad_line)
    if on_bad_line == "skip":
        assert all(out[n - 1] == b"" for n in bad_lines(data))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=HOSTILE, on_bad_line=st.sampled_from(["error", "skip", "replace"]))
def test_translate_hostile_bytes(data, on_bad_line, run):
    check_line_command(["translate", "-m", str(run), "--beam", "2"], data, on_bad_line)


def test_output_lines_never_hold_a_line_break(demo_tokenizer):
    result = runner.invoke(app, ["tokenize", "-t", str(demo_tokenizer.folder), "--decode"], input="▁a <0x0A> ▁b\n▁c\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 2


# ---------------------------------------------------------------------------------------------------------
# Out of memory


def test_out_of_memory_in_training_names_the_batch_and_what_to_lower(data, tmp_path, monkeypatch):
    from nmtkit import objectives

    real = objectives.seq2seq_loss

    def hungry(*args, **kwargs):
        def objective(model, batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return objective

    monkeypatch.setattr(objectives, "seq2seq_loss", hungry)
    result = runner.invoke(app, train_args(data, tmp_path / "run"))
    monkeypatch.setattr(objectives, "seq2seq_loss", real)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: out of CPU memory with --max-tokens 400 per micro-batch (x1 accumulated): lower --max-tokens and "
        "raise --accumulate by the same factor to keep the batch, or lower --max-len")


def test_translation_retries_out_of_memory_batches_in_halves(run, monkeypatch):
    lines = [f"line {i} of the test" for i in range(9)]
    expected = runner.invoke(app, ["translate", "-m", str(run), "--beam", "2"], input="\n".join(lines) + "\n").stdout
    real = translation.Translator.translate_ids
    sizes = []

    def small_batches_only(self, batch, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, batch, **kwargs)

    monkeypatch.setattr(translation.Translator, "translate_ids", small_batches_only)
    result = runner.invoke(app, ["translate", "-m", str(run), "--beam", "2"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0 and result.stdout == expected
    assert sizes == [9, 4, 2, 2, 5, 2, 3, 1, 2]
    assert "out of memory on a batch of 9 with --batch-size 64, --beam 2; retrying it in halves" in \
        " ".join(result.stderr.split())

    def never_fits(self, batch, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(translation.Translator, "translate_ids", never_fits)
    result = runner.invoke(app, ["translate", "-m", str(run), "--beam", "2"], input="x\nlonger line\n")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: out of memory on line 1 (3 pieces) alone with --batch-size 64, --beam 2: lower --beam")


# ---------------------------------------------------------------------------------------------------------
# Pipes


@pytest.mark.parametrize("ids", [False, True])
def test_closed_pipe_exits_quietly(data, tmp_path, ids):
    many = write(tmp_path / "many.txt", "hello world, this is a line\n" * 20000)
    cmd = f"{sys.executable} -m nmtkit tokenize -t {data['tok']} {'--ids' if ids else ''} {many} | head -1"
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True)
    assert out.stdout.count("\n") == 1
    assert "Traceback" not in out.stderr and "Broken pipe" not in out.stderr
    assert out.returncode in (0, 141)


# ---------------------------------------------------------------------------------------------------------
# Stops that come promptly (issue 26)


def test_a_signal_during_an_evaluation_stops_it_and_saves_the_step_at_once(tmp_path):
    from nmtkit.config import TrainConfig
    from nmtkit.errors import Interrupted
    from nmtkit.models import build_translator, translator_config
    from nmtkit.objectives import seq2seq_loss
    from nmtkit.training import train
    from test_fast_path import ARCHS, BOS_ID, EOS_ID, LazyBatches, collate_pairs

    torch.manual_seed(0)
    model = build_translator("transformer", translator_config("transformer", {"src_vocab": 30, "tgt_vocab": 30,
                                                                              **ARCHS["transformer"]}))
    pairs = [([5, 6, EOS_ID], [BOS_ID, 7, 8, EOS_ID])] * 16
    batches = lambda epoch: LazyBatches([list(range(i, i + 4)) for i in range(0, 16, 4)],  # noqa: E731
                                        lambda index: collate_pairs([pairs[i][0] for i in index], [pairs[i][1] for i in index]))

    def slow_validation(model):  # a 30 s validation, signalled as it starts
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(300):
            time.sleep(0.1)
        return {"valid_loss": 1.0}

    cfg = TrainConfig(max_steps=10, eval_every=3, log_every=100, warmup_steps=1, keep_checkpoints=2)
    start = time.perf_counter()
    with pytest.raises(Interrupted) as stopped:
        train(model, seq2seq_loss(), batches, cfg=cfg, run_dir=tmp_path, device=torch.device("cpu"),
              evaluate=slow_validation)
    assert time.perf_counter() - start < 10 and stopped.value.signum == signal.SIGTERM and stopped.value.step == 3
    state = checkpoint.load_train_state(tmp_path / checkpoint.TRAIN_STATE)
    assert state["loop"]["step"] == 3 and (tmp_path / state["weights"]).is_file()
    assert '"eval"' not in (tmp_path / checkpoint.METRICS).read_text()  # the stopped evaluation is not recorded


def test_a_second_signal_stops_at_once_with_its_own_exit_status(monkeypatch):
    from nmtkit.errors import Stopped
    from nmtkit.runtime import StopRequests
    from nmtkit.workflows import translation as workflow

    with pytest.raises(Stopped) as second, StopRequests():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert second.value.signum == signal.SIGTERM

    def stopped(*args, **kwargs):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(workflow, "prepare", stopped)
    result = runner.invoke(app, ["prepare", "--src", str(DEMO / "train.en"), "--tgt", str(DEMO / "train.ko"), "-t", "x"])
    assert result.exit_code == 143 and "interrupted" in result.stderr  # was 130 whatever the signal


def test_sigterm_while_workers_prepare_exits_143_without_a_traceback(tmp_path, demo_tokenizer, prepared_cache):
    en = (DEMO / "train.en").read_bytes() * 220  # over 16 MB a side: tokenized in worker processes
    ko = (DEMO / "train.ko").read_bytes() * 220
    src, tgt = write(tmp_path / "big.en", en), write(tmp_path / "big.ko", ko)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "nmtkit", "prepare", "--src", str(src), "--tgt", str(tgt), "-t",
                             str(demo_tokenizer.folder), "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not list((prepared_cache / "prepared").glob(".*.tmp")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the workers are at work
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "interrupted" in stderr
    assert not [p for p in (prepared_cache / "prepared").iterdir() if p.is_dir()]
