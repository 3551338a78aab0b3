"""Word vectors: skip-gram and CBOW with negative sampling (Mikolov et al., 2013), and cosine geometry over
any embedding table (similarity, nearest neighbours, analogies).

word2vec keeps two tables: `embedding` holds the word vectors one explores, `context` the vectors a word has
when it is predicted. A training step takes a batch of N examples at once, with no Python loop per pair:

    skip-gram   input: the centre word            (N,)      predict: a context word + K noise words
    CBOW        input: the mean of the context    (M,)      predict: the centre word + K noise words

and applies word2vec's own plain-SGD update by hand (no autograd, no optimizer state): for each target t with
label y (1 for the true word, 0 for noise), g = lr * (y - sigmoid(h . c_t)); c_t += g * h; each input word
receives sum_t g * c_t. Noise words are shared by small groups of G examples (the idea of Ji et al.'s HogBatch
and of BlazingText): S noise words per group, each weighted K / S, give every example the same expected
gradient as K words of its own, but turn a gather per example into small matrix products, about 3x faster on a
CPU. G = 1 and S = K is word2vec exactly; G * K / S (how many examples' worth one noise row receives at once)
is kept small, since large shared updates spoil the vectors.
Letters: N examples, C input slots, G examples per group, S noise words per group, D dimensions, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.models.configs import Word2VecConfig


class Word2Vec(nn.Module):
    def __init__(self, cfg: Word2VecConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.context = nn.Embedding(cfg.vocab_size, cfg.dim)
        # word2vec's initialisation: small uniform word vectors, zero context vectors
        nn.init.uniform_(self.embedding.weight, -0.5 / cfg.dim, 0.5 / cfg.dim)
        nn.init.zeros_(self.context.weight)

    @torch.no_grad()
    def sgd_step(self, inputs: Tensor, truth: Tensor, noise: Tensor, negative: int, lr: float,
                 counts: Tensor | None = None) -> float:
        """One batched update. truth (N,) the word each example predicts; inputs (N,) the centre words
        (skip-gram), or with counts (N,) the context words of the N examples one after the other (CBOW, (M,));
        noise (N/G, S) noise words, row r shared by examples r*G .. r*G+G-1, each weighted negative / S.
        Returns the summed loss."""
        W, O = self.embedding.weight, self.context.weight
        N, D = truth.shape[0], W.shape[1]
        groups, S = noise.shape
        G = -(-N // groups)  # examples per group (the last group may be short)
        pad = groups * G - N
        if counts is None:
            h = W.index_select(0, inputs)  # (N, D)
        else:  # CBOW: the mean of each example's context vectors, one fused bag per example
            h = F.embedding_bag(inputs, W, F.pad(counts.cumsum(0)[:-1], (1, 0)), mode="mean")  # (N, D)
        c = O.index_select(0, truth)  # (N, D)
        n = O.index_select(0, noise.flatten()).view(groups, S, D)
        hg = F.pad(h, (0, 0, 0, pad)).view(groups, G, D)  # zero rows pad the last group
        pos = (h * c).sum(1)  # (N,)
        neg = torch.bmm(hg, n.transpose(1, 2))  # (N/G, G, S)
        weight = negative / S
        loss = -(F.logsigmoid(pos).sum() + weight * F.logsigmoid(-neg).flatten(0, 1)[:N].sum())
        g_pos = (1 - torch.sigmoid(pos)) * lr  # (N,)
        g_neg = torch.sigmoid(neg) * (-lr * weight)  # (N/G, G, S)
        # context vectors of the true words and the noise words
        scale = step_scale(torch.cat([truth, noise.flatten()]), O.shape[0])  # (N + N/G * S,)
        o_pos, o_neg = g_pos * scale[:N], g_neg * scale[N:].view(groups, 1, S)
        # word vectors: each input word receives sum_t g_t c_t, with c and n as they were before this step
        if counts is None:
            scale = F.pad(step_scale(inputs, W.shape[0]), (0, pad))  # (N/G * G,)
            grad_h = (g_pos * scale[:N]).unsqueeze(1) * c + torch.bmm(g_neg * scale.view(groups, G, 1), n).flatten(0, 1)[:N]
            W.index_add_(0, inputs, grad_h)
        else:  # word2vec's CBOW: every context word receives the whole error
            grad_h = g_pos.unsqueeze(1) * c + torch.bmm(g_neg, n).flatten(0, 1)[:N]  # (N, D)
            rows = grad_h.repeat_interleave(counts, 0)  # (M, D)
            W.index_add_(0, inputs, rows * step_scale(inputs, W.shape[0]).unsqueeze(1))
        O.index_add_(0, truth, o_pos.unsqueeze(1) * h)
        O.index_add_(0, noise.flatten(), torch.bmm(o_neg.transpose(1, 2), hg).flatten(0, 1))  # pad rows add 0
        return float(loss)


MAX_SUMMED = 16  # a row updated by more examples of one batch than this takes their mean step times this


def step_scale(index: Tensor, rows: int) -> Tensor:
    """For each entry of `index` (M,), the factor that caps how many examples' worth of step one row takes at
    once: 1 for a row appearing at most MAX_SUMMED times in the batch, MAX_SUMMED / count beyond. word2vec
    updates one example at a time; a very frequent word summing hundreds of steps computed from the same stale
    vectors overshoots and diverges (with a small vocabulary, or a large batch)."""
    count = torch.bincount(index, minlength=rows)[index]
    return MAX_SUMMED / count.clamp(min=MAX_SUMMED).float()


def normalized(vectors: Tensor) -> Tensor:
    """Rows scaled to unit length (a zero row stays zero)."""
    return F.normalize(vectors.float(), dim=-1, eps=1e-12)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors; 0.0 when either is zero."""
    return float((normalized(a) * normalized(b)).sum())


def nearest(vectors: Tensor, query: Tensor, k: int, allowed: Tensor, exclude: list[int] = ()) -> list[tuple[int, float]]:
    """The k rows of `vectors` (V, D) most cosine-similar to `query` (D,), among the `allowed` rows (V,) bool,
    leaving out the rows in `exclude`. Returns (row, cosine) pairs, best first."""
    sims = normalized(vectors) @ normalized(query)  # (V,)
    sims = sims.masked_fill(~allowed, float("-inf"))
    if len(exclude):
        sims[list(exclude)] = float("-inf")
    k = min(k, int(torch.isfinite(sims).sum()))
    best = torch.topk(sims, k)
    return [(int(i), round(float(s), 4)) for s, i in zip(best.values, best.indices)]


def analogy_query(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """A is to B as C is to ?: the vector b - a + c of the unit-length vectors (3CosAdd, as word2vec does)."""
    return normalized(b) - normalized(a) + normalized(c)
