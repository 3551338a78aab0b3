"""What makes nmtkit fast on a GPU, proved on the CPU: searches that read the host once per step and give what
the plain host-side search gives, attention kernels chosen for the shapes of the work, a training step that never
asks the device for a number, batches collated ahead in a thread, and line-by-line commands that answer while
their input is still open."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from nmtkit import decoding, runtime, training
from nmtkit.data import batching
from nmtkit.data.batching import LazyBatches, Seq2SeqBatch, collate_pairs, pad
from nmtkit.data.sources import InOrder, line_chunks
from nmtkit.models import build_translator, translator_config
from nmtkit.tokenization import BOS_ID, EOS_ID

ARCHS = {
    "transformer": {"d_model": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 2, "ff_dim": 64},
    "rnn": {"embed_dim": 16, "hidden_dim": 32},
    "attention": {"embed_dim": 16, "hidden_dim": 32},
}


def model_and_sources(arch: str, vocab: int = 12, n: int = 40, seed: int = 0):
    """An untrained translator over a small vocabulary (so </s> comes often, at every step, and scores tie) and
    `n` random sources of different lengths."""
    torch.manual_seed(seed)
    model = build_translator(arch, translator_config(arch, {"src_vocab": vocab, "tgt_vocab": vocab, **ARCHS[arch]}))
    g = torch.Generator().manual_seed(seed + 1)
    sources = [torch.randint(4, vocab, (int(torch.randint(1, 14, (1,), generator=g)),), generator=g).tolist() + [EOS_ID]
               for _ in range(n)]
    x = pad(sources)
    return model.eval(), x, x != 0


def reference_beam_search(model, src, src_mask, *, max_len, beam, length_penalty=1.0):
    """The plain host-side beam search nmtkit had before (finished hypotheses kept in Python lists, read
    element by element): the oracle the device-side search must equal, token for token and score for score."""
    B, K, device = src.size(0), beam, src.device
    with torch.inference_mode():
        memory = decoding.tree_map(lambda t: t.repeat_interleave(K, 0), model.encode(src, src_mask))
        limit = max_len.repeat_interleave(K)
        tokens = torch.full((B * K, 1), BOS_ID, device=device)
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0
        finished = [[] for _ in range(B)]
        done, sent, cache = [False] * B, list(range(B)), None
        for t in range(int(max_len.max()) + 1):
            B = len(sent)
            logits, cache = model.decode_step(tokens, memory, cache)
            logp = torch.log_softmax(logits.float(), -1)
            V = logp.size(-1)
            forced = torch.full_like(logp, float("-inf"))
            forced[:, EOS_ID] = 0.0
            logp = torch.where((t >= limit)[:, None], forced, logp)
            top_scores, top_idx = (scores.view(B * K, 1) + logp).view(B, K * V).topk(min(2 * K, K * V), dim=1)
            beam_idx, token = top_idx // V, top_idx % V
            is_eos = token == EOS_ID
            for b, k in is_eos[:, :K].nonzero().tolist():
                if top_scores[b, k].item() > float("-inf"):
                    seq = tokens[b * K + beam_idx[b, k].item(), 1:].tolist()
                    lp = top_scores[b, k].item()
                    finished[sent[b]].append((seq, lp / (len(seq) + 1) ** length_penalty, lp))
            order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]
            scores = top_scores.gather(1, order)
            rows = (torch.arange(B, device=device)[:, None] * K + beam_idx.gather(1, order)).view(-1)
            best_alive = (scores.max(1).values / (t + 1) ** length_penalty).tolist()
            for b, s in enumerate(sent):
                if len(finished[s]) >= K:
                    finished[s] = sorted(finished[s], key=lambda h: -h[1])[:K]
                    done[s] = best_alive[b] <= finished[s][-1][1]
            if all(done):
                break
            new_tokens = token.gather(1, order)
            keep = [b for b, s in enumerate(sent) if not done[s]]
            kept = torch.tensor(keep, device=device)
            scores, rows, new_tokens = scores[kept], rows.view(B, K)[kept].view(-1), new_tokens[kept]
            limit = limit.view(B, K)[kept].view(-1)
            memory = decoding.tree_map(lambda x: x.index_select(0, (kept[:, None] * K + torch.arange(K, device=device)).view(-1)),
                                         memory)
            sent = [sent[b] for b in keep]
            tokens = torch.cat([tokens[rows], new_tokens.view(-1, 1)], 1)
            cache = decoding.tree_map(lambda x: x.index_select(0, rows), cache)
    return [sorted(f, key=lambda h: -h[1]) for f in finished]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("beam, length_penalty", [(1, 1.0), (3, 1.0), (5, 0.6), (5, 0.0)])
def test_beam_search_gives_what_the_host_side_search_gives(arch, beam, length_penalty):
    model, x, mask = model_and_sources(arch)
    limit = decoding.max_lengths(mask, 1.5, 3, cap=30)
    found = decoding.beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=beam,
                                 length_penalty=length_penalty, n_best=beam)
    expected = reference_beam_search(model, x, mask, max_len=limit, beam=beam, length_penalty=length_penalty)
    assert [[(h.tokens, h.score, h.logprob) for h in sent] for sent in found] == expected
    lengths = Counter(len(h[0]) for sent in expected for h in sent)
    assert len(lengths) > 3  # hypotheses ended at many different steps


class HostReads:
    """Counts every read of a tensor's value on the host (what waits for a GPU) outside the encoder (once a
    batch: an RNN packs its sources by their lengths), and every decoding step."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")

    def __init__(self, monkeypatch, model):
        self.reads, self.steps, self.encoding = Counter(), 0, False
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))
        step, encode = model.decode_step, model.encode

        def counted_step(*args, **kwargs):
            self.steps += 1
            return step(*args, **kwargs)

        def uncounted_encode(*args, **kwargs):
            self.encoding = True
            try:
                return encode(*args, **kwargs)
            finally:
                self.encoding = False

        monkeypatch.setattr(model, "decode_step", counted_step)
        monkeypatch.setattr(model, "encode", uncounted_encode)

    def _counted(self, name, original):
        def method(tensor, *args, **kwargs):
            if not self.encoding:
                self.reads[name] += 1
            return original(tensor, *args, **kwargs)

        return method

    def take(self) -> tuple[int, int, dict]:
        taken = sum(self.reads.values()), self.steps, dict(self.reads)
        self.reads.clear()
        self.steps = 0
        return taken


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_search_reads_the_host_once_a_step(arch, monkeypatch):
    model, x, mask = model_and_sources(arch)
    limit = decoding.max_lengths(mask, 1.5, 3, cap=30)
    counter = HostReads(monkeypatch, model)
    decoding.beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=5, n_best=2)
    reads, steps, kinds = counter.take()
    assert steps > 10
    assert reads <= steps + 5, (reads, steps, kinds)  # a step's one read; the limits before, the 4 results after
    decoding.greedy(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit)
    reads, steps, kinds = counter.take()
    assert steps > 10
    assert reads <= steps + 2, (reads, steps, kinds)  # a step's one read; the limits before, the tokens after


