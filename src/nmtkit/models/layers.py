"""Transformer building blocks shared by the translator and the GPT: attention, feed-forward, the layer
(`Block`), positions.

Attention goes through `F.scaled_dot_product_attention` (flash / memory-efficient kernels where available)
and keeps a key/value cache for incremental decoding. Shapes use B batch, S source, T target, D model,
H heads, K = D / H per head, V vocab. What is *not* here: whole models (transformer.py, rnn.py).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # keys and values, each (B, H, t, K)


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Embedding tables are padded to a multiple of 64 rows (faster matrix multiplies); logits are cut back."""
    return (n + multiple - 1) // multiple * multiple


def cut_vocab(logits: Tensor, vocab: int) -> Tensor:
    """Logits over the padded vocabulary cut back to the real one; no cut when there is no padding (a cut
    view's backward pass would allocate a second gradient of the logits' size)."""
    return logits if logits.size(-1) == vocab else logits[..., :vocab]


class MultiHeadAttention(nn.Module):
    """Multi-head attention: self-attention (`context=None`) or cross-attention over `context`."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads, self.dropout, self.cross = heads, dropout, cross
        self.recorded: list[Tensor] | None = None  # set to a list to keep each call's weights (see record_attention)
        if cross:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, T, D) -> (B, H, T, K)

    def project_kv(self, context: Tensor) -> KV:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        context: Tensor | None = None,
        cache: KV | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, KV, Tensor | None]:
        """x (B, T, D); mask (B, 1, 1|T, S) True where attending is allowed. Returns output, new cache, weights.

        Self-attention with a cache appends this step's keys and values to it; cross-attention with a cache
        reuses the projected context (computed once per sentence).
        """
        if self.cross:
            q = self.split(self.q(x))
            k, v = cache if cache is not None else self.project_kv(context)
        else:
            B, T, D = x.shape  # one projection, viewed as q, k, v of (B, H, T, K) each
            q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
                causal = False  # one new query position sees every cached key
        p = self.dropout if self.training else 0.0
        need_weights = need_weights or self.recorded is not None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
            if causal:
                T, S = scores.shape[-2:]
                scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T), float("-inf"))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            y = F.dropout(weights, p) @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal and mask is None)
        if self.recorded is not None:
            self.recorded.append(weights.detach())
        B, H, T, K = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * K)), (k, v), weights  # (B, H, T, K) -> (B, T, D)


INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                  "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def without_init():
    """Build modules without drawing their initial weights, for a model whose every weight is loaded next
    (2.7 s of a GPT-2-small's 7 s start on 2 cores): inside, torch.nn.init's functions leave tensors as they
    are (allocated, not set), as transformers' `no_init_weights` does. Buffers computed otherwise (sinusoidal
    tables) are unaffected."""
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


@contextlib.contextmanager
def record_attention(model: nn.Module):
    """Within the block, every attention module of `model` keeps its weights (B, H, T, S) of each call, computed
    explicitly instead of by the fused kernel. Yields {module name: list of weights}, e.g.
    "decoder.1.cross_attn" for the second decoder layer's cross-attention."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    for m in modules.values():
        m.recorded = []
    try:
        yield {name: m.recorded for name, m in modules.items()}
    finally:
        for m in modules.values():
            m.recorded = None


class CPUInferenceLinear(nn.Linear):
    """An `nn.Linear` for decoding on a CPU, made by `for_cpu_inference`. One row (greedy decoding, one sentence)
    is multiplied by the weight stored transposed (in x out, contiguous), which CPU BLAS streams 1.5-2.5x faster
    than nn.Linear's (out x in); BLAS gives a single row one thread, so with n threads the columns are cut into
    n blocks multiplied as a batch (one block a thread). More rows (beams, batches, a whole source sentence) go
    through oneDNN with the weight in its own blocked layout (`packed`), 1.3-2x faster than BLAS for 2 to 32
    rows."""

    weight_t: Tensor
    packed: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.size(0) > 1 and self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        n = torch.get_num_threads() if rows.size(0) == 1 else 1  # column blocks: one a thread, for one row
        if n > 1 and self.out_features % n == 0:
            blocks = self.weight_t.view(self.in_features, n, -1).transpose(0, 1)  # (n, in, out / n), no copy
            row = rows.expand(n, 1, self.in_features)
            y = torch.bmm(row, blocks) if self.bias is None else torch.baddbmm(self.bias.view(n, 1, -1), row, blocks)
        else:
            y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)


