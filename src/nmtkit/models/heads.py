"""Task heads on a pretrained GPT body (Radford et al. 2018, "transfer learning"): the body is the `GPT` of
`nmtkit.models.gpt`, unchanged, so a pretrain run's weights load into `body` as they are.

    GPTClassifier   the hidden state of each text's last token (its closing </s>, which under causal attention
                    has seen the whole text: the lecture's last-token method) -> dropout -> linear -> class logits
    GPTSpanQA       every position's hidden state -> linear -> a start and an end logit (extractive QA)

Instruction tuning needs no head: it is the GPT itself, trained on the response tokens only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmtkit.models.gpt import GPT, GPTConfig


class GPTClassifier(nn.Module):
    def __init__(self, cfg: GPTConfig, classes: int, dropout: float = 0.1):
        super().__init__()
        self.cfg = cfg
        self.body = GPT(cfg)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """ids (B, T) right-padded, lengths (B,) -> logits (B, C) from each row's last real token."""
        h, _ = self.body.hidden(ids)  # (B, T, D)
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, D)
        return self.head(self.drop(last))


class GPTSpanQA(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.body = GPT(cfg)
        self.head = nn.Linear(cfg.d_model, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B, T) -> start and end logits (B, T) each."""
        h, _ = self.body.hidden(ids)  # (B, T, D)
        logits = self.head(h)  # (B, T, 2)
        return logits[..., 0], logits[..., 1]
