"""Vocabularies and word vectors: build-vocab statistics, the word2vec update, cosine geometry, the commands."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from nmtkit import vocab
from nmtkit.data.sources import TextSource
from nmtkit.workflows.vectors import EmbeddingTable, train_embeddings
from nmtkit.cli import app
from nmtkit.models.embeddings import Word2Vec, Word2VecConfig, analogy_query, cosine, nearest

from conftest import write

runner = CliRunner()

# The lecture's table: each word gets a 1x3 vector on the axes femininity, youth, royalty.
LECTURE = {"man": (0, 0, 0), "woman": (1, 0, 0), "boy": (0, 1, 0), "girl": (1, 1, 0), "prince": (0, 1, 1),
           "princess": (1, 1, 1), "queen": (1, 0, 1), "king": (0, 0, 1), "monarch": (0.5, 0.5, 1)}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lecture_vectors(tmp_path_factory):
    lines = [f"{len(LECTURE)} 3"] + [f"{w} {' '.join(map(str, v))}" for w, v in LECTURE.items()]
    return write(tmp_path_factory.mktemp("lecture") / "lecture.txt", "\n".join(lines) + "\n")


@pytest.mark.parametrize("a, b, expected", [
    ([1, 0], [1, 0], 1.0), ([1, 0], [0, 1], 0.0), ([1, 0], [-2, 0], -1.0), ([1, 0], [1, 1], 1 / math.sqrt(2)),
    ([3, 4], [4, 3], 24 / 25), ([0, 0], [1, 1], 0.0),  # a zero vector is similar to nothing
])
def test_cosine_known_answers(a, b, expected):
    assert cosine(torch.tensor(a, dtype=torch.float), torch.tensor(b, dtype=torch.float)) == pytest.approx(expected, abs=1e-6)


def test_analogy_on_the_lecture_table_answers_queen(lecture_vectors):
    table = EmbeddingTable.load(lecture_vectors)
    answers = table.analogy("man", "king", "woman", k=3)["answers"]
    assert answers[0] == {"entry": "queen", "cosine": 1.0}
    assert {"man", "king", "woman"}.isdisjoint(a["entry"] for a in answers)
    # the query vector is b - a + c of unit vectors; man is the zero vector, so it is king + woman
    q = analogy_query(torch.zeros(3), torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]))
    assert q.tolist() == [1.0, 0.0, 1.0]
    assert table.neighbors("prince", k=2)["neighbors"] == [{"entry": "monarch", "cosine": round(1.5 / math.sqrt(3), 4)},
                                                           {"entry": "princess", "cosine": round(2 / math.sqrt(6), 4)}]


def test_explore_commands_print_results_on_stdout(lecture_vectors):
    result = run("analogy", "man", "king", "woman", "-m", lecture_vectors, "-k", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "queen\t1.0000\n"
    result = run("similarity", "queen", "princess", "-m", lecture_vectors)
    assert result.stdout == f"{2 / math.sqrt(6):.4f}\n"
    result = run("neighbors", "girl", "-m", lecture_vectors, "-k", "1", "--json")
    assert json.loads(result.stdout)["neighbors"] == [{"entry": "princess", "cosine": round(2 / math.sqrt(6), 4)}]


@pytest.mark.parametrize("args, message", [
    (["neighbors", "emperor"], r"'emperor' is not in the vocabulary of .*lecture.txt \(9 entries\)"),
    (["analogy", "man", "king", "empress"], r"'empress' is not in the vocabulary"),
])
def test_unknown_word_is_a_one_line_error(lecture_vectors, args, message):
    import re

    result = run(*args, "-m", lecture_vectors)
    assert result.exit_code == 1 and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and re.search(message, line), result.stderr


def test_bad_word2vec_file_names_the_line(tmp_path):
    bad = write(tmp_path / "bad.txt", "2 3\na 1 2 3\nb 1 x 3\n")
    result = run("neighbors", "a", "-m", bad)
    assert result.exit_code == 1 and "bad.txt:3: expected a word and numbers" in result.stderr


def test_nearest_respects_allowed_and_exclude():
    vectors = torch.tensor([[1.0, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]])
    allowed = torch.tensor([True, False, True, True])
    assert [i for i, _ in nearest(vectors, vectors[0], 5, allowed, [0])] == [2, 3]


def test_grouped_update_with_one_example_per_group_is_word2vec_exactly():
    """G = 1 and S = K: the hand-written update equals plain SGD on word2vec's loss, computed by autograd."""
    torch.manual_seed(0)
    model = Word2Vec(Word2VecConfig(vocab_size=20, dim=6))
    torch.nn.init.normal_(model.context.weight, std=0.3)
    torch.nn.init.normal_(model.embedding.weight, std=0.3)
    W, O = model.embedding.weight.detach().clone(), model.context.weight.detach().clone()
    inputs, truth = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 1])
    noise = torch.tensor([[6, 7], [8, 9], [7, 10]])
    lr = 0.1
    loss = model.sgd_step(inputs, truth, noise, negative=2, lr=lr)

    Wg, Og = W.clone().requires_grad_(), O.clone().requires_grad_()
    h = Wg[inputs]
    expected_loss = -(torch.nn.functional.logsigmoid((h * Og[truth]).sum(1)).sum()
                      + torch.nn.functional.logsigmoid(-(h.unsqueeze(1) * Og[noise]).sum(2)).sum())
    expected_loss.backward()
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    assert torch.allclose(model.embedding.weight, W - lr * Wg.grad, atol=1e-6)
    assert torch.allclose(model.context.weight, O - lr * Og.grad, atol=1e-6)


