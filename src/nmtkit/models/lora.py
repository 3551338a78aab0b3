"""LoRA (Hu et al. 2021): fine-tune a big pretrained model by training, beside each chosen weight W (out x in), a
low-rank update B A (B: out x r, A: r x in, r small), with W frozen:

    y = x W^T + b + (x A^T B^T) * alpha / r

B starts at zero, so training starts from the pretrained model exactly. Only A, B and the task head are trained
and saved (a few MB for GPT-2); `merged` folds B A into W for inference or export, after which the model is an
ordinary one. A `LoRALinear` keeps the `nn.Linear`'s own names (weight, bias), so a state dict holds the base
weights under their usual names and the adapters beside them (`....lora_a`, `....lora_b`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# what --lora-targets names: the linear layers of every Transformer block
TARGETS = {"attn": ("self_attn.qkv", "self_attn.out"), "mlp": ("ff.up", "ff.down")}


class LoRALinear(nn.Linear):
    """An `nn.Linear` with a trainable low-rank update; made in place by `add_adapters`."""

    lora_a: nn.Parameter
    lora_b: nn.Parameter
    scaling: float

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def parse_targets(targets: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise ValueError(f"--lora-targets {targets!r}: choose from {', '.join(TARGETS)} (comma-separated)")
    return names


def add_adapters(model: nn.Module, rank: int, alpha: float, targets: str = "attn") -> int:
    """Freeze `model` but its task head (a module named `head`, if any) and give every targeted linear layer a
    rank-`rank` adapter (A random as nn.Linear's own initialisation, B zero). Returns the trainable parameters."""
    names = tuple(suffix for t in parse_targets(targets) for suffix in TARGETS[t])
    model.requires_grad_(False)
    head = getattr(model, "head", None)
    if head is not None:
        head.requires_grad_(True)
    for name, m in model.named_modules():
        if type(m) is nn.Linear and name.endswith(names):
            m.lora_a = nn.Parameter(torch.empty(rank, m.in_features, device=m.weight.device))
            m.lora_b = nn.Parameter(torch.zeros(m.out_features, rank, device=m.weight.device))
            nn.init.kaiming_uniform_(m.lora_a, a=math.sqrt(5))
            m.scaling = alpha / rank
            m.__class__ = LoRALinear
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged(weights: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """A state dict with adapters (`X.lora_a`, `X.lora_b` beside `X.weight`) as one without: W + scaling B A."""
    out = {k: v for k, v in weights.items() if not k.endswith((".lora_a", ".lora_b"))}
    for key in weights:
        if key.endswith(".lora_a"):
            layer = key[: -len(".lora_a")]
            a, b = weights[key].float(), weights[layer + ".lora_b"].float()
            out[layer + ".weight"] = out[layer + ".weight"].float() + scaling * (b @ a)
    return out
