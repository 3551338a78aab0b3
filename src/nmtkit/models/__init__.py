"""Models: every translator offers `encode`, `decode`, `decode_step` and `forward` (see `nmtkit.decoding`).

`build_translator(arch, settings)` is the one way to make one from the settings saved in a run folder.
Models see tensors and integers only; they never import `nmtkit.data`.
"""

from __future__ import annotations

from typing import Any

ARCHS = ("rnn", "attention", "transformer")


def translator_config(arch: str, settings: dict[str, Any], where: str = "model"):
    """The typed config for `arch` from a settings dict (unknown keys and bad values are refused)."""
    from nmtkit.config import from_dict
    from nmtkit.errors import ConfigError

    if arch == "transformer":
        from nmtkit.models.transformer import TransformerConfig

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
