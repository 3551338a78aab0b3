"""CTranslate2 export: the exported Transformer translates exactly like nmtkit's own greedy decoder, the GPT
generates the same greedy text, and the commands use an exported folder where they take a run folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from nmtkit.cli import app

from conftest import DEMO

ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
runner = CliRunner()


TRANSFORMER = ("--d-model", "64", "--heads", "4", "--ff-dim", "128", "--layers", "2")


def train(tmp, *args, model=TRANSFORMER):
    result = runner.invoke(app, ["train-translator", "--corpus", "demo", "--src-lang", "en", "--tgt-lang", "ko",
                                 "--vocab-size", "400", "--max-steps", "100", "--eval-every", "100", "--lr", "3e-3",
                                 "--warmup", "20", "--max-tokens", "2000", *model, "--device", "cpu", *args,
                                 "-o", str(tmp)])
    assert result.exit_code == 0, result.output
    return tmp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("export") / "tf")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct2") / "tf-ct2"
    result = runner.invoke(app, ["export", str(run), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "translator"
    return out


def translate(model, *extra):
    result = runner.invoke(app, ["translate", "-m", str(model), str(DEMO / "test.en"), "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_exported_greedy_output_is_identical_to_nmtkit(run, exported):
    ours, theirs = translate(run, "--beam", "1"), translate(exported, "--beam", "1")
    assert len(ours) == len((DEMO / "test.en").read_text().splitlines()) == len(theirs)
    assert ours == theirs


def test_an_undertrained_export_stops_at_the_same_length_limit(tmp_path):
    """A model that never says </s> runs to the output limit: both decoders stop after the same number of pieces."""
    run = train(tmp_path / "und", "--max-steps", "3")
    out = tmp_path / "und-ct2"
    assert runner.invoke(app, ["export", str(run), str(out)]).exit_code == 0
    for beam in ("1", "3"):
        ours, theirs = translate(run, "--beam", beam), translate(out, "--beam", beam)
        assert ours == theirs, beam
    long = [line for line in ours if len(line) > 20]
    assert long, "the model should run to its limit on some lines"


def test_evaluate_scores_an_export_like_its_run(run, exported):
    def bleu(model, *extra):
        result = runner.invoke(app, ["evaluate", "-m", str(model), "--src", str(DEMO / "test.en"), "--ref",
                                     str(DEMO / "test.ko"), "--beam", "1", "--device", "cpu", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["scores"]["bleu"]["score"]

    assert bleu(exported) == bleu(run) > 0
    assert bleu(exported, "--compute-type", "int8") > 0


@pytest.mark.parametrize("norm", ["post"])
def test_post_norm_and_learned_positions_export_exactly(tmp_path, norm):
    run = train(tmp_path / "run", "--norm", norm, "--positions", "learned", "--max-steps", "60")
    out = tmp_path / "ct2"
    assert runner.invoke(app, ["export", str(run), str(out)]).exit_code == 0
    assert translate(run, "--beam", "1") == translate(out, "--beam", "1")


def test_beam_search_int8_and_n_best_run_on_the_export(exported):
    lines = translate(exported, "--beam", "4", "--compute-type", "int8", "--n-best", "2")
    assert len(lines) == len((DEMO / "test.en").read_text().splitlines())
    first = json.loads(lines[0])
    assert first["line"] == 1 and len(first["hypotheses"]) == 2
    assert first["hypotheses"][0]["score"] >= first["hypotheses"][1]["score"]


def test_gpt_export_generates_the_same_text(tmp_path):
    result = runner.invoke(app, ["pretrain", str(DEMO / "train.en"), "--vocab-size", "200", "--max-steps", "40",
                                 "--eval-every", "40", "--block-size", "32", "--d-model", "32", "--heads", "2",
                                 "--layers", "2", "--device", "cpu", "-o", str(tmp_path / "gpt")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(tmp_path / "gpt"), str(tmp_path / "gpt-ct2")])
    assert result.exit_code == 0, result.output
    greedy = ["--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]

    def generate(model, *args, stdin=None):
        result = runner.invoke(app, ["generate", "-m", str(tmp_path / model), *greedy, *args], input=stdin)
        assert result.exit_code == 0, result.output
        return result.stdout

    one = generate("gpt", "A man is")  # streamed token by token
    assert one == generate("gpt-ct2", "A man is") and len(one) > len("A man is\n")
    many = "A man is\nTwo dogs\nA woman in a red\n"  # prompts of different lengths, batched by length
    ours = [json.loads(line) for line in generate("gpt", "--json", stdin=many).splitlines()]
    theirs = [json.loads(line) for line in generate("gpt-ct2", "--json", stdin=many).splitlines()]
    assert ours == theirs and [r["prompt"] for r in ours] == many.splitlines()
    assert generate("gpt-ct2", "--compute-type", "int8", "A man is").startswith("A man is")
    sampled = ["--temperature", "1", "--top-k", "20", "--seed", "3", "--num-samples", "2", "--json"]
    assert generate("gpt-ct2", *sampled, stdin=many) == generate("gpt-ct2", *sampled, stdin=many)  # seeded
    result = runner.invoke(app, ["translate", "-m", str(tmp_path / "gpt-ct2")], input="A man\n")
    assert result.exit_code == 1 and "a CTranslate2 export of a 'gpt' run" in result.stderr
    result = runner.invoke(app, ["generate", "-m", str(tmp_path / "gpt-ct2"), "--max-new-tokens", "100", "A man"])
    assert result.exit_code == 0 and "the CTranslate2 export has 32 positions: at most" in " ".join(result.stderr.split())


def test_export_refuses_what_it_cannot_export(run, exported, tmp_path):
    rnn = train(tmp_path / "rnn", "--arch", "rnn", "--max-steps", "5", model=("--embed-dim", "16", "--hidden-dim", "16"))
    result = runner.invoke(app, ["export", str(rnn), str(tmp_path / "out")])
    assert result.exit_code == 1 and "CTranslate2 export is for Transformers" in result.stderr
    result = runner.invoke(app, ["export", str(run), str(exported)])
    assert result.exit_code == 1 and "exists and is not empty" in result.stderr
    result = runner.invoke(app, ["translate", "-m", str(run), "--compute-type", "int8"], input="hello\n")
    assert result.exit_code == 1 and "--compute-type is for CTranslate2 exports" in result.stderr
    result = runner.invoke(app, ["generate", "-m", str(exported), "hello"])  # a translator's export
    assert result.exit_code == 1 and "a CTranslate2 export of a 'translator' run" in result.stderr