def test_variable_shapes_never_reach_cudnn_attention(monkeypatch):
    """On CUDA, nmtkit leaves cuDNN out of attention (a graph built per new shape) except for fixed-shape training
    steps; the flag is global, so the policy can be checked on any machine. A 1,000-sentence beam search makes
    hundreds of attention shapes (rows x key length), which is why."""
    cuda = torch.device("cuda")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    seen, sdpa = [], F.scaled_dot_product_attention

    def recorded(q, k, v, *args, **kwargs):
        mask = kwargs.get("attn_mask")
        seen.append((tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape),
                     torch.backends.cuda.cudnn_sdp_enabled()))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert runtime._with_attention_for(cuda) == cuda
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        with runtime.attention_shapes(cuda, fixed=True):  # pretraining windows
            assert torch.backends.cuda.cudnn_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        with runtime.attention_shapes(torch.device("cpu"), fixed=True):  # the CPU is left as it is
            assert not torch.backends.cuda.cudnn_sdp_enabled()
        model, x, mask = model_and_sources("transformer", vocab=40, n=1000)
        limit = decoding.max_lengths(mask, 1.5, 3, cap=40)
        for start in range(0, 1000, 64):
            rows = slice(start, start + 64)
            decoding.beam_search(model, x[rows], mask[rows], bos=BOS_ID, eos=EOS_ID, max_len=limit[rows], beam=5)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    assert seen and not any(cudnn for *_, cudnn in seen)
    shapes = {tuple(shape) for *shape, _ in seen}
    print(f"{len(shapes)} attention shapes in {len(seen)} calls")
    assert len(shapes) > 200, len(shapes)  # 80 ms each under cuDNN: tens of seconds of host time


class DeviceSide(torch.Tensor):
    """A tensor standing for one on a GPU: every read of its value on the host is recorded."""

    reads: list[str] = []

    def _read(self, what, method, *args):
        DeviceSide.reads.append(what)
        return method(self.as_subclass(torch.Tensor), *args)

    def item(self):
        return self._read("item", torch.Tensor.item)

    def tolist(self):
        return self._read("tolist", torch.Tensor.tolist)

    def __bool__(self):
        return self._read("bool", torch.Tensor.__bool__)

    def __int__(self):
        return self._read("int", torch.Tensor.__int__)

    def __float__(self):
        return self._read("float", torch.Tensor.__float__)


class OnDevice(Seq2SeqBatch):
    def to(self, device):
        return self._map(lambda t: t.as_subclass(DeviceSide))


