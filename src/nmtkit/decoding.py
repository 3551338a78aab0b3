"""Search, written once against the translator interface (`encode` and a one-step `decode_step` with a
cache), never against a model class: greedy decoding and batched beam search with a length penalty; and
extractive QA's answer search (`best_spans`), the best span over a question's windows.

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
    costs what its live sentences cost, not what its longest one does. One host read per step: which rows
    ended (the rows to keep are then chosen on the device)."""
    B, device = src.size(0), src.device
    memory = model.encode(src, src_mask)
    limits = max_len.tolist()  # read once: the host knows when a row reaches its limit
    prev = torch.full((B, 1), bos, dtype=torch.long, device=device)
    alive, alive_host = torch.arange(B, device=device), list(range(B))  # the sentence of each row still decoding
    limit = max_len
    out = torch.full((B, max(limits) + 1), eos, dtype=torch.long, device=device)  # (B, T): tokens, </s>
    cache = None
    for t in range(out.size(1)):
        logits, cache = model.decode_step(prev, memory, cache)
        token = logits.argmax(-1)
        if t >= min(limits[s] for s in alive_host):  # `limit` tokens made: end
            token = token.masked_fill(t >= limit, eos)
        out[alive, t] = token
        ended = token == eos
        ended_host = ended.tolist()  # the step's one host read
        if any(ended_host):
            if all(ended_host):
                break
            keep = _kept(ended, ended_host)
            alive, limit, token = alive[keep], limit[keep], token[keep]
            alive_host = [s for s, e in zip(alive_host, ended_host) if not e]
            memory, cache = tree_map(lambda x: x.index_select(0, keep), (memory, cache))
        prev = token[:, None]
    rows = out.tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def _kept(drop: Tensor, drop_host: list[bool]) -> Tensor:
    """The indices of the rows not dropped, in order, chosen on the device: the host already knows how many
    (no `nonzero`, whose size the device would have to report)."""
    return torch.sort(drop.to(torch.int8), stable=True).indices[: len(drop_host) - sum(drop_host)]


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

    Everything a step decides stays on the device: each sentence keeps its `beam` best finished hypotheses in
    tensors (tokens, scores, log-probabilities, lengths), merged with the step's new ones by a stable sort. The
    host reads one thing per step, which sentences are done (they leave the batch), and the finished
    hypotheses once, at the end.
    """
    B0, K, device = src.size(0), beam, src.device
    memory = tree_map(lambda t: t.repeat_interleave(K, 0), model.encode(src, src_mask))  # (B, ...) -> (B*K, ...)
    limits = max_len.tolist()  # read once: the host knows when a sentence reaches its limit
    steps = max(limits) + 1
    limit = max_len.repeat_interleave(K)  # (B*K,)
    tokens = torch.full((B0 * K, 1), bos, dtype=torch.long, device=device)
    scores = torch.full((B0, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    # each sentence's K best finished hypotheses, best first (-inf: an empty place)
    fin_score = torch.full((B0, K), float("-inf"), dtype=torch.float64, device=device)
    fin_logprob = torch.zeros((B0, K), device=device)
    fin_length = torch.zeros((B0, K), dtype=torch.long, device=device)
    fin_tokens = torch.full((B0, K, steps), eos, dtype=torch.long, device=device)
    sent, sent_host = torch.arange(B0, device=device), list(range(B0))  # the sentence of each group of K rows
    forced = None  # a row of log-probabilities that allows only </s>
    cache = None
    for t in range(steps):
        B = len(sent_host)
        logits, cache = model.decode_step(tokens, memory, cache)
        logp = torch.log_softmax(logits.float(), -1)  # (B*K, V)
        V = logp.size(-1)
        if t >= min(limits[s] for s in sent_host):  # sentences at their length limit may only end
            if forced is None:
                forced = torch.full((1, V), float("-inf"), device=device)
                forced[0, eos] = 0.0
            logp = torch.where((t >= limit)[:, None], forced, logp)
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        beam_idx, token = top_idx // V, top_idx % V
        is_eos = token == eos
        _finish(fin_score, fin_logprob, fin_length, fin_tokens, sent, tokens.view(B, K, t + 1), top_scores[:, :K],
                beam_idx[:, :K], is_eos[:, :K], t, (t + 1) ** length_penalty)
        # the K best candidates that do not end continue (there are always at least K of them among 2K)
        order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]  # non-</s> first, in score order
        scores = top_scores.gather(1, order)
        rows = (torch.arange(B, device=device)[:, None] * K + beam_idx.gather(1, order)).view(-1)
        # a sentence is done when its K best finished hypotheses cannot be beaten by its best live beam
        # (the live beam's score so far, normalised at its current length: Hugging Face's criterion)
        best_alive = scores.max(1).values / (t + 1) ** length_penalty
        kth = fin_score.index_select(0, sent)[:, K - 1]
        done = (kth > float("-inf")) & (best_alive.double() <= kth)
        done_host = done.tolist()  # the step's one host read
        if all(done_host):
            break
        new_tokens = token.gather(1, order)  # (B, K)
        if any(done_host):  # drop the sentences that are done: their rows of everything
            keep = _kept(done, done_host)
            scores, rows, new_tokens = scores[keep], rows.view(B, K)[keep].view(-1), new_tokens[keep]
            limit = limit.view(B, K)[keep].view(-1)
            memory = tree_map(lambda x: x.index_select(0, (keep[:, None] * K + torch.arange(K, device=device)).view(-1)),
                              memory)
            sent, sent_host = sent[keep], [s for s, d in zip(sent_host, done_host) if not d]
        tokens = torch.cat([tokens[rows], new_tokens.view(-1, 1)], 1)
        cache = tree_map(lambda x: x.index_select(0, rows), cache)
    found = zip(fin_score.tolist(), fin_logprob.tolist(), fin_length.tolist(), fin_tokens.tolist())
    return [[Hypothesis(seqs[k][: lengths[k]], score[k], logprob[k]) for k in range(K) if score[k] > float("-inf")][:n_best]
            for score, logprob, lengths, seqs in found]


def _finish(fin_score: Tensor, fin_logprob: Tensor, fin_length: Tensor, fin_tokens: Tensor, sent: Tensor,
            prefixes: Tensor, top_scores: Tensor, beam_idx: Tensor, is_eos: Tensor, t: int, norm: float) -> None:
    """Merge a step's finished hypotheses (</s> among the top K candidates, with a finite score) into the K best
    of each sentence, in place. The sort is stable with the earlier hypotheses first, so ties keep the order in
    which they finished. prefixes (B, K, t + 1): the live beams' tokens from <s>; the others (B, K)."""
    B, K, _ = prefixes.shape
    new_score = torch.where(is_eos & (top_scores > float("-inf")), top_scores.double() / norm, float("-inf"))
    merged, pick = torch.cat([fin_score.index_select(0, sent), new_score], 1).sort(dim=1, descending=True, stable=True)
    pick = pick[:, :K]  # (B, K) places among the 2K: the old K first, then the new

    def merge(old: Tensor, new: Tensor) -> Tensor:
        both = torch.cat([old, new], 1)  # (B, 2K, ...)
        return both.gather(1, pick.view(B, K, *[1] * (both.dim() - 2)).expand(B, K, *both.shape[2:]))

    fin_score[sent] = merged[:, :K]
    fin_logprob[sent] = merge(fin_logprob.index_select(0, sent), top_scores)
    fin_length[sent] = merge(fin_length.index_select(0, sent), torch.full_like(beam_idx, t))
    if t:  # an earlier hypothesis is shorter than t: its first t places hold all of it
        seqs = prefixes.gather(1, beam_idx[..., None].expand(B, K, t + 1))[..., 1:]  # (B, K, t)
        fin_tokens[sent, :, :t] = merge(fin_tokens.index_select(0, sent)[..., :t], seqs)


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


def best_spans(features, examples, logits, max_answer: int = 30) -> list[dict[str, Any]]:
    """The best answer span of each example over all its windows: the highest start + end logit with
    start <= end < start + max_answer, mapped back to character offsets in the original context."""
    best: dict[int, tuple[float, int, int]] = {}
    for f, (s, e) in zip(features, logits):
        n = len(f.starts)
        s, e = s[f.offset : f.offset + n], e[f.offset : f.offset + n]
        scores = s.unsqueeze(1) + e.unsqueeze(0)  # (n, n): start i, end j
        valid = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer - 1)
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(scores.argmax())
        i, j, value = flat // n, flat % n, float(scores.flatten()[flat])
        if f.example not in best or value > best[f.example][0]:
            best[f.example] = (value, f.starts[i], f.ends[j])
    answers = []
    for k, ex in enumerate(examples):
        score, a, b = best.get(k, (float("-inf"), 0, 0))
        answers.append({"id": ex.id, "answer": ex.context[a:b], "start": a, "end": b, "score": round(score, 4)})
    return answers
