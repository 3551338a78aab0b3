"""A GPT-style decoder (Radford et al. 2018/2019): token and learned position embeddings, pre-norm Transformer
blocks with causal self-attention (`F.scaled_dot_product_attention`) and a GELU MLP, a final layer norm, and an
output layer tied to the token embedding. Built from the same `Block` as the translator's Transformer.

Interface (shared with the translators' decoders, see `nmtkit.decoding`):

    forward(ids) -> logits                       (B, T) -> (B, T, V), causal
    decode_step(prev, memory=None, cache) -> logits, cache
        feeds the tokens of `prev` that are not yet in the cache: the whole prompt when cache is None
        (prefill), else the last token; returns the logits of the last position (B, V)
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from nmtkit.models.configs import GPTConfig
from nmtkit.models.layers import Block, Positions, cut_vocab, pad_vocab


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.embed = nn.Embedding(pad_vocab(cfg.vocab_size), D)
        self.pos = Positions("learned", cfg.block_size, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(D, cfg.heads, cfg.ff_dim or 4 * D, cfg.dropout, cfg.attention_dropout, activation=cfg.activation,
                  norm_eps=cfg.norm_eps)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.out = nn.Linear(D, pad_vocab(cfg.vocab_size), bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 x layers)
            if name.endswith(("self_attn.out.weight", "ff.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.layers))
        self.out.weight = self.embed.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden(self, ids: Tensor, cache: list | None = None) -> tuple[Tensor, list]:
        """(B, T) -> final hidden states (B, T, D) and the per-layer key/value cache."""
        offset = 0 if cache is None else cache[0][0].size(2)
        x = self.drop(self.pos(self.embed(ids), offset))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, (kv, _) = block(x, causal=cache is None, cache=None if cache is None else (cache[i], None))
            new_cache.append(kv)
        return self.norm(x), new_cache

    def forward(self, ids: Tensor) -> Tensor:
        x, _ = self.hidden(ids)
        return cut_vocab(self.out(x), self.cfg.vocab_size)

    def decode_step(self, prev: Tensor, memory=None, cache: list | None = None):
        x, cache = self.hidden(prev if cache is None else prev[:, -1:], cache)
        return cut_vocab(self.out(x[:, -1]), self.cfg.vocab_size), cache

    def flops_per_token(self) -> float:
        """Training FLOPs per token (PaLM appendix B): 6 N plus 12 L T D for attention."""
        n = sum(p.numel() for p in self.parameters()) - self.pos.table.weight.numel()
        return 6 * n + 12 * self.cfg.layers * self.cfg.block_size * self.cfg.d_model