def tiny_training(tmp_path, steps: int, prefetch: bool | None = None, monkeypatch=None):
    from nmtkit.config import TrainConfig
    from nmtkit.objectives import seq2seq_loss

    torch.manual_seed(0)
    model = build_translator("transformer", translator_config("transformer", {"src_vocab": 30, "tgt_vocab": 30,
                                                                              **ARCHS["transformer"]}))
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randint(4, 30, (int(n),), generator=g).tolist() + [EOS_ID],
              [BOS_ID] + torch.randint(4, 30, (int(n) + 1,), generator=g).tolist() + [EOS_ID])
             for n in torch.randint(2, 9, (64,), generator=g)]

    def collate(index):
        b = collate_pairs([pairs[i][0] for i in index], [pairs[i][1] for i in index])
        return OnDevice(b.src, b.src_mask, b.tgt_in, b.tgt_out)

    batches = lambda epoch: LazyBatches([list(range(i, i + 8)) for i in range(0, 64, 8)], collate)
    cfg = TrainConfig(max_steps=steps, log_every=1000, eval_every=1000, lr=1e-3, warmup_steps=2, accumulate=2,
                      keep_checkpoints=1)
    events: list[tuple[int, int]] = []
    progress = lambda event: event["event"] in ("step", "train") and events.append((event["step"], len(DeviceSide.reads)))
    if prefetch is not None:
        enabled = batching.Prefetch.__init__
        monkeypatch.setattr(batching.Prefetch, "__init__", lambda self, load, _: enabled(self, load, prefetch))
    DeviceSide.reads.clear()
    tmp_path.mkdir(exist_ok=True)
    result = training.train(model, seq2seq_loss(), batches, cfg=cfg, run_dir=tmp_path, device=torch.device("cpu"),
                            progress=progress)
    return model, result, events


def test_a_training_step_never_reads_a_number_from_the_device(tmp_path):
    _, result, events = tiny_training(tmp_path, steps=6)
    assert result.steps == 6 and [step for step, _ in events] == [1, 2, 3, 4, 5, 6]
    reads_by_step = [after - before for (_, before), (_, after) in zip([(0, 0)] + events, events)]
    assert reads_by_step[0] == 1  # step 1 is logged: the loss, read once
    assert reads_by_step[1:] == [0, 0, 0, 0, 0]  # no count, no loss, nothing


def test_batches_collated_ahead_in_a_thread_train_the_same_weights(tmp_path, monkeypatch):
    plain, _, _ = tiny_training(tmp_path / "plain", steps=5, prefetch=False, monkeypatch=monkeypatch)
    ahead, _, _ = tiny_training(tmp_path / "ahead", steps=5, prefetch=True, monkeypatch=monkeypatch)
    for (name, a), b in zip(plain.state_dict().items(), ahead.state_dict().values()):
        assert torch.equal(a, b), name


def test_batches_count_on_the_host_and_keep_their_counts_when_moved():
    b = collate_pairs([[5, 6, EOS_ID], [7, EOS_ID]], [[BOS_ID, 8, EOS_ID], [BOS_ID, 9, 10, EOS_ID]])
    assert (b.target_tokens, b.tokens) == (5, 10)
    moved = b.to(torch.device("cpu"))
    assert (moved.target_tokens, moved.tokens) == (5, 10) and torch.equal(moved.tgt_out, b.tgt_out)


def slow_lines(lines, pause_after: int, pause: threading.Event):
    for i, line in enumerate(lines):
        if i == pause_after:
            pause.wait(10)  # the producer stalls until the consumer has answered what came
        yield line


def test_line_chunks_work_on_what_came_when_the_input_pauses():
    answered = threading.Event()
    chunks = line_chunks(slow_lines([f"l{i}" for i in range(7)], 3, answered), size=100, wait=0.05)
    assert next(chunks) == ["l0", "l1", "l2"]  # before the input ends
    answered.set()
    assert next(chunks) == ["l3", "l4", "l5", "l6"]
    assert list(chunks) == []


def test_line_chunks_of_a_fast_input_are_full_and_an_error_comes_after_the_lines_before_it():
    assert [len(c) for c in line_chunks((str(i) for i in range(2500)), 1000, wait=0.05)] == [1000, 1000, 500]
    assert list(line_chunks(iter(["a", "b", "c"]), 2)) == [["a", "b"], ["c"]]

    def broken():
        yield "a"
        raise ValueError("x.txt:2: invalid UTF-8")

    chunks = line_chunks(broken(), 10, wait=0.05)
    assert next(chunks) == ["a"]
    with pytest.raises(ValueError, match="x.txt:2"):
        next(chunks)


def test_in_order_hands_back_results_as_soon_as_every_earlier_one_is_there():
    ordered = InOrder(6, skipped=[1])
    assert ordered.add([(3, "d"), (4, "e")]) == []
    assert ordered.add([(0, "a")]) == [(0, "a"), (1, None)]
    assert ordered.add([(2, "c"), (5, "f")]) == [(2, "c"), (3, "d"), (4, "e"), (5, "f")]


def test_generate_answers_each_prompt_while_the_pipe_stays_open(gpt):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import line_reader

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    process = subprocess.Popen([sys.executable, "-m", "nmtkit", "generate", "-m", str(gpt), "-n", "5", "--temperature",
                                "0", "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True)
    next_line = line_reader(process.stdout)
    try:
        process.stdin.write("The cat\nA dog\n")  # two prompts: headed records (one prompt would stream its tokens)
        process.stdin.flush()
        assert next_line(60) == "--- prompt 1, sample 1\n"  # stdin is still open
        process.stdin.close()
        assert process.wait(30) == 0
    finally:
        process.kill()
