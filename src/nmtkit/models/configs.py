"""The models' configs: one small frozen dataclass per model, saved inside every run folder (nanoGPT's
`GPTConfig`), each field with its default and help. They live here, apart from the models, because this module
needs no torch: the command line builds its model flags from them (`nmtkit.cli.core.config_options`) and its
help must come at once. Each model module imports its config from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from nmtkit.config import MAX_VOCAB, option
from nmtkit.errors import ConfigError


def check_fits(parameters: int, where: str) -> None:
    """Refuse a model whose float32 weights alone would not fit in this machine's memory (a damaged or absurd
    config), before anything is built."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system: nothing to compare with
        return
    if 4 * parameters > memory:
        raise ConfigError(f"{where}: a model of {parameters:,} parameters ({4 * parameters / 2**30:,.0f} GiB) does not fit "
                          f"in this machine's memory ({memory / 2**30:,.0f} GiB); check its sizes")


@dataclass(frozen=True)
class TransformerConfig:
    src_vocab: int = option(8000, "Source vocabulary size (tables are padded to a multiple of 64).", min=5,
                            max=MAX_VOCAB)
    tgt_vocab: int = option(8000, "Target vocabulary size.", min=5, max=MAX_VOCAB)
    d_model: int = option(256, "Transformer width D.", min=1, max=65536)
    heads: int = option(4, "Transformer attention heads H (D must be divisible by H).", min=1, max=1024)
    encoder_layers: int = option(3, "Transformer encoder layers.", min=1, max=1024)
    decoder_layers: int = option(3, "Transformer decoder layers.", min=1, max=1024)
    ff_dim: int = option(1024, "Transformer feed-forward inner width.", min=1, max=1 << 20)
    dropout: float = option(0.1, "Dropout.", min=0.0, max=1.0)
    attention_dropout: float = option(0.0, "Dropout on attention weights.", min=0.0, max=1.0)
    activation: Literal["relu", "gelu"] = option("relu", "Transformer feed-forward activation: relu or gelu.")
    positions: Literal["sinusoidal", "learned"] = option("sinusoidal", "Transformer positions: sinusoidal or learned.")
    max_positions: int = option(1024, "Transformer positions: the longest sentence in pieces.", min=2, max=1 << 20)
    norm: Literal["pre", "post"] = option("pre", "Transformer layer norm: pre (stable without long warmup) or post.")
    share_embeddings: bool = option(True, "One table for source, target and output (needs the joint vocabulary).")
    tie_output: bool = option(True, "Output projection = target embedding.")

    def validate(self, where: str) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"{where}: d_model={self.d_model} must be divisible by heads={self.heads}")
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ConfigError(f"{where}: share_embeddings needs one joint vocabulary (got {self.src_vocab} and {self.tgt_vocab})")
        D, F = self.d_model, self.ff_dim
        block = 4 * D * D + 2 * D * F  # attention projections and the feed-forward layer
        check_fits(self.encoder_layers * block + self.decoder_layers * (block + 4 * D * D)
                   + (self.src_vocab + 2 * self.tgt_vocab) * D + 2 * self.max_positions * D, where)


@dataclass(frozen=True)
class RNNConfig:
    src_vocab: int = option(8000, "Source vocabulary size.", min=5, max=MAX_VOCAB)
    tgt_vocab: int = option(8000, "Target vocabulary size.", min=5, max=MAX_VOCAB)
    cell: Literal["gru", "lstm"] = option("gru", "RNN cell: gru or lstm.")
    embed_dim: int = option(256, "RNN embedding size E.", min=1, max=65536)
    hidden_dim: int = option(512, "RNN hidden size Hd (per direction in the encoder).", min=1, max=65536)
    layers: int = option(1, "Stacked layers L, encoder and decoder alike (a Transformer: its encoder_layers and "
                            "decoder_layers both).", min=1, max=1024)
    bidirectional: bool = option(True, "RNN encoder reads the source both ways.", "--bidirectional/--unidirectional")
    dropout: float = option(0.2, "Dropout.", min=0.0, max=1.0)
    attention: Literal["none", "bahdanau", "luong-dot", "luong-general"] = option(
        "none", "RNN attention (--arch attention; bahdanau there): bahdanau (additive), luong-dot or luong-general.")
    input_feeding: bool = option(True, "Luong attention: feed the last attentional vector back into the decoder.")
    share_embeddings: bool = option(False, "One table for source and target (needs the joint vocabulary).")

    def validate(self, where: str) -> None:
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ConfigError(f"{where}: share_embeddings needs one joint vocabulary (got {self.src_vocab} and {self.tgt_vocab})")
        if self.layers < 1:
            raise ConfigError(f"{where}: layers must be at least 1")
        E, H, dirs = self.embed_dim, self.hidden_dim, 2 if self.bidirectional else 1
        check_fits(8 * self.layers * dirs * H * (E + H) + (self.src_vocab + 2 * self.tgt_vocab) * max(E, H), where)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = option(8000, "Real vocabulary size (the table is padded to a multiple of 64).", min=5,
                             max=MAX_VOCAB)
    block_size: int = option(256, "Context length: the most positions the model sees.", min=2, max=1 << 20)
    d_model: int = option(384, "Width D.", min=1, max=65536)
    heads: int = option(6, "Attention heads H.", min=1, max=1024)
    layers: int = option(6, "Transformer blocks.", min=1, max=1024)
    ff_dim: int = option(0, "MLP inner width (0: 4 x d_model).", min=0, max=1 << 20)
    dropout: float = option(0.2, "Dropout.", min=0.0, max=1.0)
    attention_dropout: float = option(0.0, "Dropout on attention weights.", min=0.0, max=1.0)
    activation: Literal["gelu", "gelu_tanh"] = option("gelu", "MLP activation: gelu (exact) or gelu_tanh (GPT-2's "
                                                      "approximation, gelu_new in Hugging Face).")
    norm_eps: float = option(1e-5, "Layer norm epsilon.", min=0.0, max=1.0)

    def validate(self, where: str) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"{where}: d_model={self.d_model} must be divisible by heads={self.heads}")
        if self.block_size < 2:
            raise ConfigError(f"{where}: block_size must be at least 2")
        D = self.d_model
        check_fits(self.layers * (4 * D * D + 2 * D * (self.ff_dim or 4 * D)) + (self.vocab_size + self.block_size) * D,
                   where)


@dataclass(frozen=True)
class Word2VecConfig:
    vocab_size: int = option(0, "Set from the vocabulary.", min=0, max=MAX_VOCAB)
    dim: int = option(100, "Vector size.", min=1, max=65536)
    arch: Literal["skipgram", "cbow"] = option("skipgram", "skipgram or cbow.")

    def validate(self, where: str) -> None:
        check_fits(2 * self.vocab_size * self.dim, where)
