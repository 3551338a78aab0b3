"""RNN encoder-decoders: the fixed context vector (Sutskever et al. 2014; Cho et al. 2014) and attention
(Bahdanau et al. 2015, additive; Luong et al. 2015, dot or general, with input feeding).

    attention="none"      the decoder sees the source only through one vector c (the encoder's final state)
                          at every step: the bottleneck the lecture describes
    attention="bahdanau"  at each step the previous decoder state scores every encoder output (v·tanh(Wq+Uk))
    attention="luong-*"   the new decoder state scores every encoder output (dot, or through a matrix W)

Same interface as the Transformer (`encode`, `decode`, `decode_step`, `forward`); the cache is the decoder
state (hidden state, LSTM cell, Luong's attentional vector), batch first so beam search can reorder it.
Shapes: B batch, S source, T target, E embedding, Hd hidden, L layers, V vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmtkit.models.configs import RNNConfig
from nmtkit.models.layers import cut_vocab, pad_vocab


class RNNSeq2Seq(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        E, Hd, L = cfg.embed_dim, cfg.hidden_dim, cfg.layers
        dirs = 2 if cfg.bidirectional else 1
        rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.tgt_embed = nn.Embedding(pad_vocab(cfg.tgt_vocab), E)
        self.src_embed = self.tgt_embed if cfg.share_embeddings else nn.Embedding(pad_vocab(cfg.src_vocab), E)
        drop_between = cfg.dropout if L > 1 else 0.0
        self.encoder = rnn(E, Hd, L, batch_first=True, bidirectional=cfg.bidirectional, dropout=drop_between)
        self.bridge = nn.Linear(dirs * Hd, Hd)  # encoder final state(s) -> decoder initial state, per layer
        enc_dim = dirs * Hd
        self.luong = cfg.attention.startswith("luong")
        if cfg.attention == "none":
            dec_in, pre_out = E + Hd, Hd + Hd + E  # input [y; c]; output from [s; c; y] (Cho et al.)
        elif cfg.attention == "bahdanau":
            self.att_query = nn.Linear(Hd, Hd, bias=False)
            self.att_key = nn.Linear(enc_dim, Hd)
            self.att_v = nn.Linear(Hd, 1, bias=False)
            dec_in, pre_out = E + enc_dim, Hd + enc_dim + E
        else:
            self.att_key = nn.Linear(enc_dim, Hd, bias=False)  # "general": W h_j; "dot": h_j brought to Hd
            self.att_combine = nn.Linear(enc_dim + Hd, Hd, bias=False)  # h~ = tanh(Wc [c; s])
            dec_in, pre_out = E + (Hd if cfg.input_feeding else 0), Hd
        self.decoder = rnn(dec_in, Hd, L, batch_first=True, dropout=drop_between)
        self.out = nn.Linear(pre_out, pad_vocab(cfg.tgt_vocab))
        self.drop = nn.Dropout(cfg.dropout)

    # -- encoder ------------------------------------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        lengths = src_mask.sum(1).cpu()
        emb = self.drop(self.src_embed(src))  # (B, S) -> (B, S, E)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, dirs*Hd)
        h = final[0] if cfg.cell == "lstm" else final
        init = {"h": self._bridge(h)}
        if cfg.cell == "lstm":
            init["c"] = self._bridge(final[1])
        memory = {"out": out, "mask": src_mask, **{f"init_{k}": v for k, v in init.items()}}
        if cfg.attention != "none":
            memory["keys"] = self.att_key(out)  # (B, S, Hd), computed once per sentence
        else:
            memory["context"] = init["h"][:, -1]  # the fixed context vector c: (B, Hd)
        return memory

    def _bridge(self, h: Tensor) -> Tensor:
        """(L*dirs, B, Hd) final encoder states -> (B, L, Hd) initial decoder states."""
        L, dirs = self.cfg.layers, 2 if self.cfg.bidirectional else 1
        h = h.view(L, dirs, h.size(1), h.size(2)).permute(2, 0, 1, 3).reshape(h.size(1), L, dirs * h.size(2))
        return torch.tanh(self.bridge(h))

    # -- decoder ------------------------------------------------------------------------------------------

    def _attend(self, query: Tensor, memory: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """query (B, Hd) -> context (B, dirs*Hd), weights (B, S)."""
        if self.cfg.attention == "bahdanau":
            energy = self.att_v(torch.tanh(self.att_query(query)[:, None] + memory["keys"])).squeeze(-1)  # (B, S)
        else:
            energy = torch.bmm(memory["keys"], query[:, :, None]).squeeze(-1)  # (B, S, Hd) @ (B, Hd, 1) -> (B, S)
        weights = energy.masked_fill(~memory["mask"], float("-inf")).softmax(-1)
        return torch.bmm(weights[:, None], memory["out"]).squeeze(1), weights

    def _initial_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        state = {"h": memory["init_h"]}
        if self.cfg.cell == "lstm":
            state["c"] = memory["init_c"]
        if self.luong and self.cfg.input_feeding:
            state["feed"] = memory["init_h"].new_zeros(memory["init_h"].shape[0], self.cfg.hidden_dim)
        return state

    def _step(self, y: Tensor, memory: dict[str, Tensor], state: dict[str, Tensor]):
        """One decoder step: y (B,) previous token -> logits (B, V), next state, attention weights (B, S)."""
        cfg = self.cfg
        emb = self.drop(self.tgt_embed(y))  # (B, E)
        hidden = state["h"].transpose(0, 1).contiguous()  # (B, L, Hd) -> (L, B, Hd)
        rnn_state = (hidden, state["c"].transpose(0, 1).contiguous()) if cfg.cell == "lstm" else hidden
        weights = None
        if cfg.attention == "none":
            context = memory["context"]
            inp = torch.cat([emb, context], -1)
        elif cfg.attention == "bahdanau":
            context, weights = self._attend(state["h"][:, -1], memory)  # scored with the previous state
            inp = torch.cat([emb, context], -1)
        else:
            inp = torch.cat([emb, state["feed"]], -1) if cfg.input_feeding else emb
        out, new = self.decoder(inp[:, None], rnn_state)
        s = out[:, 0]  # (B, Hd)
        next_state = {"h": (new[0] if cfg.cell == "lstm" else new).transpose(0, 1)}
        if cfg.cell == "lstm":
            next_state["c"] = new[1].transpose(0, 1)
        if self.luong:
            context, weights = self._attend(s, memory)  # scored with the new state
            pre = torch.tanh(self.att_combine(torch.cat([context, s], -1)))  # attentional vector h~ (B, Hd)
            if cfg.input_feeding:
                next_state["feed"] = pre
        else:
            pre = torch.cat([s, context, emb], -1)
        logits = cut_vocab(self.out(self.drop(pre)), cfg.tgt_vocab)
        return logits, next_state, weights

    def decode_step(self, prev: Tensor, memory: dict[str, Tensor], cache: dict | None):
        state = self._initial_state(memory) if cache is None else cache
        logits, state, _ = self._step(prev[:, -1], memory, state)
        return logits, state

    def decode(self, tgt_in: Tensor, memory: dict[str, Tensor], teacher_forcing: float = 1.0) -> Tensor:
        """Teacher forcing over all positions: (B, T) -> (B, T, V). With a ratio below 1, each step feeds the
        model's own previous prediction instead of the reference with probability 1 - ratio."""
        state = self._initial_state(memory)
        y = tgt_in[:, 0]
        outputs = []
        for t in range(tgt_in.size(1)):
            logits, state, _ = self._step(y, memory, state)
            outputs.append(logits)
            if t + 1 < tgt_in.size(1):
                y = tgt_in[:, t + 1]
                if teacher_forcing < 1.0 and torch.rand(()) >= teacher_forcing:
                    y = logits.argmax(-1)
        return torch.stack(outputs, 1)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0) -> Tensor:
        return self.decode(tgt_in, self.encode(src, src_mask), teacher_forcing)

    def alignments(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """The attention weights of each decoder step under teacher forcing: (B, T, S), each row summing to 1
        over the real source positions (padding gets 0). Only for attention models."""
        if self.cfg.attention == "none":
            raise ValueError("an RNN encoder-decoder without attention has no attention weights")
        memory = self.encode(src, src_mask)
        state, rows = self._initial_state(memory), []
        for t in range(tgt_in.size(1)):
            _, state, weights = self._step(tgt_in[:, t], memory, state)
            rows.append(weights)
        return torch.stack(rows, 1)
