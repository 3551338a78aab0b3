"""See it: attention maps are the model's weights, plots are real images, compare's table matches the runs."""

import dataclasses
import json
import sys
from statistics import mean

import pytest
import torch
from typer.testing import CliRunner

from nmtkit.data.sources import ParallelSource
from nmtkit.workflows import see
from nmtkit.cli import app
from nmtkit.config import TokenizerConfig
from nmtkit.models import attention_maps
from nmtkit.models.gpt import GPT, GPTConfig
from nmtkit.models.rnn import RNNConfig, RNNSeq2Seq
from nmtkit.models.transformer import Transformer, TransformerConfig

from conftest import DEMO, write

runner = CliRunner()
SMALL = {"transformer": {"d_model": 32, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_dim": 64, "dropout": 0.0},
         "rnn": {"embed_dim": 16, "hidden_dim": 32, "dropout": 0.0},
         "attention": {"embed_dim": 16, "hidden_dim": 32, "dropout": 0.0}}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def padded_batch():
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])  # the second sentence is padded
    return src, src != 0, torch.tensor([[2, 11, 12], [2, 13, 14]])


@pytest.mark.parametrize("model", [
    Transformer(TransformerConfig(src_vocab=20, tgt_vocab=20, **SMALL["transformer"])),
    RNNSeq2Seq(RNNConfig(src_vocab=20, tgt_vocab=20, attention="bahdanau", **SMALL["attention"])),
    RNNSeq2Seq(RNNConfig(src_vocab=20, tgt_vocab=20, attention="luong-general", **SMALL["attention"])),
])
def test_cross_attention_rows_sum_to_one_and_padding_gets_nothing(model):
    src, mask, tgt_in = padded_batch()
    maps = attention_maps(model.eval(), src, mask, tgt_in, "cross")  # (B, L, H, T, S)
    assert maps.shape[0] == 2 and maps.shape[-2:] == (3, 5)
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)
    assert torch.all(maps[1, ..., 3:] == 0)  # padded source positions
    assert torch.all(maps >= 0)


def test_self_attention_of_encoder_and_gpt():
    src, mask, tgt_in = padded_batch()
    model = Transformer(TransformerConfig(src_vocab=20, tgt_vocab=20, **SMALL["transformer"])).eval()
    maps = attention_maps(model, src, mask, tgt_in, "self")
    assert maps.shape == (2, 2, 4, 5, 5) and torch.all(maps[1, ..., 3:] == 0)
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, d_model=32, heads=4, layers=2, dropout=0.0)).eval()
    maps = attention_maps(gpt, torch.tensor([[4, 5, 6, 7]]), kind="self")
    assert maps.shape == (1, 2, 4, 4, 4)
    assert torch.all(maps.triu(1) == 0)  # causal: nothing from the future
    assert torch.allclose(maps.sum(-1), torch.ones(1, 2, 4, 4), atol=1e-5)
    with pytest.raises(ValueError, match="no cross-attention"):
        attention_maps(gpt, torch.tensor([[4, 5]]), kind="cross")


def test_recorded_weights_give_the_same_output_as_the_fused_kernel():
    from nmtkit.models.layers import record_attention

    model = Transformer(TransformerConfig(src_vocab=20, tgt_vocab=20, **SMALL["transformer"])).eval()
    src, mask, tgt_in = padded_batch()
    with torch.inference_mode():
        fused = model(src, mask, tgt_in)
        with record_attention(model) as recorded:
            explicit = model(src, mask, tgt_in)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert len(recorded) == 2 + 2 * 2 and all(len(v) == 1 for v in recorded.values())


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:24]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:24]
    spec = ParallelSource(src=str(write(folder / "t.en", "\n".join(en) + "\n")), tgt=str(write(folder / "t.ko", "\n".join(ko) + "\n")))
    result = see.compare(out_dir=folder / "cmp", train_source=dataclasses.replace(spec, src_lang="en", tgt_lang="ko"),
                               valid_source=spec, budget="60", model_settings=SMALL, device="cpu",
                               train_settings={"lr": 3e-3, "warmup_steps": 10, "eval_every": 20, "max_tokens": 1000,
                                               "log_every": 10, "label_smoothing": 0.0},
                               tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=400))
    return folder, result, en