def test_cbow_update_gives_every_context_word_the_whole_error():
    """CBOW: h is the mean of the context vectors; each context word moves by the full step on h (word2vec)."""
    torch.manual_seed(0)
    model = Word2Vec(Word2VecConfig(vocab_size=20, dim=6, arch="cbow"))
    torch.nn.init.normal_(model.context.weight, std=0.3)
    W, O = model.embedding.weight.detach().clone(), model.context.weight.detach().clone()
    inputs, counts = torch.tensor([1, 2, 3, 4, 2, 6]), torch.tensor([2, 1, 3])  # contexts [1 2] [3] [4 2 6]
    truth, noise, lr = torch.tensor([7, 8, 9]), torch.tensor([[10, 11], [12, 13], [14, 15]]), 0.1
    loss = model.sgd_step(inputs, truth, noise, negative=2, lr=lr, counts=counts)

    Og = O.clone().requires_grad_()
    h = torch.stack([W[[1, 2]].mean(0), W[[3]].mean(0), W[[4, 2, 6]].mean(0)]).requires_grad_()
    expected_loss = -(torch.nn.functional.logsigmoid((h * Og[truth]).sum(1)).sum()
                      + torch.nn.functional.logsigmoid(-(h.unsqueeze(1) * Og[noise]).sum(2)).sum())
    expected_loss.backward()
    expected_W = W.clone()
    for word, example in zip(inputs.tolist(), [0, 0, 1, 2, 2, 2]):
        expected_W[word] -= lr * h.grad[example]
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    assert torch.allclose(model.embedding.weight, expected_W, atol=1e-6)
    assert torch.allclose(model.context.weight, O - lr * Og.grad, atol=1e-6)


def test_skipgram_pulls_co_occurring_words_together(tmp_path):
    # cat and dog share their contexts, car and bus share others: a short run must group them
    lines = []
    for i in range(60):
        lines += [f"the {'cat' if i % 2 else 'dog'} chased a ball and purred softly",
                  f"the {'car' if i % 2 else 'bus'} drove down the road with its engine"]
    corpus = write(tmp_path / "pets.txt", "\n".join(lines) + "\n")
    for arch in ("skipgram", "cbow"):
        summary = train_embeddings(
            run_dir=tmp_path / arch, source=TextSource(inputs=(str(corpus),)), min_count=1,
            model_settings={"dim": 16, "arch": arch}, train_settings={"epochs": 20, "sample": 0.0, "window": 3, "lr": 0.05})
        table = EmbeddingTable.load(tmp_path / arch)
        same, other = table.similarity("cat", "dog")["cosine"], table.similarity("cat", "car")["cosine"]
        margin = 0.3 if arch == "skipgram" else 0.0  # CBOW's input vectors all drift together on so tiny a corpus
        assert same > 0.5 and same > other + margin, (arch, same, other)
        assert table.neighbors("bus", k=1)["neighbors"][0]["entry"] == "car"
        history = [json.loads(l) for l in (tmp_path / arch / "metrics.jsonl").read_text().splitlines()]
        assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.8
        assert summary["vocabulary"] == 17
    exported = (tmp_path / "skipgram" / "vectors.txt").read_text().splitlines()
    assert exported[0] == "17 16" and len(exported) == 18
    meta = (tmp_path / "skipgram" / "projector" / "metadata.tsv").read_text().splitlines()
    rows = (tmp_path / "skipgram" / "projector" / "vectors.tsv").read_text().splitlines()
    assert meta[0] == "word\tcount" and len(meta) == 18 and len(rows) == 17 and len(rows[0].split("\t")) == 16
    assert EmbeddingTable.load(tmp_path / "skipgram" / "vectors.txt").neighbors("bus", k=1)["neighbors"][0]["entry"] == "car"