def for_cpu_inference(model: nn.Module) -> nn.Module:
    """Turn every `nn.Linear` of an inference model into a `CPUInferenceLinear` (in place; names, values and
    state dict unchanged). The weight becomes a view of its transposed copy, so the two layouts cost one extra
    copy (none where oneDNN is missing), except for a weight tied to an embedding table, which keeps its rows
    contiguous for lookups. For a model that is no longer trained."""
    pack = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if torch.backends.mkldnn.is_available() else None
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        if type(m) is nn.Linear:
            weight = m.weight.detach()
            m.packed = pack(weight) if pack is not None else None
            m.weight_t = weight.t().contiguous()
            if id(m.weight) not in tables:
                m.weight.data = m.weight_t.t()  # same values, one storage
            m.__class__ = CPUInferenceLinear
    return model


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation (GPT-2's activation; "gelu_new" in Hugging Face)."""
    return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.up = nn.Linear(d_model, ff_dim)
        self.down = nn.Linear(ff_dim, d_model)
        self.act = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "relu": F.relu}[activation]
        self.dropout = dropout  # functional dropout and activation: no module call per layer when decoding

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.up(x))
        return self.down(F.dropout(h, self.dropout) if self.training and self.dropout else h)


class Block(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention (a translator's decoder), feed-forward;
    each wrapped in a residual connection with layer norm before (pre-norm) or after (post-norm)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float, attention_dropout: float = 0.0,
                 activation: str = "relu", pre_norm: bool = True, cross: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.pre = pre_norm
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, attention_dropout, cross=True) if cross else None
        self.ff = FeedForward(d_model, ff_dim, dropout, activation)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model, eps=norm_eps) for _ in range(3 if cross else 2))
        self.dropout = dropout

    def residual(self, x: Tensor, y: Tensor, norm: nn.Module) -> Tensor:
        """x + dropout(y), layer-normed after the sum in post-norm (pre-norm normed the sublayer's input)."""
        if self.training and self.dropout:  # not even called when decoding: many small steps
            y = F.dropout(y, self.dropout)
        return x + y if self.pre else norm(x + y)

    def forward(self, x, self_mask=None, causal=False, memory=None, memory_mask=None, cache=None):
        """x (B, T, D). cache = (self-attention KV, cross-attention KV) or None; returns x and the new cache."""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        norm_self, *norm_cross, norm_ff = self.norms
        y, self_kv, _ = self.self_attn(norm_self(x) if self.pre else x, self_mask, causal, cache=self_cache)
        x = self.residual(x, y, norm_self)
        cross_kv = None
        if self.cross_attn is not None:
            (norm,) = norm_cross
            y, cross_kv, _ = self.cross_attn(norm(x) if self.pre else x, memory_mask, context=memory, cache=cross_cache)
            x = self.residual(x, y, norm)
        x = self.residual(x, self.ff(norm_ff(x) if self.pre else x), norm_ff)
        return x, (self_kv, cross_kv)


def sinusoidal_table(n: int, d: int) -> Tensor:
    """The fixed positional encodings of Vaswani et al.: sin on even, cos on odd dimensions. (n, d)"""
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class Positions(nn.Module):
    """Adds sinusoidal or learned position vectors, starting at `offset` (the cached length when decoding)."""

    def __init__(self, kind: str, max_positions: int, d_model: int):
        super().__init__()
        self.kind, self.max_positions = kind, max_positions
        if kind == "learned":
            self.table = nn.Embedding(max_positions, d_model)
            nn.init.normal_(self.table.weight, std=0.02)
        else:
            self.register_buffer("table_", sinusoidal_table(max_positions, d_model), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.size(1)
        if offset + T > self.max_positions:
            raise ValueError(f"sequence of {offset + T} positions is longer than max_positions={self.max_positions}")
        if self.kind == "learned":
            return x + self.table(torch.arange(offset, offset + T, device=x.device))
        return x + self.table_[offset : offset + T]