def test_compare_table_has_one_row_per_architecture_agreeing_with_the_runs(compared):
    folder, result, _ = compared
    assert [row["arch"] for row in result["rows"]] == ["rnn", "attention", "transformer"]
    for row in result["rows"]:
        records = [json.loads(line) for line in (folder / "cmp" / row["arch"] / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r["kind"] == "eval"]
        assert row["best_valid_bleu"] == max(r["bleu"] for r in evals)
        assert row["tokens_per_s"] == round(mean(r["tokens_per_s"] for r in records if r["kind"] == "train" and r["step"] > 1))
        assert row["steps"] == 60 and row["parameters"] > 0 and row["sentences_per_s"] > 0
    assert (folder / "cmp" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second compare takes the existing runs instead of training again
    again = run("compare", "-o", folder / "cmp", "--src", folder / "t.en", "--tgt", folder / "t.ko",
                "--valid-src", folder / "t.en", "--valid-tgt", folder / "t.ko", "--device", "cpu", "--json")
    assert again.exit_code == 0, again.output
    assert [r["best_valid_bleu"] for r in json.loads(again.stdout)["rows"]] == [r["best_valid_bleu"] for r in result["rows"]]


def test_attention_command_terminal_json_and_images(compared, tmp_path):
    folder, _, en = compared
    for arch in ("attention", "transformer"):
        result = run("attention", "-m", folder / "cmp" / arch, "--src", en[0], "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert len(shown["weights"]) == len(shown["rows"]) and len(shown["weights"][0]) == len(shown["cols"])
        assert shown["cols"][-1] == "</s>" and all(abs(sum(r) - 1) < 1e-3 for r in shown["weights"])
    result = run("attention", "-m", folder / "cmp" / "transformer", "--src", en[0], "--tgt", "저는", "--head", "1",
                 "--layer", "0", "--device", "cpu", "-o", tmp_path / "map.png")
    assert result.exit_code == 0 and "head 1" in result.stdout and "</s>" in result.stdout
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("attention", "-m", folder / "cmp" / "transformer", "--src", en[0], "--device", "cpu", "-o", tmp_path / "map.svg")
    assert b"<svg" in (tmp_path / "map.svg").read_bytes()[:1000]
    result = run("attention", "-m", folder / "cmp" / "rnn", "--src", en[0], "--device", "cpu")
    assert result.exit_code == 1 and "without attention has no attention weights" in result.stderr
    result = run("attention", "-m", folder / "cmp" / "transformer", "--src", en[0], "--layer", "5", "--device", "cpu")
    assert result.exit_code == 1 and "--layer goes from 0 to 1" in result.stderr


def test_plot_command_writes_images_and_a_terminal_chart(compared, tmp_path):
    folder, _, _ = compared
    runs = [folder / "cmp" / a for a in ("rnn", "attention", "transformer")]
    result = run("plot", *runs, "--metric", "bleu", "-o", tmp_path / "bleu.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bleu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "bleu.png").stat().st_size > 1000
    assert all(a in result.stdout for a in ("rnn", "attention", "transformer"))
    result = run("plot", runs[0], "--metric", "loss")
    assert result.exit_code == 0 and any(ch in result.stdout for ch in "▁▂▃▄▅▆▇█")
    result = run("plot", runs[0], "--metric", "accuracy")
    assert result.exit_code == 1 and "no 'accuracy' values; it has:" in result.stderr


def test_images_without_matplotlib_say_how_to_install_it(compared, tmp_path, monkeypatch):
    folder, _, _ = compared
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("plot", folder / "cmp" / "rnn", "-o", tmp_path / "x.png")
    assert result.exit_code == 1 and "pip install 'nmtkit[plots]'" in result.stderr
    result = run("plot", folder / "cmp" / "rnn")  # the terminal chart needs nothing
    assert result.exit_code == 0


def test_compare_says_whether_each_architecture_differs_significantly_from_the_first(compared):
    folder, result, _ = compared
    p_values = [row["p_bleu_vs_rnn"] for row in result["rows"]]
    assert p_values[0] is None and all(0 < p <= 1 for p in p_values[1:])
    for row in result["rows"]:  # the test-set translations it was computed from stay beside the runs
        assert len((folder / "cmp" / f"{row['arch']}.hyp").read_text(encoding="utf-8").splitlines()) == 24


def test_compare_reports_tokens_per_second_of_a_run_shorter_than_log_every(tmp_path):
    from nmtkit.workflows.see import _compare_row

    run = tmp_path / "rnn"
    write(run / "run.json", json.dumps({"training": [{"parameters": 10, "steps": 3, "seconds": 1.0}]}))
    write(run / "metrics.jsonl", json.dumps({"kind": "train", "step": 1, "tokens_per_s": 1234}) + "\n"
          + json.dumps({"kind": "eval", "step": 3, "bleu": 1.5}) + "\n")
    row = _compare_row("rnn", run, {"scores": {"bleu": {"score": 1.0}, "chrf": {"score": 2.0}}, "sentences": 4,
                                    "seconds": 2.0}, True)
    assert row["tokens_per_s"] == 1234 and row["best_valid_bleu"] == 1.5
