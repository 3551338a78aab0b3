"""The command line at its boundary: Typer's CliRunner, exit codes, stdout vs stderr, one-line errors."""

import gzip
from pathlib import Path
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nmtkit.cli import app

from conftest import DEMO, write

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_one_line_error(result, pattern):
    import re

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tok"
    result = run("train-tokenizer", "demo", "-o", out, "--vocab-size", "400", "--model-type", "bpe")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("train-tokenizer", "tokenize", "download", "info", "train-translator", "translate", "score",
                 "evaluate", "average"):
        assert name in result.stdout


def test_tokenize_stdin_pieces_ids_and_decode(tok):
    text = "I am a student.\n\n저는 학생입니다.\n"
    pieces = run("tokenize", "-t", tok, input=text)
    assert pieces.exit_code == 0
    lines = pieces.stdout.splitlines()
    assert len(lines) == 3 and lines[1] == "" and lines[0].startswith("▁I")
    ids = run("tokenize", "-t", tok, "--ids", input=text)
    assert all(x.isdigit() for x in ids.stdout.split())
    back = run("tokenize", "-t", tok, "--ids", "--decode", input=ids.stdout)
    assert back.stdout == text
    back = run("tokenize", "-t", tok, "--decode", input=pieces.stdout)
    assert back.stdout == text


