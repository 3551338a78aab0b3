"""The rough edges a new user met with their own data, each through the command line as they typed it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from nmtkit.cli import app

from conftest import DEMO, error_line, write

runner = CliRunner()
CT2 = importlib.util.find_spec("ctranslate2") is not None
TINY = ["--d-model", "32", "--heads", "2", "--layers", "1", "--ff-dim", "64", "--vocab-size", "100", "--tokenizer-type",
        "char", "--device", "cpu"]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edges")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:24]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:24]
    src, tgt = write(folder / "t.en", "\n".join(en) + "\n"), write(folder / "t.ko", "\n".join(ko) + "\n")
    result = run("train-translator", "--src", src, "--tgt", tgt, "--valid-src", src, "--valid-tgt", tgt, *TINY,
                 "--max-steps", "30", "--eval-every", "10", "--lr", "3e-3", "--warmup", "5", "-o", folder / "run")
    assert result.exit_code == 0, result.output
    return {"folder": folder, "src": src, "tgt": tgt, "run": folder / "run"}


def test_plot_calls_the_lowest_perplexity_best(data):
    values = [json.loads(line)["valid_ppl"] for line in (data["run"] / "metrics.jsonl").read_text().splitlines()
              if '"eval"' in line]
    assert values[0] != min(values)
    result = run("plot", data["run"], "--metric", "valid_ppl")
    assert result.exit_code == 0, result.output
    numbers = re.findall(r"\d+(?:\.\d+)?", result.stdout.splitlines()[-1].split("run", 1)[1])
    assert numbers[:3] == [f"{values[0]:.4g}", f"{min(values):.4g}", f"{values[-1]:.4g}"], result.stdout


def test_average_says_when_it_has_fewer_checkpoints_than_asked(data, tmp_path):
    result = run("average", "-m", data["run"], "--last", "10", "-o", tmp_path / "avg")
    assert result.exit_code == 0, result.output
    assert "holds 3 step checkpoints, not 10: averaging those 3" in " ".join(result.stderr.split())


def test_evaluate_and_score_on_empty_files_are_one_line(data, tmp_path):
    empty = write(tmp_path / "empty.en", "")
    assert "no lines to score" in error_line(run("evaluate", "-m", data["run"], "--src", empty, "--ref", empty,
                                                 "--device", "cpu"))


def test_training_without_validation_data_says_what_it_keeps(data, tmp_path):
    result = run("train-translator", "--src", data["src"], "--tgt", data["tgt"], *TINY, "--max-steps", "4",
                 "--eval-every", "2", "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "no validation data (--valid-src/--valid-tgt)" in said
    assert "no validation data: model.safetensors holds the last step (4)" in said
    assert "None" not in said and "best -" not in said


def test_folders_say_what_they_are(data, tmp_path):
    tok = data["run"] / "tokenizer"
    line = error_line(run("translate", "-m", tok, input="hi\n"))
    assert line == f"error: {tok}: a tokenizer folder, but this command needs a run folder (with config.json and " \
                   "model.safetensors)"
    folder = tmp_path / "out"
    folder.mkdir()
    assert error_line(run("translate", "-m", data["run"], "-o", folder, "--device", "cpu", input="hi\n")) == \
        f"error: {folder}: is a folder; give the name of a file to write"
    comparison = tmp_path / "cmp"
    for arch in ("rnn", "transformer"):
        shutil.copytree(data["run"], comparison / arch)
    result = run("info", comparison, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["kind"].startswith("comparison")
    asked = run("train-translator", "--src", data["src"], "--tgt", data["tgt"], *TINY, "--vocab-size", "400",
                "--max-steps", "1", "-o", tmp_path / "char")
    assert asked.exit_code == 0, asked.output
    info = json.loads(run("info", tmp_path / "char", "--json").stdout)
    real = json.loads((tmp_path / "char" / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    assert info["tokenizer"]["vocab_size"] == real < 400  # what the tokenizer has, not what was asked for
    if CT2:
        assert run("export", data["run"], tmp_path / "ct2").exit_code == 0
        result = run("info", tmp_path / "ct2", "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["kind"] == "translator (CTranslate2 export)"


def test_ter_takes_sacrebleu_s_defaults(tmp_path):
    ref = write(tmp_path / "ref.en", "The cat sat on the mat .\n")
    hyp = write(tmp_path / "hyp.en", "the cat sat on the mat .\n")
    result = run("score", "-r", ref, "-i", hyp, "--metrics", "ter", "--json")
    ter = json.loads(result.stdout)["ter"]
    assert ter["score"] == 0.0 and "case:lc" in ter["signature"]


def test_generate_an_instruction_as_json(gpt):
    result = run("generate", "-m", gpt, "--instruction", "Say hi.", "--json", "-n", "4", "--temperature", "0",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["instruction"] == "Say hi." and isinstance(record["response"], str)


def test_answer_takes_the_context_as_text_a_file_or_stdin_and_refuses_an_empty_one(gpt, tmp_path):
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat on the mat.", "qas": [
        {"id": "1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}]}]}]}
    train = write(tmp_path / "squad.json", json.dumps(squad))
    result = run("finetune", "--task", "qa", "-m", gpt, "--train", train, "--valid", train, "--max-steps", "2",
                 "--eval-every", "2", "--max-len", "32", "-o", tmp_path / "qa", "--device", "cpu")
    assert result.exit_code == 0, result.output
    context = "The cat sat on the mat."
    answers = [run("answer", "-m", tmp_path / "qa", "--context", given, "-q", "Who sat?", "--json", "--device", "cpu",
                   input=stdin) for given, stdin in ((context, None), (write(tmp_path / "c.txt", context + "\n"), None),
                                                      ("-", context + "\n"))]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    assert len({json.loads(a.stdout)["answer"] for a in answers}) == 1
    empty = write(tmp_path / "empty.txt", " \n")
    assert "the context is empty" in error_line(run("answer", "-m", tmp_path / "qa", "--context", empty, "-q",
                                                    "Who sat?", "--device", "cpu"))


def test_the_progress_display_hears_of_every_step(data, tmp_path):
    from nmtkit.config import TokenizerConfig
    from nmtkit.data.sources import ParallelSource
    from nmtkit.workflows import translation

    events = []
    spec = ParallelSource(src=str(data["src"]), tgt=str(data["tgt"]), src_lang="en", tgt_lang="ko")
    translation.train_translator(run_dir=tmp_path / "run", train_source=spec, valid_source=spec, device="cpu",
                                 model_settings={"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 32},
                                 train_settings={"max_steps": 7, "eval_every": 7, "log_every": 50},
                                 tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=100), progress=events.append)
    assert [e["step"] for e in events if e["event"] in ("step", "train")] == list(range(1, 8))
    assert all("lr" in e for e in events if e["event"] == "step")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:60]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:60]
    rows = "".join(f"{a}\t{b}\n" for a, b in zip(en, ko))
    return {"folder": folder, "en": en, "ko": ko, "tsv": write(folder / "pairs.tsv", "english\tkorean\n" + rows),
            "plain": write(folder / "pairs.txt", rows),
            "jsonl": write(folder / "pairs.jsonl", "".join(json.dumps({"en": a, "ko": b}, ensure_ascii=False) + "\n"
                                                          for a, b in zip(en, ko)))}


def test_a_parallel_table_trains_a_translator_on_its_two_columns(table, tmp_path):
    args = [*TINY, "--max-steps", "2", "--device", "cpu"]
    result = run("train-translator", "--train", table["tsv"], "--src-column", "english", "--tgt-column", "korean", *args,
                 "-o", tmp_path / "tsv")
    assert result.exit_code == 0, result.output
    assert "60 training pairs" in " ".join(result.stderr.split())  # the header row is not a pair
    result = run("train-translator", "--train", table["plain"], "--delimiter", "\t", "--no-header", "--src-column", "1",
                 "--tgt-column", "2", *args, "-o", tmp_path / "plain")
    assert result.exit_code == 0, result.output
    result = run("train-translator", "--train", table["jsonl"], "--src-column", "en", "--tgt-column", "ko", *args,
                 "-o", tmp_path / "jsonl")
    assert result.exit_code == 0 and json.loads((tmp_path / "jsonl" / "config.json").read_text())["data"]["src_lang"] == "en"
    line = error_line(run("train-translator", "--train", table["tsv"], "--src-column", "english", "--tgt-column",
                          "german", *args, "-o", tmp_path / "missing"))
    assert line.endswith("no column 'german'; columns are: english, korean")
    assert not (tmp_path / "missing").exists()  # a run that failed before its first checkpoint leaves nothing
    line = error_line(run("train-translator", "--src", table["tsv"], "--tgt", table["tsv"], *args, "-o", tmp_path / "x"))
    assert "a table, not a text file of one sentence per line: give it as --train" in line


def test_a_joint_tokenizer_reads_every_column_given(table, tmp_path):
    result = run("train-tokenizer", table["tsv"], "--column", "english", "--column", "korean", "--model-type", "char",
                 "-o", tmp_path / "tok")
    assert result.exit_code == 0, result.output
    ids = run("tokenize", "-t", tmp_path / "tok", "--ids", input=table["ko"][0] + "\n" + table["en"][0] + "\n").stdout
    assert ids.count("\n") == 2 and "1" not in ids.split()  # no <unk> (id 1): both columns' characters are known


def test_help_pages_show_whole_option_names_and_plain_metavars():
    import os
    import subprocess
    import sys

    for command in ("train-tokenizer", "train-translator", "translate"):
        done = subprocess.run([sys.executable, "-m", "nmtkit", command, "--help"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0
        assert "…" not in done.stdout and "<list[str]>" not in done.stdout and "<bool>" not in done.stdout
    assert "--character-coverage FLOAT" in subprocess.run(
        [sys.executable, "-m", "nmtkit", "train-tokenizer", "--help"], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "80"}).stdout


def test_line_commands_show_progress_on_a_terminal_only(data, monkeypatch):
    from rich.console import Console

    import nmtkit.cli.core

    quiet = run("translate", "-m", data["run"], data["src"], "--beam", "1", "--device", "cpu")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # not a terminal: nothing on stderr
    monkeypatch.setattr(nmtkit.cli.core, "err", Console(stderr=True, force_terminal=True, width=100))
    shown = run("translate", "-m", data["run"], data["src"], "--beam", "1", "--device", "cpu")
    assert shown.exit_code == 0 and shown.stdout == quiet.stdout
    assert "translate" in shown.stderr and "24/24" in shown.stderr and "lines/s" in shown.stderr


def test_score_takes_positional_references_and_tests_several_systems(data, tmp_path):
    hyp = tmp_path / "hyp.ko"
    result = run("evaluate", "-m", data["run"], "--src", data["src"], "--ref", data["tgt"], "--beam", "1", "--device",
                 "cpu", "-o", hyp)
    assert result.exit_code == 0 and len(hyp.read_text(encoding="utf-8").splitlines()) == 24
    same = run("score", data["tgt"], "-i", hyp, "--metrics", "bleu", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["bleu"]["score"] >= 0
    tested = run("score", data["tgt"], "-i", data["tgt"], "-i", hyp, "--paired-bs", "--samples", "100", "--json")
    assert tested.exit_code == 0, tested.output
    found = json.loads(tested.stdout)
    assert found["test"] == "paired bootstrap" and "bs:100" in found["signatures"]["bleu"]
    assert found["systems"][0]["scores"]["bleu"]["score"] == 100.0 and found["systems"][0]["scores"]["bleu"]["p_value"] is None
    assert 0 < found["systems"][1]["scores"]["bleu"]["p_value"] <= 1
    assert "needs two systems or more" in error_line(run("score", data["tgt"], "-i", hyp, "--paired-ar"))


EXAMPLES = DEMO.parent.parent / "examples"


def test_every_example_settings_file_runs_with_a_run_in_one_file(data, gpt, tmp_path):
    """Each examples/*.toml is read by its command (flags override it: tiny sizes, the demo data)."""
    tiny = ["--max-steps", "1", "--eval-every", "1", "--device", "cpu"]
    runs = {
        "transformer-multi30k.toml": ["train-translator", "--corpus", "demo", "--src-lang", "en", "--tgt-lang", "ko",
                                      "--vocab-size", "300", "--d-model", "32", "--heads", "2", "--ff-dim", "64", "--layers",
                                      "1", "--max-len", "64", *tiny],
        "pretrain-shakespeare.toml": ["pretrain", DEMO / "train.en", "--block-size", "16", "--d-model", "16", "--heads",
                                      "2", "--layers", "1", "--batch-size", "2", *tiny],
        "word2vec.toml": ["train-embeddings", DEMO / "train.en", "--epochs", "1", "--min-count", "1", "--dim", "8"],
        "tokenizer.toml": ["train-tokenizer", DEMO / "train.en", "--vocab-size", "400"],
        "finetune-sst2.toml": ["finetune", "--task", "classify", "-m", gpt, "--train",
                               write(tmp_path / "s.tsv", "text\tlabel\n" + "good day\tpos\nbad day\tneg\n" * 20),
                               "--valid", tmp_path / "s.tsv", "--text-column", "text", "--max-len", "32", *tiny],
    }
    assert sorted(runs) == sorted(p.name for p in EXAMPLES.glob("*.toml") if p.name != "compare-cpu.toml")
    for name, args in runs.items():
        result = run(*args, "--settings", EXAMPLES / name, "-o", tmp_path / name)
        assert result.exit_code == 0, (name, result.output)


def test_a_data_table_holds_the_data_and_flags_override_it(data, tmp_path):
    settings = write(tmp_path / "run.toml", f'[data]\nsrc = "{data["src"]}"\ntgt = "{data["tgt"]}"\nvocab_size = 100\n'
                                            'tokenizer_type = "char"\n[model]\nd_model = 16\nheads = 2\nlayers = 1\n'
                                            'ff_dim = 32\n[train]\nmax_steps = 1\n')
    result = run("train-translator", "--settings", settings, "-o", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["train"]["src"] == str(data["src"])
    bad = write(tmp_path / "bad.toml", '[data]\nsource = "x"\n')
    assert "[data] has unknown key(s) source; valid: src, tgt" in error_line(
        run("train-translator", "--settings", bad, "-o", tmp_path / "bad"))
