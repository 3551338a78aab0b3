"""The Transformer encoder-decoder of Vaswani et al. (2017) for translation.

Sinusoidal or learned positions, pre- or post-norm, shared source/target/output embeddings when the
vocabulary is joint, attention through `F.scaled_dot_product_attention`, and a key/value cache so decoding
one token costs one position's work. The interface every translator offers (see `nmtkit.decoding`):

    encode(src, src_mask) -> memory            src (B, S) -> {"out": (B, S, D), "mask": (B, S)}
    decode(tgt_in, memory) -> logits           teacher forcing, all positions at once: (B, T) -> (B, T, V)
    decode_step(prev, memory, cache) -> logits, cache      one step: (B, 1) -> (B, V)
    forward(src, src_mask, tgt_in) -> logits   encode + decode
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nmtkit.models.configs import TransformerConfig
from nmtkit.models.layers import Block, Positions, cut_vocab, pad_vocab


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tgt_embed = nn.Embedding(pad_vocab(cfg.tgt_vocab), D)
        self.src_embed = self.tgt_embed if cfg.share_embeddings else nn.Embedding(pad_vocab(cfg.src_vocab), D)
        self.src_pos = Positions(cfg.positions, cfg.max_positions, D)
        self.tgt_pos = Positions(cfg.positions, cfg.max_positions, D)
        block = dict(d_model=D, heads=cfg.heads, ff_dim=cfg.ff_dim, dropout=cfg.dropout,
                     attention_dropout=cfg.attention_dropout, activation=cfg.activation, pre_norm=cfg.norm == "pre")
        self.encoder = nn.ModuleList(Block(**block) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(Block(**block, cross=True) for _ in range(cfg.decoder_layers))
        self.enc_norm = nn.LayerNorm(D) if cfg.norm == "pre" else nn.Identity()
        self.dec_norm = nn.LayerNorm(D) if cfg.norm == "pre" else nn.Identity()
        self.out = nn.Linear(D, pad_vocab(cfg.tgt_vocab), bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(self._init)
        if cfg.tie_output:
            self.out.weight = self.tgt_embed.weight

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.cfg.d_model**-0.5)

    def embed(self, table: nn.Embedding, pos: Positions, ids: Tensor, offset: int = 0) -> Tensor:
        return self.drop(pos(table(ids) * math.sqrt(self.cfg.d_model), offset))  # (B, T) -> (B, T, D)

    def encode(self, src: Tensor, src_mask: Tensor) -> dict:
        """The memory: encoder output, its mask, the attention mask made of it, and each decoder layer's
        cross-attention keys and values (computed once per sentence here, so search never copies them along
        with the growing cache). When translating a batch without padding, there is no attention mask."""
        attn_mask = src_mask[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
        if not self.training and not torch.is_grad_enabled() and bool(src_mask.all()):
            attn_mask = None  # e.g. one sentence at a time: attention takes its faster unmasked path
        x = self.embed(self.src_embed, self.src_pos, src)
        for block in self.encoder:
            x, _ = block(x, self_mask=attn_mask)
        out = self.enc_norm(x)
        cross = [block.cross_attn.project_kv(out) for block in self.decoder]  # each (B, H, S, K) twice
        return {"out": out, "mask": src_mask, "attn_mask": attn_mask, "cross": cross}

    def logits(self, x: Tensor) -> Tensor:
        return cut_vocab(self.out(self.dec_norm(x)), self.cfg.tgt_vocab)  # (B, T, D) -> (B, T, V)

    def decode(self, tgt_in: Tensor, memory: dict[str, Tensor]) -> Tensor:
        x = self.embed(self.tgt_embed, self.tgt_pos, tgt_in)
        for block, cross_kv in zip(self.decoder, memory["cross"]):
            x, _ = block(x, causal=True, memory=memory["out"], memory_mask=memory["attn_mask"], cache=(None, cross_kv))
        return self.logits(x)

    def decode_step(self, prev: Tensor, memory: dict, cache: dict | None):
        """prev (B, 1) -> logits (B, V); the cache holds each layer's self-attention keys/values (the
        cross-attention ones are in the memory)."""
        offset = 0 if cache is None else cache["self"][0][0].size(2)
        x = self.embed(self.tgt_embed, self.tgt_pos, prev[:, -1:], offset)
        new_self = []
        for i, block in enumerate(self.decoder):
            self_kv = None if cache is None else cache["self"][i]
            x, (self_kv, _) = block(x, memory=memory["out"], memory_mask=memory["attn_mask"], cache=(self_kv, memory["cross"][i]))
            new_self.append(self_kv)
        return self.logits(x)[:, -1], {"self": new_self}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0) -> Tensor:
        return self.decode(tgt_in, self.encode(src, src_mask))

    def flops_per_token(self, src_len: float, tgt_len: float) -> float:
        """Training FLOPs per (source + target) token for pairs of these lengths (PaLM appendix B): 6 N per
        token of the weights it passes through (encoder for source tokens; decoder and output layer for target
        tokens), plus 12 L T D for each attention over T positions (decoder: self and cross)."""
        count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())
        D = self.cfg.d_model
        enc = 6 * count([self.encoder, self.enc_norm]) + 12 * len(self.encoder) * src_len * D
        dec = 6 * (count([self.decoder, self.dec_norm]) + self.out.weight.numel()) + 12 * len(self.decoder) * (tgt_len + src_len) * D
        return (src_len * enc + tgt_len * dec) / (src_len + tgt_len)
