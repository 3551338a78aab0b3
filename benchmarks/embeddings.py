"""`nmtkit train-embeddings` vs gensim's Word2Vec: training throughput and agreement of the two models.

    pip install gensim        # for this benchmark only
    python benchmarks/embeddings.py [--corpora ../shared/corpora] [--arch skipgram|cbow] [--threads 2]

Both train on the same words (Multi30k's English side plus tinyshakespeare, split and lower-cased by
`nmtkit.vocab.split_words`, one sentence a line) with the same settings: 100 dimensions, window 5, 5 noise
words, subsampling 1e-3, min-count 5, 5 epochs, learning rate 0.025 -> 0.0001, and the same number of
threads. Each side's time covers the vocabulary and the training, from the same in-memory sentences.
Agreement: Spearman's rank correlation between the two models' cosine similarities over every pair of the
1,000 most frequent words; the correlation of gensim with itself under another seed is given as the ceiling.
Prints a Markdown table for docs/benchmarks.md and a few nearest neighbours from each side.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = dict(dim=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=5, lr=0.025, min_lr=0.0001)
WORDS = ["king", "love", "dog", "red", "walking", "water", "sword", "night"]


def pair_similarities(vectors, words: list[str], lookup):
    """Cosine similarities of every pair (i < j) of `words`, flattened."""
    import torch
    import torch.nn.functional as F

    m = F.normalize(torch.stack([torch.as_tensor(lookup(vectors, w)).float() for w in words]), dim=1)
    sims = m @ m.T
    i, j = torch.triu_indices(len(words), len(words), 1)
    return sims[i, j]


def spearman(x, y) -> float:
    import torch

    rx = torch.argsort(torch.argsort(x)).double()
    ry = torch.argsort(torch.argsort(y)).double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def run_gensim(sentences, arch: str, threads: int, seed: int):
    from gensim.models import Word2Vec

    s = SETTINGS
    t = time.perf_counter()
    model = Word2Vec(sentences, vector_size=s["dim"], window=s["window"], negative=s["negative"], sample=s["sample"],
                     min_count=s["min_count"], epochs=s["epochs"], alpha=s["lr"], min_alpha=s["min_lr"],
                     sg=int(arch == "skipgram"), hs=0, workers=threads, seed=seed)
    return model, time.perf_counter() - t


def run_nmtkit(sentences, arch: str, seed: int):
    import torch

    from nmtkit.data.datasets import TokenStream
    from nmtkit.models.embeddings import Word2Vec, Word2VecConfig
    from nmtkit.training import Word2VecTrainConfig, train_word2vec
    from nmtkit.vocab import word_vocab

    s = SETTINGS
    t = time.perf_counter()
    entries = word_vocab(iter(sentences), s["min_count"])
    index = {w: i for i, (w, _) in enumerate(entries)}
    stream = TokenStream.from_sentences([index[w] for w in sent if w in index] for sent in sentences)
    counts = torch.tensor([n for _, n in entries])
    torch.manual_seed(seed)
    model = Word2Vec(Word2VecConfig(len(entries), s["dim"], arch))
    cfg = Word2VecTrainConfig(epochs=s["epochs"], window=s["window"], negative=s["negative"], sample=s["sample"],
                              lr=s["lr"], min_lr=s["min_lr"], seed=seed)
    with tempfile.TemporaryDirectory() as run_dir:
        train_word2vec(model, stream, counts, cfg, run_dir=run_dir)
    seconds = time.perf_counter() - t
    return (model.embedding.weight.detach(), index, entries), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--arch", default="skipgram", choices=["skipgram", "cbow"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from nmtkit.models.embeddings import nearest
    from nmtkit.vocab import split_words

    torch.set_num_threads(args.threads)
    corpora = Path(args.corpora)
    lines = []
    for path in (corpora / "multi30k" / "train.en", corpora / "tinyshakespeare" / "input.txt"):
        lines += path.read_text(encoding="utf-8").splitlines()
    sentences = [words for words in (split_words(line) for line in lines) if words]
    tokens = sum(map(len, sentences))
    print(f"{len(sentences):,} sentences, {tokens:,} words; {args.arch}, {args.threads} threads", file=sys.stderr)

    gensim_model, gensim_s = run_gensim(sentences, args.arch, args.threads, seed=1)
    gensim_other, _ = run_gensim(sentences, args.arch, args.threads, seed=2)
    (ours, index, entries), ours_s = run_nmtkit(sentences, args.arch, seed=1)
    (ours_other, _, _), _ = run_nmtkit(sentences, args.arch, seed=2)

    frequent = [w for w, _ in entries[:1000]]
    assert all(w in gensim_model.wv.key_to_index for w in frequent)
    from_gensim = lambda model, w: model.wv[w]  # noqa: E731
    from_ours = lambda table, w: table[index[w]]  # noqa: E731
    g1 = pair_similarities(gensim_model, frequent, from_gensim)
    g2 = pair_similarities(gensim_other, frequent, from_gensim)
    n1 = pair_similarities(ours, frequent, from_ours)
    n2 = pair_similarities(ours_other, frequent, from_ours)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}"
    print(f"\n{args.arch} on Multi30k train.en + tinyshakespeare ({tokens:,} words), {datetime.date.today()}, {machine}\n")
    print("| | seconds | words/s (x epochs) | vs gensim |")
    print("|---|---|---|---|")
    for name, secs in (("gensim 4 Word2Vec", gensim_s), ("nmtkit train-embeddings", ours_s)):
        print(f"| {name} | {secs:.2f} | {tokens * SETTINGS['epochs'] / secs:,.0f} | {gensim_s / secs:.2f}x |")
    print(f"\nSpearman over the {len(g1):,} pairs of the 1,000 most frequent words:")
    print(f"- nmtkit vs gensim: {spearman(n1, g1):.3f}")
    print(f"- gensim vs gensim (seed 1 vs 2): {spearman(g1, g2):.3f}")
    print(f"- nmtkit vs nmtkit (seed 1 vs 2): {spearman(n1, n2):.3f}")
    allowed = torch.ones(len(entries), dtype=torch.bool)
    print("\nnearest neighbours (nmtkit | gensim):")
    for w in WORDS:
        mine = [entries[i][0] for i, _ in nearest(ours, ours[index[w]], 5, allowed, [index[w]])]
        theirs = [x for x, _ in gensim_model.wv.most_similar(w, topn=5)]
        print(f"- {w}: {', '.join(mine)} | {', '.join(theirs)}")


if __name__ == "__main__":
    main()
