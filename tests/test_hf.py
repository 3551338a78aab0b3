"""Hugging Face GPT-2 folders in and out, the byte-level BPE tokenizer, and LoRA (issue 28).

The GPT-2 here is built by `transformers` itself (2 layers, 64 dimensions, random weights) with a byte-level BPE
tokenizer trained by `tokenizers` on the demo corpus, both saved as `save_pretrained` saves them; nmtkit must
compute exactly what transformers computes with them.
"""

from __future__ import annotations

import importlib.util
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
    spans = ["Two young men play."[a:b] for a, b in zip(starts, ends)]
    assert "".join(spans) == "Twoyoungmenplay." and not any(s.startswith(" ") for s in spans)


def test_tokenize_and_build_vocab_take_the_bpe_tokenizer(gpt2_folder, tmp_path):
    text = write(tmp_path / "in.txt", "A man is eating.\n\n日本語 🚀\n")
    pieces = run_cli("tokenize", text, "-t", gpt2_folder).output.splitlines()
    assert len(pieces) == 3 and pieces[1] == ""
    bad = write(tmp_path / "bad.txt", b"one\nbad \xff byte\nthree\n")  # invalid UTF-8: as everywhere in nmtkit
    assert "bad.txt:2: invalid UTF-8" in run_cli("tokenize", bad, "-t", gpt2_folder, code=1).output
    kept = run_cli("tokenize", bad, "-t", gpt2_folder, "--on-bad-line", "skip", "--ids").stdout.split("\n")
    assert len(kept) == 4 and kept[1] == "" and kept[0] and kept[2]
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


def test_sharded_weights_load_as_one(gpt2_folder, tmp_path):
    folder = tmp_path / "sharded"
    hf_model(gpt2_folder).save_pretrained(folder, safe_serialization=True, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gpt2_folder / name, folder / name)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    ids = torch.randint(0, 400, (1, 20))
    with torch.no_grad():
        assert torch.allclose(nmtkit_gpt(folder).model(ids), nmtkit_gpt(gpt2_folder).model(ids))


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


FAST = ["--max-steps", "60", "--eval-every", "30", "--warmup-steps", "5", "--lr", "3e-3", "--batch-size", "8",
        "--dropout", "0", "--device", "cpu"]


@pytest.mark.parametrize("task", ["classify", "qa", "generate"])
def test_finetune_from_a_gpt2_folder_through_the_command_line(gpt2_folder, tiny_tasks, tmp_path, task):
    data = tiny_tasks[task]
    out = tmp_path / f"ft-{task}"
    run_cli("finetune", "--task", task, "-m", gpt2_folder, "--train", data, "--valid", data, "-o", out,
            "--max-new-tokens", "8", *FAST)
    assert (out / "tokenizer" / "tokenizer.json").is_file()  # the BPE tokenizer travels with the run
    if task == "classify":
        result = run_cli("classify", "-m", out, "--device", "cpu",
                         write(tmp_path / "in.txt", "I am happy today\n\nwhat a terrible day\n"))
        assert result.stdout.split("\n") == ["pos", "", "neg", ""]
    elif task == "qa":
        found = json.loads(run_cli("answer", "-m", out, "--context", "The cat sat on the mat. The dog ran in the park.",
                                   "-q", "Who ran?", "--json", "--device", "cpu").stdout)
        assert (found["answer"], found["start"], found["end"]) == ("The dog", 24, 31)
    else:
        result = run_cli("generate", "-m", out, "--instruction", "Repeat the word.", "--input", "cat", "-n", "8",
                         "--temperature", "0", "--device", "cpu")
        assert result.stdout == "cat cat\n"