def test_tokenize_files_gzip_and_output(tok, tmp_path):
    gz = tmp_path / "in.txt.gz"
    gz.write_bytes(gzip.compress(b"I am a student.\nWe like tea.\n"))
    out = tmp_path / "out.txt"
    result = run("tokenize", "-t", tok, DEMO / "test.en", gz, "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(out.read_text().splitlines()) == 102


def test_tokenize_invalid_utf8(tok, tmp_path):
    bad = write(tmp_path / "bad.txt", b"fine\n\xff\xfe\nfine again\n")
    assert_one_line_error(run("tokenize", "-t", tok, bad), r"bad\.txt:2: invalid UTF-8")
    result = run("tokenize", "-t", tok, "--on-bad-line", "skip", bad)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == "" and len(result.stdout.splitlines()) == 3
    assert "skipped 1 line(s) with invalid UTF-8" in result.stderr


def test_train_tokenizer_from_tsv_column_and_jsonl(tmp_path):
    tsv = write(tmp_path / "d.tsv", "label\tsentence\n" + "".join(f"{i % 2}\tsentence number {i}\n" for i in range(200)))
    result = run("train-tokenizer", tsv, "--column", "sentence", "-o", tmp_path / "t1", "--vocab-size", "40")
    assert result.exit_code == 0, result.output
    info = json.loads(run("info", tmp_path / "t1", "--json").stdout)
    assert info["kind"] == "tokenizer" and info["vocab_size"] == 40 and info["data"]["column"] == "sentence"
    jsonl = write(tmp_path / "d.jsonl", "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(100)))
    result = run("train-tokenizer", "--dataset", "json", "--data-files", jsonl, "--column", "text",
                 "-o", tmp_path / "t2", "--vocab-size", "20", "--model-type", "char")
    assert result.exit_code == 0, result.output


def test_train_tokenizer_settings_file_and_overrides(tmp_path):
    settings = write(tmp_path / "tok.toml", 'model_type = "bpe"\nvocab_size = 300\nseed = 7\n')
    result = run("train-tokenizer", "demo/train.en", "--settings", settings, "--vocab-size", "250", "-o", tmp_path / "t")
    assert result.exit_code == 0, result.output
    cfg = json.loads(run("info", tmp_path / "t", "--json").stdout)["config"]
    assert (cfg["model_type"], cfg["vocab_size"], cfg["seed"]) == ("bpe", 250, 7)
    bad = write(tmp_path / "bad.yaml", "vocab_sise: 100\n")
    assert_one_line_error(run("train-tokenizer", "demo", "--settings", bad, "-o", tmp_path / "x"),
                          "unknown setting\\(s\\) vocab_sise; valid settings: model_type, vocab_size")


@pytest.mark.parametrize("args, pattern", [
    (["train-tokenizer", "missing.txt", "-o", "{tmp}/x"], r"missing\.txt: no such file"),
    (["train-tokenizer", "{tmp}/empty.txt", "-o", "{tmp}/x"], r"empty\.txt: empty corpus"),
    (["train-tokenizer", "{tmp}/d.tsv", "-o", "{tmp}/x"], "needs --column"),
    (["train-tokenizer", "{tmp}/d.tsv", "-c", "text", "-o", "{tmp}/x"], r"d\.tsv:1: no column 'text'"),
    (["train-tokenizer", "{tmp}/d.jsonl", "-c", "text", "-o", "{tmp}/x"], r"d\.jsonl:2: malformed JSON"),
    (["tokenize", "-t", "{tmp}/nothing"], "no tokenizer here"),
    (["info", "{tmp}/nothing"], "no such run or tokenizer folder"),
    (["download", "nope"], "unknown corpus 'nope'"),
    (["train-tokenizer", "demo", "--on-bad-line", "ignore", "-o", "{tmp}/x"], "--on-bad-line 'ignore' is not valid"),
])
def test_bad_input_gets_one_line_error(tmp_path, args, pattern):
    write(tmp_path / "empty.txt", "\n\n")
    write(tmp_path / "d.tsv", "label\tsentence\n1\tok\n")
    write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    assert_one_line_error(run(*[a.format(tmp=tmp_path) for a in args]), pattern)


def test_download_list_and_from(shared_corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("NMTKIT_DATA", str(tmp_path))
    listing = run("download", "--list")
    assert listing.exit_code == 0 and "multi30k" in listing.stdout and "tinyshakespeare" in listing.stdout
    result = run("download", "tinyshakespeare", "--from", shared_corpora / "tinyshakespeare")
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "tinyshakespeare")
    result = run("train-tokenizer", "tinyshakespeare/input.txt", "--model-type", "char", "-o", tmp_path / "tc")
    assert result.exit_code == 0, result.output
    assert json.loads(run("info", tmp_path / "tc", "--json").stdout)["vocab_size"] == 68  # 64 characters (▁ for space, no newline) + 4 special


def test_python_dash_m(tok):
    out = subprocess.run([sys.executable, "-m", "nmtkit", "tokenize", "-t", str(tok)], input="I am a student.\n",
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("▁I")


def test_command_line_that_does_not_parse_gets_one_line():
    for args, expected in [(["tokenize"], "error: Missing option '--tokenizer' / '-t'; see nmtkit tokenize --help"),
                           (["frobnicate"], "error: No such command 'frobnicate'; see nmtkit --help")]:
        out = subprocess.run([sys.executable, "-m", "nmtkit", *args], capture_output=True, text=True)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip() == expected


def test_training_flags_come_from_the_config_dataclasses_with_each_command_s_defaults():
    """Each training flag's name, default and help come from TrainConfig (with the command's own defaults), and a
    settings file takes the same names."""
    import typer.main

    from nmtkit.config import TrainConfig, Word2VecTrainConfig, from_dict
    from nmtkit.models.configs import GPTConfig
    from nmtkit.workflows import finetune, lm

    commands = typer.main.get_command(app).commands

    def help_of(command, name):
        return next(p.help for p in commands[command].params if p.name == name)

    assert help_of("train-translator", "max_steps") == f"Optimizer steps. (default {TrainConfig.max_steps})"
    assert help_of("pretrain", "max_steps").endswith(f"(default {lm.TRAIN_DEFAULTS['max_steps']})")
    assert help_of("finetune", "lr").endswith(f"(default {finetune.TRAIN_DEFAULTS['lr']})")
    assert help_of("train-embeddings", "window").endswith(f"(default {Word2VecTrainConfig.window})")
    assert help_of("pretrain", "d_model").endswith(f"(default {GPTConfig.d_model})")  # model flags too
    assert "--warmup" in next(p for p in commands["pretrain"].params if p.name == "warmup_steps").opts
    assert "--unidirectional" in next(p for p in commands["train-translator"].params if p.name == "bidirectional").secondary_opts
    assert not any(p.name == "max_tokens" for p in commands["pretrain"].params)  # pretrain sets it from --batch-size
    assert from_dict(TrainConfig, {"warmup": 7, "max-steps": 9}).warmup_steps == 7


def test_logs_in_a_file_are_one_plain_record_per_line(tmp_path):
    """`2> train.log`: no padding, no wrapping, no progress bar; the line that matters is whole for grep."""
    import os
    import subprocess
    import sys

    from conftest import DEMO

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src"), "COLUMNS": "40"}
    with open(tmp_path / "train.log", "w") as log_file:
        done = subprocess.run([sys.executable, "-m", "nmtkit", "train-translator", "--src", str(DEMO / "train.en"),
                               "--tgt", str(DEMO / "train.ko"), "--vocab-size", "300", "--d-model", "16", "--heads", "2",
                               "--layers", "1", "--ff-dim", "32", "--max-steps", "4", "--log-every", "2", "--device",
                               "cpu", "-o", str(tmp_path / "run")], env=env, stdout=subprocess.PIPE, stderr=log_file,
                              text=True)
    assert done.returncode == 0
    lines = (tmp_path / "train.log").read_text(encoding="utf-8").splitlines()
    assert lines and all(line.split(" ", 1)[0] in ("INFO", "WARNING") for line in lines), lines
    assert not [line for line in lines if line != line.rstrip()]
    assert [line for line in lines if line.startswith("INFO step ")] == [line for line in lines if " step " in line
                                                                          and "loss" in line]
    assert len([line for line in lines if line.startswith("INFO step ")]) == 3  # steps 1, 2, 4
    (trained,) = [line for line in lines if "trained transformer" in line]
    assert "for 4 steps in" in trained and "model.safetensors holds the last step (4)" in trained
    assert not any("━" in line for line in lines)


@pytest.mark.parametrize("args, flag", [
    (["train-translator", "--src", "a.en", "--tgt", "a.ko", "--arch", "lstm"], "--arch"),
    (["train-translator", "--src", "a.en", "--tgt", "a.ko", "--schedule", "foo"], "--schedule"),
    (["pretrain", "x.txt", "--schedule", "foo"], "--schedule"),
    (["score", "ref.txt", "--tokenize", "foo"], "--tokenize"),
    (["score", "ref.txt", "--metrics", "bleu,foo"], "--metrics"),
    (["finetune", "--task", "tag"], "--task"),
    (["train-tokenizer", "demo", "--model-type", "wordpiece", "-o", "x"], "--model-type"),
])
def test_an_invalid_choice_is_a_usage_error_naming_the_flag(args, flag):
    """As click's own choices: exit 2, the flag and the valid choices in one line, before anything runs."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = subprocess.run([sys.executable, "-m", "nmtkit", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"Invalid value for '{flag}'" in line and "is not one of" in line and "Traceback" not in done.stderr


BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" if i else "l0: &l0 [x, x, x, x, x, x, x, x, x]\n"
               for i in range(6)) + "data:\n  src: *l5\n"  # 9^6 strings once expanded (the reached 2.7 GB)


@pytest.mark.parametrize("suffix, text, message", [
    (".toml", "[data]\nsrc = 5\n", "[data] src must be a string, got 5"),
    (".yaml", "data:\n  tgt_lang: 1.5\n", "[data] tgt_lang must be a string, got 1.5"),
    (".yaml", "data:\n  tgt_lang: no\n", "[data] tgt_lang must be a string (quote it: YAML reads an unquoted no"),
    (".toml", "[data]\nheader = \"no\"\n", "[data] header must be true or false, got 'no'"),
    (".toml", "[data]\nsrc_lang = \"en\"\nsrc-lang = \"de\"\n", "src_lang and src-lang are the same setting"),
    (".toml", "[train]\nmax_steps = 5\nmax-steps = 6\n", "max_steps and max-steps are the same setting; give it once"),
    (".toml", "[train]\nwarmup = 5\nwarmup_steps = 6\n", "warmup and warmup_steps are the same setting"),
    (".toml", "[train]\nlr = \"" + "9" * 5000 + "\"\n", "lr must be a finite number, got '99999"),
    (".yaml", BOMB, "YAML aliases (*name) are not accepted"),
])
def test_a_settings_file_value_is_checked_with_one_line_naming_it(tmp_path, suffix, text, message):
    from conftest import one_line_error

    settings = write(tmp_path / f"run{suffix}", text)
    result = CliRunner().invoke(app, ["train-translator", "--src", str(DEMO / "train.en"), "--tgt",
                                      str(DEMO / "train.ko"), "--settings", str(settings), "-o", str(tmp_path / "r")])
    line = one_line_error(result, message)
    assert len(line) < 400 and not (tmp_path / "r").exists()


def test_a_column_number_in_a_settings_file_is_a_column(tmp_path):
    from nmtkit.cli.core import data_options

    settings = {"data": {"src_column": 1, "tgt-column": "ko"}}
    assert data_options(Path("s.toml"), settings, src_column=None, tgt_column=None) == {"src_column": "1",
                                                                                       "tgt_column": "ko"}


def test_a_flag_overrides_the_settings_file_whatever_spelling_the_file_uses():
    from nmtkit.config import TrainConfig, with_flags
    from nmtkit.errors import ConfigError

    assert with_flags({"warmup": 5, "max-steps": 3}, {"warmup_steps": 7}, (TrainConfig,), "s.toml: [train]") == \
        {"warmup_steps": 7, "max_steps": 3}
    with pytest.raises(ConfigError, match=r"s.toml: \[train\]: warmup and warmup-steps are the same setting"):
        with_flags({"warmup": 5, "warmup-steps": 6}, {}, (TrainConfig,), "s.toml: [train]")
