"""One loss per task. An objective maps (model, batch) to (summed loss, number of items it sums over), so
the training loop can normalise over a whole accumulated (and distributed) batch exactly."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.data.batching import IGNORE
from nmtkit.tokenization import PAD_ID

Objective = Callable[[nn.Module, object], tuple[Tensor, int]]


def seq2seq_loss(label_smoothing: float = 0.0, teacher_forcing: float = 1.0) -> Objective:
    """Token-level cross-entropy of a translator under teacher forcing (padding ignored)."""

    def objective(model: nn.Module, batch) -> tuple[Tensor, int]:
        if teacher_forcing < 1.0:
            logits = model(batch.src, batch.src_mask, batch.tgt_in, teacher_forcing=teacher_forcing)
        else:
            logits = model(batch.src, batch.src_mask, batch.tgt_in)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
            reduction="sum", label_smoothing=label_smoothing,
        )  # (B, T, V) -> (B*T, V)
        return loss, batch.target_tokens

    return objective


def lm_loss() -> Objective:
    """Next-token cross-entropy of a decoder over every position whose target is not IGNORE (the prompt and
    padding of instruction tuning)."""

    def objective(model: nn.Module, batch) -> tuple[Tensor, int]:
        logits = model(batch.ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="sum", ignore_index=IGNORE)
        return loss, batch.target_tokens

    return objective


def classify_loss() -> Objective:
    """Cross-entropy of the class logits, summed over the examples."""

    def objective(model: nn.Module, batch) -> tuple[Tensor, int]:
        logits = model(batch.ids, batch.lengths)  # (B, C)
        return F.cross_entropy(logits.float(), batch.labels, reduction="sum"), batch.target_tokens

    return objective


def span_loss() -> Objective:
    """Cross-entropy of the answer's start and of its end over the positions an answer may take, summed."""

    def objective(model: nn.Module, batch) -> tuple[Tensor, int]:
        start, end = model(batch.ids)  # (B, T) each
        start = start.float().masked_fill(~batch.allowed, float("-inf"))
        end = end.float().masked_fill(~batch.allowed, float("-inf"))
        loss = F.cross_entropy(start, batch.start, reduction="sum") + F.cross_entropy(end, batch.end, reduction="sum")
        return loss, batch.target_tokens

    return objective
