"""Search, written once against the translator interface (`encode` and a one-step `decode_step` with a
cache), never against a model class: greedy decoding and batched beam search with a length penalty.

A cache is a pytree (dicts, lists, tuples) of tensors with the batch first, so beam search reorders any
model's state the same way. What is *not* here: turning ids into text (the caller's tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor


def tree_map(fn: Callable[[Tensor], Tensor], tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def max_lengths(src_mask: Tensor, ratio: float, extra: int, cap: int) -> Tensor:
    """Per-sentence output limit: ratio x source length + extra tokens, at most `cap`; a sentence that reaches it
    ends there (</s> follows). (B,)"""
    return (src_mask.sum(1).float() * ratio + extra).long().clamp(1, cap)


@torch.inference_mode()
def greedy(model, src: Tensor, src_mask: Tensor, *, bos: int, eos: int, max_len: Tensor) -> list[list[int]]:
    """The most likely next token at every step. Returns ids without <s> and </s>, one list per sentence.

    Sentences that have ended leave the batch (their rows of the memory and cache are dropped), so a batch
    costs what its live sentences cost, not what its longest one does."""
    B = src.size(0)
    memory = model.encode(src, src_mask)
    prev = torch.full((B, 1), bos, dtype=torch.long, device=src.device)
    alive = torch.arange(B, device=src.device)  # the sentence of each row still decoding
    limit = max_len
    out = torch.full((B, int(max_len.max()) + 1), eos, dtype=torch.long, device=src.device)  # (B, T): tokens, </s>
    cache = None
    for t in range(out.size(1)):
        logits, cache = model.decode_step(prev, memory, cache)
        token = logits.argmax(-1).masked_fill(t >= limit, eos)  # `limit` tokens made: end
        out[alive, t] = token
        ended = token == eos
        if bool(ended.any()):
            if bool(ended.all()):
                break
            keep = (~ended).nonzero().squeeze(1)
            alive, limit, token = alive[keep], limit[keep], token[keep]
            memory, cache = tree_map(lambda x: x.index_select(0, keep), (memory, cache))
        prev = token[:, None]
    rows = out.tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@dataclass
class Hypothesis:
    tokens: list[int]  # without <s> and </s>
    score: float  # sum of log-probabilities / length ** length_penalty
    logprob: float


@torch.inference_mode()
def beam_search(
    model, src: Tensor, src_mask: Tensor, *, bos: int, eos: int, max_len: Tensor, beam: int = 5,
    length_penalty: float = 1.0, n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Batched beam search. A hypothesis is finished when it emits </s> among the top `beam` candidates; a
    sentence is done when it has `beam` finished hypotheses that its best live beam can no longer beat.
    Scores are normalised by length ** length_penalty (0: raw log-probability, 1: average per token; the
    length counts </s>). Returns the n_best finished hypotheses of each sentence, best first.
    """
    B, K, device = src.size(0), beam, src.device
    memory = tree_map(lambda t: t.repeat_interleave(K, 0), model.encode(src, src_mask))  # (B, ...) -> (B*K, ...)
    limit = max_len.repeat_interleave(K)  # (B*K,)
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    sent = list(range(B))  # the sentence of each group of K rows; done sentences leave the batch
    cache = None
    for t in range(int(max_len.max()) + 1):
        B = len(sent)
        logits, cache = model.decode_step(tokens, memory, cache)
        logp = torch.log_softmax(logits.float(), -1)  # (B*K, V)
        V = logp.size(-1)
        at_limit = t >= limit  # `limit` tokens made
        if bool(at_limit.any()):  # sentences at their length limit may only end
            forced = torch.full_like(logp, float("-inf"))
            forced[:, eos] = 0.0
            logp = torch.where(at_limit[:, None], forced, logp)
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        beam_idx, token = top_idx // V, top_idx % V
        is_eos = token == eos
        # finished hypotheses: </s> among the top K candidates
        for b, k in (is_eos[:, :K]).nonzero().tolist():
            if top_scores[b, k].item() == float("-inf"):
                continue
            seq = tokens[b * K + beam_idx[b, k].item(), 1:].tolist()
            lp = top_scores[b, k].item()
            finished[sent[b]].append(Hypothesis(seq, lp / max(len(seq) + 1, 1) ** length_penalty, lp))
        # the K best candidates that do not end continue (there are always at least K of them among 2K)
        order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]  # non-</s> first, in score order
        scores = top_scores.gather(1, order)
        rows = (torch.arange(B, device=device)[:, None] * K + beam_idx.gather(1, order)).view(-1)
        # a sentence is done when its K best finished hypotheses cannot be beaten by its best live beam
        # (the live beam's score so far, normalised at its current length: Hugging Face's criterion)
        best_alive = (scores.max(1).values / (t + 1) ** length_penalty).tolist()
        for b, s in enumerate(sent):
            if len(finished[s]) >= K:
                finished[s] = sorted(finished[s], key=lambda h: -h.score)[:K]
                done[s] = best_alive[b] <= finished[s][-1].score
        if all(done):
            break
        new_tokens = token.gather(1, order)  # (B, K)
        keep = [b for b, s in enumerate(sent) if not done[s]]
        if len(keep) < B:  # drop the sentences that are done: their rows of everything
            kept = torch.tensor(keep, device=device)
            scores, rows, new_tokens = scores[kept], rows.view(B, K)[kept].view(-1), new_tokens[kept]
            limit = limit.view(B, K)[kept].view(-1)
            memory = tree_map(lambda x: x.index_select(0, (kept[:, None] * K + torch.arange(K, device=device)).view(-1)),
                              memory)
            sent = [sent[b] for b in keep]
        tokens = torch.cat([tokens[rows], new_tokens.view(-1, 1)], 1)
        cache = tree_map(lambda x: x.index_select(0, rows), cache)
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def sample_stream(
    model, prompt: Tensor, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    eos: int | None = None, generator: torch.Generator | None = None, context: int | None = None,
):
    """Sample continuations of `prompt` (B, T) one token at a time, yielding each step's tokens (B,).

    temperature 0 is greedy; top_k keeps the k most likely tokens; top_p keeps the smallest set whose
    probability reaches p (nucleus sampling). Rows that produced `eos` keep producing it; the stream ends when
    every row has, or after max_new_tokens. Uses the model's cache: the prompt is fed once. With a `context`
    (the model's longest input), a full cache is rebuilt from the last context/2 tokens and generation goes on.
    """
    with torch.inference_mode():
        done = torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)
        seq = prompt[:, -context:] if context else prompt
        prev, cache, cached = seq, None, 0
        for _ in range(max_new_tokens):
            if context and cache is not None and cached + 1 > context:
                prev, cache, cached = seq[:, -(context // 2) :], None, 0  # slide the window
            logits, cache = model.decode_step(prev, None, cache)
            cached += prev.size(1) if cached == 0 else 1
            token = pick(logits.float(), temperature, top_k, top_p, generator)
            if eos is not None:
                token = token.masked_fill(done, eos)
                done |= token == eos
            yield token
            if eos is not None and bool(done.all()):
                return
            prev = token[:, None]
            seq = torch.cat([seq, prev], 1)


def pick(logits: Tensor, temperature: float, top_k: int, top_p: float, generator=None) -> Tensor:
    """Choose one token per row from logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # the tokens after the nucleus is full
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
