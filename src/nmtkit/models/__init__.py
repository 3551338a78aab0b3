"""Models: every translator offers `encode`, `decode`, `decode_step` and `forward` (see `nmtkit.decoding`).

`build_translator(arch, settings)` is the one way to make one from the settings saved in a run folder.
Models see tensors and integers only; they never import `nmtkit.data`.
"""

from __future__ import annotations

from typing import Any

ARCHS = ("rnn", "attention", "transformer")


def translator_config(arch: str, settings: dict[str, Any], where: str = "model"):
    """The typed config for `arch` from a settings dict (unknown keys and bad values are refused). `layers`
    sets a Transformer's encoder_layers and decoder_layers alike, as the --layers flag does."""
    from nmtkit.config import from_dict
    from nmtkit.errors import ConfigError

    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: the model settings must be a table, got {type(settings).__name__}")
    if arch == "transformer":
        from nmtkit.models.transformer import TransformerConfig

        settings = dict(settings)
        if "layers" in settings:
            settings["encoder_layers"] = settings["decoder_layers"] = settings.pop("layers")
        return from_dict(TransformerConfig, settings, where)
    if arch in ("rnn", "attention"):
        from nmtkit.models.rnn import RNNConfig

        settings = dict(settings)
        if arch == "attention":
            settings.setdefault("attention", "bahdanau")
            if settings["attention"] == "none":
                raise ConfigError(f"{where}: --arch attention needs an attention type: bahdanau, luong-dot or luong-general")
        elif settings.get("attention", "none") != "none":
            raise ConfigError(f"{where}: --arch rnn has no attention (use --arch attention)")
        return from_dict(RNNConfig, settings, where)
    raise ConfigError(f"{where}: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def build_translator(arch: str, cfg):
    if arch == "transformer":
        from nmtkit.models.transformer import Transformer

        return Transformer(cfg)
    from nmtkit.models.rnn import RNNSeq2Seq

    return RNNSeq2Seq(cfg)


def attention_maps(model, ids, mask=None, tgt_in=None, kind: str = "cross"):
    """The attention weights a model computes, stacked as (B, L, H, T, S): layers L, heads H, queries T, keys S.

    kind "cross": a translator's decoder over the source (tgt_in under teacher forcing); the attention RNN gives
    its one alignment as L = H = 1. kind "self": a Transformer encoder's self-attention over the source, or a
    GPT's (causal) self-attention over `ids`. Padded keys get weight 0; each row sums to 1.
    """
    import torch

    from nmtkit.models.gpt import GPT
    from nmtkit.models.layers import record_attention
    from nmtkit.models.rnn import RNNSeq2Seq

    if kind not in ("cross", "self"):
        raise ValueError(f"kind {kind!r}: choose cross or self")
    with torch.inference_mode():
        if isinstance(model, RNNSeq2Seq):
            if kind == "self":
                raise ValueError("an RNN has no self-attention; its attention is the alignment (cross)")
            return model.alignments(ids, mask, tgt_in)[:, None, None]  # (B, T, S) -> (B, 1, 1, T, S)
        is_gpt = isinstance(model, GPT)
        if is_gpt and kind == "cross":
            raise ValueError("a GPT has no cross-attention; its attention is self-attention")
        with record_attention(model) as recorded:
            model(ids) if is_gpt else model(ids, mask, tgt_in)
        wanted = "self_attn" if kind == "self" else "cross_attn"
        prefix = "blocks." if is_gpt else ("encoder." if kind == "self" else "decoder.")
        layers = [w[0] for name, w in recorded.items() if name.startswith(prefix) and name.endswith(wanted)]
        return torch.stack(layers, 1)
