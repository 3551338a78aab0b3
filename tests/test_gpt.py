"""Upstream: the GPT decoder, sampling, pretraining data and the pretrain/generate commands."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from nmtkit.data.sources import TextSource
from nmtkit.workflows import lm
from nmtkit.cli import app
from nmtkit.config import TokenizerConfig
from nmtkit.decoding import pick, sample_stream
from nmtkit.models.gpt import GPT, GPTConfig

from conftest import DEMO, write

runner = CliRunner()


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 40, "block_size": 32, "d_model": 32, "heads": 4, "layers": 2, "dropout": 0.0, **kw})).eval()


def test_cache_equals_full_forward_and_tied_output():
    model = tiny_gpt()
    ids = torch.randint(4, 40, (3, 12))
    full = model(ids)
    logits, cache = model.decode_step(ids[:, :5])  # prefill the prompt
    steps = [logits]
    for t in range(5, 12):
        logits, cache = model.decode_step(ids[:, : t + 1], None, cache)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-5)
    assert model.out.weight is model.embed.weight and full.shape == (3, 12, 40)


def test_causal_the_future_does_not_change_the_past():
    model = tiny_gpt()
    a = torch.randint(4, 40, (1, 10))
    b = a.clone()
    b[0, 6:] = 5
    torch.testing.assert_close(model(a)[0, :6], model(b)[0, :6])


def test_greedy_sampling_matches_argmax_without_cache():
    model = tiny_gpt()
    prompt = torch.randint(4, 40, (2, 4))
    sampled = torch.stack(list(sample_stream(model, prompt, max_new_tokens=8, temperature=0)), 1)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(sampled, seq[:, 4:])


def test_pick_rules_on_known_distributions():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(pick(logits, 1.0, 2, 1.0, g).tolist()) == {0, 1}  # top-k 2
    assert set(pick(logits, 1.0, 0, 0.7, g).tolist()) == {0, 1}  # nucleus: 0.5 + 0.3 reaches 0.7
    assert set(pick(logits, 1.0, 0, 0.4, g).tolist()) == {0}  # the first token alone reaches 0.4
    assert torch.equal(pick(logits, 0.0, 0, 1.0), torch.zeros(2000, dtype=torch.long))  # temperature 0: greedy
    counts = torch.bincount(pick(logits, 1.0, 0, 1.0, g), minlength=4) / 2000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)
    cold = torch.bincount(pick(logits, 0.25, 0, 1.0, g), minlength=4) / 2000  # low temperature sharpens
    assert cold[0] > 0.85


def test_split_documents_cuts_at_the_exact_character():
    from nmtkit.data.datasets import split_documents

    parts = list(split_documents(["abcdef", "ghij"], valid_chars=3, total_chars=10))
    assert parts == [("train", "abcdef"), ("train", "g"), ("valid", "hij")]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    text = write(folder / "text.txt", (DEMO / "train.en").read_text(encoding="utf-8"))
    summary = lm.pretrain(
        run_dir=folder / "run", source=TextSource(inputs=(str(text),)), model_settings={"block_size": 48, "d_model": 64, "heads": 4,
                                                                      "layers": 2, "dropout": 0.0},
        train_settings={"max_steps": 150, "eval_every": 50, "log_every": 10, "warmup_steps": 10, "lr": 3e-3},
        batch_size=16, tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=60), device="cpu")
    return folder, summary


def test_pretraining_lowers_the_loss_and_reports_bits_per_char(gpt_run):
    folder, summary = gpt_run
    metrics = [json.loads(l) for l in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert train[-1]["train_loss"] < train[0]["train_loss"] * 0.6
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]
    meta = json.loads((folder / "run" / "data" / "meta.json").read_text())
    # char tokenizer: about one token per character, so bits per char is close to loss / ln 2
    assert evals[-1]["bits_per_char"] == pytest.approx(evals[-1]["valid_loss"] / math.log(2), rel=0.02)
    text = (DEMO / "train.en").read_text(encoding="utf-8")
    n = len(text.rstrip("\n"))
    assert meta["characters"] == n and meta["valid"]["chars"] == n - int(n * 0.9)
    assert summary["best"]["valid_loss"] == min(e["valid_loss"] for e in evals)


def test_token_cache_is_reused_until_text_or_tokenizer_changes(gpt_run):
    folder, _ = gpt_run
    from nmtkit.tokenization import Tokenizer

    run = folder / "run"
    tok = Tokenizer(run / "tokenizer")
    spec = TextSource(inputs=(str(folder / "text.txt"),))
    before = (run / "data" / "train.bin").stat().st_mtime_ns
    lm.prepare_lm_data(run, spec, tok, 0.1)
    assert (run / "data" / "train.bin").stat().st_mtime_ns == before  # not rewritten
    lm.prepare_lm_data(run, spec, tok, 0.2)  # a different split re-tokenizes
    assert json.loads((run / "data" / "meta.json").read_text())["valid_fraction"] == 0.2
    lm.prepare_lm_data(run, spec, tok, 0.1)


def test_newlines_survive_tokenization(gpt_run):
    folder, _ = gpt_run
    from nmtkit.data.datasets import load_stream

    run = folder / "run"
    model = lm.LanguageModel(run, "cpu")
    meta = json.loads((run / "data" / "meta.json").read_text())
    ids = load_stream(run / "data", "train", meta["dtype"])[:200].tolist()
    text = (DEMO / "train.en").read_text(encoding="utf-8")
    assert model.decode(ids).startswith(text[:100])


def test_a_continuation_keeps_the_space_that_opens_it(gpt_run):
    """ "My mother" continued by "▁likes" is "My mother likes": decoded alone, sentencepiece drops that space
    (generate printed "My motherlikes math.")."""
    model = lm.LanguageModel(gpt_run[0] / "run", "cpu")
    prompt = model.encode_prompt("My mother")
    (likes,) = model.tok.encode([" likes math."])
    assert model.decode(likes) == "likes math."  # what the old code printed after the prompt
    assert model.continuation(prompt, likes) == " likes math."
    (rest,) = model.tok.encode(["My mother likes math."])
    assert rest[: len(prompt)] == prompt and model.continuation(prompt, rest[len(prompt):]) == " likes math."
    assert model.continuation(model.encode_prompt(""), likes) == "likes math."  # a new document opens with no space


def test_generate_command(gpt_run):
    run = gpt_run[0] / "run"
    one = runner.invoke(app, ["generate", "-m", str(run), "I am", "-n", "20", "--temperature", "0", "--device", "cpu"])
    assert one.exit_code == 0, one.output
    assert one.stdout.startswith("I am")
    again = runner.invoke(app, ["generate", "-m", str(run), "I am", "-n", "20", "--temperature", "0", "--device", "cpu"])
    assert again.stdout == one.stdout  # greedy is deterministic
    many = runner.invoke(app, ["generate", "-m", str(run), "--json", "--num-samples", "2", "-n", "10", "--seed", "3",
                               "--device", "cpu"], input="We like\nThey\n")
    records = [json.loads(l) for l in many.stdout.splitlines()]
    assert [(r["index"], r["prompt"], r["sample"]) for r in records] == [(1, "We like", 1), (1, "We like", 2), (2, "They", 1), (2, "They", 2)]
    same = runner.invoke(app, ["generate", "-m", str(run), "--json", "--num-samples", "2", "-n", "10", "--seed", "3",
                               "--device", "cpu"], input="We like\nThey\n")
    assert same.stdout == many.stdout  # seeded
    longer = runner.invoke(app, ["generate", "-m", str(run), "--json", "-n", "120", "--temperature", "0", "--device", "cpu"],
                           input="We\n")
    assert longer.exit_code == 0, longer.output  # past the 48-token context: the window slides


def test_sliding_window_generation_matches_recomputing_the_window():
    model = tiny_gpt(block_size=8)
    prompt = torch.randint(4, 40, (1, 3))
    out = torch.stack(list(sample_stream(model, prompt, max_new_tokens=20, temperature=0, context=8)), 1)
    seq, start = prompt, 0
    for _ in range(20):  # reference without a cache: when the window would pass 8 tokens, keep the last 4
        if seq.size(1) - start > 8:
            start = seq.size(1) - 4
        seq = torch.cat([seq, model(seq[:, start:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq[:, 3:])
