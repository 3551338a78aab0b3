"""Translator models: shapes, the cache, padding, and attention against torch's reference."""

import pytest
import torch

from nmtkit.models import build_translator, translator_config
from nmtkit.models.layers import CPUInferenceLinear, MultiHeadAttention, for_cpu_inference, pad_vocab, sinusoidal_table

VARIANTS = [
    ("transformer", {"d_model": 32, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_dim": 64}),
    ("transformer", {"d_model": 32, "heads": 2, "ff_dim": 64, "norm": "post", "positions": "learned", "share_embeddings": False}),
    ("rnn", {"embed_dim": 16, "hidden_dim": 32}),
    ("rnn", {"embed_dim": 16, "hidden_dim": 32, "cell": "lstm", "layers": 2, "bidirectional": False}),
    ("attention", {"embed_dim": 16, "hidden_dim": 32}),
    ("attention", {"embed_dim": 16, "hidden_dim": 32, "attention": "luong-general", "cell": "lstm", "layers": 2}),
    ("attention", {"embed_dim": 16, "hidden_dim": 32, "attention": "luong-dot", "input_feeding": False}),
]
IDS = [f"{a}-{i}" for i, (a, _) in enumerate(VARIANTS)]


def make(arch, settings, vocab=50):
    torch.manual_seed(0)
    return build_translator(arch, translator_config(arch, {"src_vocab": vocab, "tgt_vocab": vocab, **settings})).eval()


def batch(B=3, S=7, T=5, vocab=50):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 5:] = False
    src[1, 5:] = 0
    return src, mask, torch.randint(4, vocab, (B, T), generator=g)


@pytest.mark.parametrize("arch, settings", VARIANTS, ids=IDS)
def test_shapes_and_padded_vocab(arch, settings):
    model = make(arch, settings)
    src, mask, tgt = batch()
    assert model(src, mask, tgt).shape == (3, 5, 50)
    assert model.tgt_embed.weight.shape[0] == pad_vocab(50) == 64


def step_by_step(model, src, mask, tgt):
    """Decoder logits for every target position, one decode_step at a time with the cache. (B, T, V)"""
    memory, cache, steps = model.encode(src, mask), None, []
    for t in range(tgt.size(1)):
        logits, cache = model.decode_step(tgt[:, : t + 1], memory, cache)
        steps.append(logits)
    return torch.stack(steps, 1)


@pytest.mark.parametrize("arch, settings", VARIANTS, ids=IDS)
def test_incremental_decoding_matches_full_decoding(arch, settings):
    model = make(arch, settings)
    src, mask, tgt = batch()
    torch.testing.assert_close(step_by_step(model, src, mask, tgt), model(src, mask, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, settings", VARIANTS, ids=IDS)
def test_padding_does_not_change_results(arch, settings):
    model = make(arch, settings)
    src, mask, tgt = batch()
    together = model(src, mask, tgt)[1]
    alone = model(src[1:2, :5], mask[1:2, :5], tgt[1:2])[0]  # the same sentence without its padding
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])  # 2: one row in column blocks
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "blas-only"])
@pytest.mark.parametrize("arch, settings", VARIANTS, ids=IDS)
def test_cpu_inference_layout_gives_the_same_results(arch, settings, onednn, threads, monkeypatch):
    model = make(arch, settings)
    src, mask, tgt = batch()
    before, keys = model(src, mask, tgt), set(model.state_dict())
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for_cpu_inference(model)
    linears = [m for m in model.modules() if isinstance(m, CPUInferenceLinear)]
    assert all((m.packed is not None) == onednn for m in linears)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert all(m.weight.data_ptr() == m.weight_t.data_ptr() for m in linears if id(m.weight) not in tied)  # no 3rd copy
    with torch.inference_mode():
        after = model(src, mask, tgt)
        alone = step_by_step(model, src[1:2, :5], mask[1:2, :5], tgt[1:2])[0]  # no padding: no attention mask
    assert set(model.state_dict()) == keys and any(isinstance(m, CPUInferenceLinear) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, before[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads, blocks", [(1, None), (2, (2, 8, 3)), (4, None)])  # 4 does not divide 6 columns
def test_one_row_is_multiplied_in_a_column_block_per_thread(threads, blocks, monkeypatch):
    torch.manual_seed(0)
    layer = for_cpu_inference(torch.nn.Sequential(torch.nn.Linear(8, 6)))[0]
    x = torch.randn(1, 1, 8)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    real, seen = torch.baddbmm, []
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(torch, "baddbmm", lambda bias, row, w: seen.append(tuple(w.shape)) or real(bias, row, w))
    torch.testing.assert_close(layer(x), expected)
    assert seen == ([blocks] if blocks else [])


def test_transformer_flops_per_token_by_hand():
    model = make("transformer", {"d_model": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 64})
    # encoder layer: qkv 3,168 + out 1,056 + ff 2,112 + 2,080 + two norms 128, final norm 64 = 8,608 weights
    # decoder layer: self 4,224 + cross 1,056 + 2,112 + 1,056 + ff 4,192 + three norms 192, final norm 64,
    # output layer 64 x 32 = 2,048: 14,944 weights; attention 12 L T D over 10 source and 6 target positions
    encoder = 6 * 8608 + 12 * 1 * 10 * 32
    decoder = 6 * 14944 + 12 * 1 * (6 + 10) * 32
    assert model.flops_per_token(10, 6) == (10 * encoder + 6 * decoder) / 16 == 70608


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    D, H = 32, 4
    ours = MultiHeadAttention(D, H).eval()
    ref = torch.nn.MultiheadAttention(D, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(2, 6, D)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, 4:] = False
    y, _, w = ours(x, mask=keep[:, None, None, :], need_weights=True)
    y_sdpa, _, _ = ours(x, mask=keep[:, None, None, :])
    y_ref, w_ref = ref(x, x, x, key_padding_mask=~keep, average_attn_weights=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_sdpa, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-5, rtol=1e-5)
    causal_ref = ref(x, x, x, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1))[0]
    torch.testing.assert_close(ours(x, causal=True)[0], causal_ref, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_known_values():
    table = sinusoidal_table(4, 6)
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert table[1, 0].item() == pytest.approx(0.841471, abs=1e-6)  # sin(1)
    assert table[1, 1].item() == pytest.approx(0.540302, abs=1e-6)  # cos(1)
    assert table[2, 2].item() == pytest.approx(torch.sin(torch.tensor(2 / 10000 ** (2 / 6))).item(), abs=1e-6)


def test_shared_embeddings_are_one_table():
    model = make("transformer", {"d_model": 32, "heads": 4, "ff_dim": 64})
    assert model.src_embed is model.tgt_embed and model.out.weight is model.tgt_embed.weight


@pytest.mark.parametrize("arch, settings, message", [
    ("transformer", {"d_model": 30, "heads": 4}, "d_model=30 must be divisible by heads=4"),
    ("transformer", {"norm": "middle"}, "norm='middle' is not valid; choose one of 'pre', 'post'"),
    ("transformer", {"depth": 3}, "unknown setting\\(s\\) depth"),
    ("rnn", {"attention": "bahdanau"}, "--arch rnn has no attention"),
    ("attention", {"attention": "none"}, "needs an attention type"),
    ("attention", {"cell": "rnn"}, "cell='rnn' is not valid; choose one of 'gru', 'lstm'"),
    ("cnn", {}, "unknown arch 'cnn'; choose one of rnn, attention, transformer"),
])
def test_bad_model_settings(arch, settings, message):
    from nmtkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        translator_config(arch, settings)


def test_without_init_draws_no_random_numbers_and_gives_init_back():
    """Inference builds its model without drawing initial weights (all are loaded next)."""
    from torch import nn

    from nmtkit.models.gpt import GPT, GPTConfig
    from nmtkit.models.layers import without_init

    torch.manual_seed(1)
    with without_init():
        GPT(GPTConfig(vocab_size=100, block_size=16, d_model=32, heads=2, layers=2))
    drawn_inside = torch.get_rng_state()
    torch.manual_seed(1)
    assert torch.equal(drawn_inside, torch.get_rng_state())  # nothing was drawn
    assert nn.init.normal_(torch.zeros(1000)).std() > 0.5  # and torch.nn.init works again after