def test_train_embeddings_resumes_after_the_last_epoch(tmp_path):
    corpus = write(tmp_path / "c.txt", "a b c d e f g\n" * 50)
    settings = {"model_settings": {"dim": 8}, "min_count": 1}
    train_embeddings(run_dir=tmp_path / "full", source=TextSource(inputs=(str(corpus),)), train_settings={"epochs": 3}, **settings)
    train_embeddings(run_dir=tmp_path / "part", source=TextSource(inputs=(str(corpus),)), train_settings={"epochs": 1}, **settings)
    # a run stopped after epoch 1 of 3: --resume with the full number of epochs finishes it identically
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    config["train"]["epochs"] = 3
    (tmp_path / "part" / "config.json").write_text(json.dumps(config))
    train_embeddings(run_dir=tmp_path / "part", resume=True)
    full = EmbeddingTable.load(tmp_path / "full").vectors
    assert torch.equal(EmbeddingTable.load(tmp_path / "part").vectors, full)


def test_build_vocab_statistics_file_and_embedding_table(demo_tokenizer, tmp_path):
    corpus = write(tmp_path / "c.txt", "I am a student\n\nI am ☃\n")
    out = tmp_path / "vocab"
    result = run("build-vocab", "-t", demo_tokenizer.folder, corpus, "-o", out, "--embedding-dim", "8", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    pieces = demo_tokenizer.encode(["I am a student", "I am ☃"])
    tokens = sum(map(len, pieces))
    assert stats["sentences"] == 2 and stats["words"] == 7 and stats["tokens"] == tokens
    assert stats["pieces_per_word"] == round(tokens / 7, 3)
    # the demo tokenizer has byte fallback: the snowman becomes byte pieces, not <unk>
    assert stats["unknown_tokens"] == 0
    assert stats["pieces_seen"] == len({i for p in pieces for i in p})
    assert stats["unseen_pieces"] == len(demo_tokenizer) - 4 - stats["pieces_seen"]
    assert stats["embedding"] == {"shape": [600, 8], "parameters": 4800}
    entries = vocab.read_vocab_file(out / "vocab.tsv")
    assert len(entries) == 600 and entries[0] == ("<pad>", 0)
    assert sum(n for _, n in entries) == tokens
    table = EmbeddingTable.load(out)
    assert table.vectors.shape == (600, 8) and table.vectors[0].abs().sum() == 0  # the <pad> row is zero
    note = table.neighbors("students", k=3)
    assert len(note["neighbors"]) == 3


def test_unknown_rate_counts_unk_pieces(tmp_path):
    from nmtkit.config import TokenizerConfig
    from nmtkit.tokenization import train_tokenizer

    tok = train_tokenizer(["abc abc abd"] * 20, tmp_path / "tok", TokenizerConfig(model_type="char", vocab_size=9))
    counts = vocab.count_pieces(tok, ["abc", "x yz"])  # a run of unknown characters is one <unk>
    stats = vocab.vocab_stats(tok, counts)
    assert stats["unknown_tokens"] == 2 and stats["unknown_rate"] == round(2 / counts.tokens, 6)


def test_vocab_file_escapes_pieces_with_line_breaks(tmp_path):
    entries = [("\n", 3), ("a\tb", 1), ("back\\slash", 2), ("\x1c", 0), ("plain", 7)]
    vocab.write_vocab_file(tmp_path / "v.tsv", entries)
    assert len((tmp_path / "v.tsv").read_text().split("\n")) == len(entries) + 1
    assert vocab.read_vocab_file(tmp_path / "v.tsv") == entries


def test_translator_and_gpt_tables_average_word_pieces(demo_tokenizer, tmp_path):
    from nmtkit.checkpoint import save_weights, write_config

    run_dir = tmp_path / "gpt"
    demo_tokenizer.copy_to(run_dir / "tokenizer")
    write_config(run_dir, "gpt", model={})
    vectors = torch.randn(640, 4)  # padded to a multiple of 64 rows, as models do
    save_weights(run_dir / "model.safetensors", {"embed.weight": vectors})
    table = EmbeddingTable.load(run_dir)
    assert table.vectors.shape == (600, 4)
    word = "unbelievably"
    ids = demo_tokenizer.encode([word])[0]
    assert len(ids) > 1
    vector, rows = table.lookup(word)
    assert rows == ids and torch.allclose(vector, vectors[ids].mean(0))
    result = run("neighbors", word, "-m", run_dir, "-k", "3")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert f"{word!r} is made of {len(ids)} pieces" in result.stderr


def test_embeddings_on_real_text(shared_corpora, tmp_path):
    """Multi30k's English side: after a short run the neighbours of common words make sense."""
    summary = train_embeddings(run_dir=tmp_path / "m30k", source=TextSource(inputs=(str(shared_corpora / "multi30k" / "train.en"),)),
                                         train_settings={"epochs": 2})
    table = EmbeddingTable.load(tmp_path / "m30k")
    colours = [n["entry"] for n in table.neighbors("red", k=5)["neighbors"]]
    assert {"blue", "green", "yellow", "black", "white", "orange", "pink", "purple"} & set(colours[:3]), colours
    assert summary["tokens"] > 300_000