def test_lora_adapters_merge_into_the_same_model():
    from nmtkit.models.gpt import GPTConfig
    from nmtkit.models.heads import GPTClassifier
    from nmtkit.models.lora import add_adapters, merged

    cfg = GPTConfig(vocab_size=100, block_size=16, d_model=32, heads=4, layers=3, dropout=0.0)
    torch.manual_seed(0)
    model = GPTClassifier(cfg, 3, dropout=0.0).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = add_adapters(model, rank=4, alpha=8, targets="attn,mlp")
    D = 32  # per layer: qkv r(D + 3D), out r(D + D), up r(D + 4D), down r(4D + D): 16 r D; the head D x 3 + 3
    assert trainable == 3 * 16 * 4 * D + (D * 3 + 3)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora" not in n and not n.startswith("head"))
    ids, lengths = torch.randint(0, 100, (2, 10)), torch.tensor([10, 6])
    before = model(ids, lengths)
    start = GPTClassifier(cfg, 3, dropout=0.0).eval()
    start.load_state_dict(base)
    assert torch.allclose(before, start(ids, lengths))  # B = 0: the adapted model starts as the base model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.1)
    adapted = model(ids, lengths)
    plain = GPTClassifier(cfg, 3, dropout=0.0).eval()
    plain.load_state_dict(merged(model.state_dict(), 8 / 4))
    assert not torch.allclose(adapted, before)
    assert (plain(ids, lengths) - adapted).abs().max().item() < 1e-5


