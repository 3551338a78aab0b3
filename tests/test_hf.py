"""Hugging Face GPT-2 folders in and out, the byte-level BPE tokenizer, and LoRA (issue 28).

The GPT-2 here is built by `transformers` itself (2 layers, 64 dimensions, random weights) with a byte-level BPE
tokenizer trained by `tokenizers` on the demo corpus, both saved as `save_pretrained` saves them; nmtkit must
compute exactly what transformers computes with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import DEMO, write

transformers = pytest.importorskip("transformers", reason="the GPT-2 tests build their model with transformers")
torch = pytest.importorskip("torch")

HOSTILE = ["日本語のテキスト、そして中文。", "emoji 🚀🔥 and ZWJ 👩‍💻", "a lone\rCR", "tabs\tand  double  spaces ",
           "x" * 5000, "Ünïcödé façade — “quotes”", "   leading spaces", "a", ""]


def run_cli(*args, code: int = 0):
    from typer.testing import CliRunner

    from nmtkit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="session")
def gpt2_folder(tmp_path_factory) -> Path:
    """A 2-layer, 64-dimension GPT-2 with random weights and a 400-token byte-level BPE tokenizer, as
    save_pretrained writes them (safetensors)."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(DEMO / "train.en"), str(DEMO / "train.ko")], vocab_size=400, min_frequency=2,
              special_tokens=["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # biases and norms away from their initial 0 and 1, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def hf_model(folder):
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def nmtkit_gpt(folder):
    from nmtkit.workflows.lm import LanguageModel

    return LanguageModel(folder, "cpu")


def test_logits_equal_transformers(gpt2_folder):
    lm = nmtkit_gpt(gpt2_folder)
    ids = torch.randint(0, lm.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf_model(gpt2_folder)(ids).logits
        got = lm.model(ids)
    assert got.shape == want.shape == (3, 40, lm.cfg.vocab_size)
    assert (got - want).abs().max().item() < 1e-4


def test_greedy_generation_equals_transformers(gpt2_folder):
    from nmtkit.workflows.lm import generate_stream

    lm = nmtkit_gpt(gpt2_folder)
    prompt = "A man is"
    ids = lm.encode_prompt(prompt)
    want = hf_model(gpt2_folder).generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                          pad_token_id=lm.tok.eos_id)[0, len(ids):].tolist()
    got = [step[0] for step in lm.steps([ids], lm.seeded(0), max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0)]
    if lm.tok.eos_id in want:  # nmtkit stops at the end of text; transformers was told not to
        want = want[: want.index(lm.tok.eos_id) + 1]
    assert got == want
    text = "".join(generate_stream(lm, prompt, max_new_tokens=12, temperature=0.0))
    assert text == lm.continuation(ids, [i for i in want if i != lm.tok.eos_id])


def test_tokenizer_equals_autotokenizer_on_hostile_text(gpt2_folder):
    from nmtkit.tokenization import BPETokenizer, load_tokenizer

    tok = load_tokenizer(gpt2_folder)
    assert isinstance(tok, BPETokenizer)
    auto = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    assert len(tok) == len(auto) and tok.eos_id == auto.eos_token_id and tok.unk_id is None
    for text in HOSTILE:
        ids = tok.encode([text])[0]
        assert ids == auto(text)["input_ids"], text
        assert tok.decode([ids])[0] == text  # byte-level: every text comes back as it was
    ids, starts, ends = tok.offsets("Two young men play.")
    assert [("Two young men play."[a:b]) for a, b in zip(starts, ends)][-1].endswith(".")


def test_tokenize_and_build_vocab_take_the_bpe_tokenizer(gpt2_folder, tmp_path):
    text = write(tmp_path / "in.txt", "A man is eating.\n\n日本語 🚀\n")
    pieces = run_cli("tokenize", text, "-t", gpt2_folder).output.splitlines()
    assert len(pieces) == 3 and pieces[1] == ""
    ids = run_cli("tokenize", text, "-t", gpt2_folder, "--ids").output
    back = run_cli("tokenize", write(tmp_path / "ids.txt", ids), "-t", gpt2_folder, "--ids", "--decode").output
    assert back.splitlines() == ["A man is eating.", "", "日本語 🚀"]
    result = run_cli("build-vocab", DEMO / "train.en", "-t", gpt2_folder, "-o", tmp_path / "vocab", "--json")
    stats = json.loads(result.output)
    assert stats["vocab_size"] == 400
    assert stats["unknown_tokens"] == 0


def test_fake_hub_cache_is_found_by_name(gpt2_folder, tmp_path, monkeypatch):
    from nmtkit.errors import CheckpointError
    from nmtkit.hf import resolve

    snapshot = tmp_path / "hub" / "models--someone--tiny-gpt2" / "snapshots" / ("a" * 40)
    shutil.copytree(gpt2_folder, snapshot)
    write(tmp_path / "hub" / "models--someone--tiny-gpt2" / "refs" / "main", "a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve("someone/tiny-gpt2") == snapshot
    info = json.loads(run_cli("info", "someone/tiny-gpt2", "--json").output)
    assert info["kind"] == "gpt (Hugging Face GPT-2)" and info["config"]["model"]["layers"] == 2
    with pytest.raises(CheckpointError, match="no model of that name in the Hugging Face cache"):
        resolve("someone/not-downloaded")
    result = run_cli("generate", "-m", "nobody/nothing", "x", code=1)
    assert "never downloads" in result.output and "Traceback" not in result.output


def test_pickled_weights_are_refused(gpt2_folder, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(gpt2_folder, folder)
    (folder / "model.safetensors").unlink()
    write(folder / "pytorch_model.bin", b"\x80\x04not really a pickle")
    result = run_cli("generate", "-m", folder, "x", code=1)
    assert "pytorch_model.bin: refused: a pickle" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("change, message", [
    ({"activation_function": "swish"}, "activation_function 'swish' is not one"),
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"n_embd": 32}, "has shape"),
])
def test_mismatches_are_one_line(gpt2_folder, tmp_path, change, message):
    folder = tmp_path / "changed"
    shutil.copytree(gpt2_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    result = run_cli("generate", "-m", folder, "x", code=1)
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_tensor_is_named(gpt2_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "missing"
    shutil.copytree(gpt2_folder, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["transformer.h.1.mlp.c_fc.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("generate", "-m", folder, "x", code=1)
    assert "h.1.mlp.c_fc.weight is missing" in result.output