def test_a_lora_run_stores_adapters_only_and_every_command_reads_it(gpt2_folder, tiny_tasks, tmp_path):
    from nmtkit import checkpoint

    data = tiny_tasks["classify"]
    out = tmp_path / "lora"
    run_cli("finetune", "--task", "classify", "-m", gpt2_folder, "--train", data, "--valid", data, "-o", out,
            "--lora-rank", "4", "--lora-targets", "attn,mlp", "--max-steps", "30", "--eval-every", "10",
            "--warmup-steps", "5", "--lr", "1e-2", "--batch-size", "8", "--dropout", "0", "--device", "cpu")
    saved = checkpoint.load_weights(out / "model.safetensors")
    assert all(".lora_" in k or k.startswith("head.") for k in saved)
    assert sum(t.numel() for t in saved.values()) == 2 * 16 * 4 * 64 + 64 * 2 + 2
    lora = json.loads(run_cli("info", out, "--json").stdout)["lora"]
    assert lora == {"rank": 4, "alpha": 8, "targets": "attn,mlp", "base": str(gpt2_folder.resolve()),
                    "stored_parameters": 2 * 16 * 4 * 64 + 64 * 2 + 2}
    losses = [json.loads(l)["valid_loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert losses[-1] < losses[0] / 2
    inputs = write(tmp_path / "in.txt", "I am happy today\nwhat a terrible day\n")
    labels = run_cli("classify", "-m", out, "--probs", "--device", "cpu", inputs).stdout
    assert [line.split("\t")[0] for line in labels.splitlines()] == ["pos", "neg"]
    assert json.loads(run_cli("evaluate", "-m", out, "--data", data, "--json", "--device", "cpu").stdout)["accuracy"] == 100.0
    run_cli("finetune", "--task", "classify", "-o", out, "--resume", "--max-steps", "40", "--device", "cpu")
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    run_cli("average", "-m", out, "--last", "2", "-o", tmp_path / "avg")
    assert run_cli("classify", "-m", tmp_path / "avg", "--device", "cpu", inputs).stdout.splitlines() == ["pos", "neg"]
    full = tmp_path / "full"
    run_cli("export", out, full, "--format", "nmtkit")
    assert any(k.startswith("body.blocks.0.self_attn.qkv.weight") for k in checkpoint.load_weights(full / "model.safetensors"))
    assert run_cli("classify", "-m", full, "--probs", "--device", "cpu", inputs).stdout == \
        run_cli("classify", "-m", out, "--probs", "--device", "cpu", inputs).stdout
    moved = tmp_path / "base-moved"
    shutil.move(str(gpt2_folder), moved)
    try:
        result = run_cli("classify", "-m", out, "--device", "cpu", inputs, code=1)
        assert "holds adapters only" in result.output and len(result.output.strip().splitlines()) == 1
        assert run_cli("classify", "-m", full, "--device", "cpu", inputs).stdout.splitlines() == ["pos", "neg"]
    finally:
        shutil.move(str(moved), gpt2_folder)


def test_export_hf_loads_in_transformers_with_equal_logits(gpt2_folder, tiny_tasks, tmp_path):
    from nmtkit.workflows.lm import LanguageModel

    out = tmp_path / "gen"
    run_cli("finetune", "--task", "generate", "-m", gpt2_folder, "--train", tiny_tasks["generate"], "-o", out,
            "--max-steps", "10", "--eval-every", "10", "--batch-size", "8", "--device", "cpu")
    exported = tmp_path / "hf-export"
    run_cli("export", out, exported, "--format", "hf")
    assert not list(exported.glob("*.bin")) and (exported / "model.safetensors").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    auto = transformers.AutoTokenizer.from_pretrained(exported)
    lm = LanguageModel(out, "cpu")
    ids = torch.tensor([auto("A man is eating. 日本")["input_ids"]])
    assert ids[0].tolist() == lm.tok.encode(["A man is eating. 日本"])[0]
    with torch.no_grad():
        assert (model(ids).logits - lm.model(ids)).abs().max().item() < 1e-4


def test_export_hf_of_a_sentencepiece_gpt(gpt, tmp_path):
    from nmtkit.workflows.lm import LanguageModel

    exported = tmp_path / "hf"
    run_cli("export", gpt, exported, "--format", "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    auto = transformers.AutoTokenizer.from_pretrained(exported)
    lm = LanguageModel(gpt, "cpu")
    text = "A man is eating.\nTwo  dogs run."
    assert auto(text)["input_ids"] == lm.tok.encode([text])[0]  # the newline piece kept, spaces collapsed
    assert auto.decode(auto(text)["input_ids"]) == lm.tok.decode([lm.tok.encode([text])[0]])[0]
    ids = torch.tensor([lm.tok.encode([text])[0]])
    with torch.no_grad():
        assert (model(ids).logits - lm.model(ids)).abs().max().item() < 1e-4


def test_a_unigram_tokenizer_exported_gives_sentencepiece_ids(demo_tokenizer, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    from nmtkit.export import _unigram_tokenizer

    _unigram_tokenizer(demo_tokenizer, tmp_path)
    exported = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    lines = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:300]
    lines += (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:300] + HOSTILE + [
        "  two   spaces  ", "ﬁ ligature ①", "a\u3000b", "   ", "\t lead"] + [f"a{c}b" for c in "\t\x0b\x0c\x85\xa0\u2028\x00\x1f\u200b\ufeff"]
    got = [e.ids for e in exported.encode_batch(lines, add_special_tokens=False)]
    assert got == demo_tokenizer.encode(lines)


def test_pretrain_goes_on_from_a_gpt2_folder(gpt2_folder, tmp_path):
    from safetensors.torch import load_file

    from nmtkit import checkpoint

    out = tmp_path / "more"
    run_cli("pretrain", DEMO / "train.en", "--init-from", gpt2_folder, "-o", out, "--max-steps", "10",
            "--eval-every", "10", "--batch-size", "4", "--lr", "1e-4", "--warmup-steps", "2", "--device", "cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["activation"] == "gelu_tanh" and config["model"]["d_model"] == 64
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    hf_bias = load_file(gpt2_folder / "model.safetensors")["transformer.h.0.ln_1.bias"]
    ours = checkpoint.load_weights(out / "model.safetensors")["blocks.0.norms.0.bias"]
    assert hf_bias.abs().max() > 0.1 and (ours - hf_bias).abs().max() < 0.02  # went on from GPT-2's weights
    refused = run_cli("pretrain", DEMO / "train.en", "--init-from", gpt2_folder, "-o", tmp_path / "wider",
                      "--d-model", "128", "--device", "cpu", code=1)
    assert "--d-model cannot change a pretrained model's architecture" in refused.output


def test_embedding_commands_read_a_gpt2_folder(gpt2_folder):
    from safetensors.torch import load_file

    from nmtkit.tokenization import load_tokenizer

    result = json.loads(run_cli("similarity", "man", "woman", "-m", gpt2_folder, "--json").output)
    tok = load_tokenizer(gpt2_folder)
    wte = load_file(gpt2_folder / "model.safetensors")["transformer.wte.weight"]
    a, b = (wte[tok.encode([w])[0]].mean(0) for w in ("man", "woman"))
    assert abs(result["cosine"] - torch.cosine_similarity(a, b, dim=0).item()) < 1e-4
    assert len(run_cli("neighbors", "man", "-m", gpt2_folder).output.strip().splitlines()) >= 5


def test_a_classifier_exports_as_gpt2_for_sequence_classification(gpt2_folder, tiny_tasks, tmp_path):
    from nmtkit.workflows.finetune import FineTuned, predict_classes

    out = tmp_path / "clf"
    run_cli("finetune", "--task", "classify", "-m", gpt2_folder, "--train", tiny_tasks["classify"], "-o", out,
            "--lora-rank", "2", "--max-steps", "5", "--eval-every", "5", "--device", "cpu")
    exported = tmp_path / "clf-hf"
    run_cli("export", out, exported, "--format", "hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    auto = transformers.AutoTokenizer.from_pretrained(exported)
    ft = FineTuned(out, "cpu")
    for text in ("I am happy today", "what a terrible day 🚀"):
        ids = auto(text)["input_ids"]
        assert ids == ft.tok.encode([text])[0] + [ft.tok.eos_id]  # the tokenizer closes the text with </s>
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits.softmax(-1)[0]
        want = predict_classes(ft.model, ft.device, [ids])[0]
        assert (got - want).abs().max().item() < 1e-5
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_a_lora_instruction_run_exports_merged(gpt2_folder, tiny_tasks, tmp_path):
    from nmtkit.workflows.lm import LanguageModel

    out = tmp_path / "gen-lora"
    run_cli("finetune", "--task", "generate", "-m", gpt2_folder, "--train", tiny_tasks["generate"], "-o", out,
            "--lora-rank", "2", "--lora-targets", "attn,mlp", "--lr", "1e-2", "--max-steps", "4", "--eval-every", "4",
            "--max-new-tokens", "4", "--device", "cpu")
    if importlib.util.find_spec("ctranslate2"):
        refused = run_cli("export", out, tmp_path / "ct2", code=1).output
        assert "a LoRA run holds adapters only; export it with --format nmtkit" in refused
    run_cli("export", out, tmp_path / "hf", "--format", "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    lm = LanguageModel(out, "cpu")
    ids = torch.tensor([lm.tok.encode(["Say hello."])[0]])
    with torch.no_grad():
        base = hf_model(gpt2_folder)(ids).logits
        got = model(ids).logits
        assert (got - lm.model(ids)).abs().max().item() < 1e-4 and (got - base).abs().max().item() > 1e-3


def test_a_qa_run_exports_as_gpt2_for_question_answering(gpt2_folder, tiny_tasks, tmp_path):
    from nmtkit.data.datasets import qa_features
    from nmtkit.data.corpora import QAExample
    from nmtkit.workflows.finetune import FineTuned, span_logits

    out = tmp_path / "qa"
    run_cli("finetune", "--task", "qa", "-m", gpt2_folder, "--train", tiny_tasks["qa"], "-o", out,
            "--max-steps", "3", "--eval-every", "3", "--device", "cpu")
    run_cli("export", out, tmp_path / "qa-hf", "--format", "hf")
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa-hf").eval()
    ft = FineTuned(out, "cpu")
    feature = qa_features(ft.tok, [QAExample("1", "", "The cat sat on the mat.", "Who sat?", ())], 64, 16)[0]
    want_start, want_end = span_logits(ft.model, ft.device, [feature])[0]
    with torch.no_grad():
        got = model(torch.tensor([feature.ids]))
    assert (got.start_logits[0] - want_start).abs().max().item() < 1e-4
    assert (got.end_logits[0] - want_end).abs().max().item() < 1e-4
