import itertools

import pytest
import sentencepiece as spm

from nmtkit.config import TokenizerConfig
from nmtkit.errors import CheckpointError, DataError
from nmtkit.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from nmtkit.workflows.text import tokenize

from conftest import DEMO

SAMPLES = ["I am a student.", "저는 학생입니다.", "We like 🙂 emoji 🎉!", "", "  spaced   out  ", "Ünïcödé café"]


def test_special_ids_are_fixed(demo_tokenizer):
    sp = demo_tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert [sp.IdToPiece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert demo_tokenizer.vocab_size == 600
    assert demo_tokenizer.info["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}


def test_round_trip_ascii_korean_emoji_empty(demo_tokenizer):
    ids = demo_tokenizer.encode(SAMPLES)
    decoded = demo_tokenizer.decode(ids)
    # SentencePiece normalises runs of spaces (NFKC + whitespace collapsing); everything else comes back exactly
    assert decoded == [" ".join(s.split()) for s in SAMPLES]
    assert ids[3] == []


def test_byte_fallback_keeps_unseen_characters(demo_tokenizer):
    (ids,) = demo_tokenizer.encode(["🙂"])
    assert UNK_ID not in ids
    assert demo_tokenizer.decode([ids]) == ["🙂"]


def test_agrees_exactly_with_sentencepiece(demo_tokenizer):
    direct = spm.SentencePieceProcessor(model_file=str(demo_tokenizer.folder / "tokenizer.model"))
    lines = (DEMO / "test.en").read_text().splitlines() + (DEMO / "test.ko").read_text().splitlines() + SAMPLES
    pieces = list(tokenize(demo_tokenizer, lines, batch_size=7))
    ids = list(tokenize(demo_tokenizer, lines, ids=True, batch_size=7))
    assert pieces == [" ".join(direct.encode(s, out_type=str)) for s in lines]
    assert ids == [" ".join(map(str, direct.encode(s))) for s in lines]
    assert list(tokenize(demo_tokenizer, ids, ids=True, decode=True)) == [direct.decode(direct.encode(s)) for s in lines]
    assert list(tokenize(demo_tokenizer, pieces, decode=True)) == [direct.decode(direct.encode(s)) for s in lines]


def test_one_output_line_per_input_line_with_skipped_lines(demo_tokenizer):
    out = list(tokenize(demo_tokenizer, ["a", None, "", "b"]))
    assert len(out) == 4 and out[1] == "" and out[2] == ""


def test_decode_rejects_bad_ids(demo_tokenizer):
    with pytest.raises(DataError, match="input line 1: .* is not a line of integer ids"):
        list(tokenize(demo_tokenizer, ["1 2 x"], ids=True, decode=True))
    with pytest.raises(DataError, match="input line 1: id 99999 is outside the vocabulary"):
        list(tokenize(demo_tokenizer, ["99999"], ids=True, decode=True))


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char", "word"])
def test_every_model_type_trains(tmp_path, model_type):
    lines = (DEMO / "train.en").read_text().splitlines()
    tok = train_tokenizer(lines, tmp_path / "tok", TokenizerConfig(model_type=model_type, vocab_size=200))
    assert tok.info["config"]["model_type"] == model_type
    (ids,) = tok.encode(["I am a student."])
    assert tok.decode([ids]) == ["I am a student."]
    if model_type == "word":
        assert tok.encode_pieces(["I am a student."])[0] == ["▁I", "▁am", "▁a", "▁student."]
    if model_type == "char":
        assert all(len(p.lstrip("▁")) <= 1 for p in tok.encode_pieces(["student"])[0])


def test_user_defined_symbols_are_never_split(tmp_path):
    lines = (DEMO / "train.en").read_text().splitlines()
    tok = train_tokenizer(lines, tmp_path / "tok", TokenizerConfig(vocab_size=200, user_defined_symbols=("<sep>",)))
    assert "<sep>" in tok.encode_pieces(["question<sep>answer"])[0]


def test_sampling_is_seeded(tmp_path):
    lines = (DEMO / "train.en").read_text().splitlines()
    cfg = TokenizerConfig(vocab_size=150, max_sentences=300, seed=3)
    a = train_tokenizer(lines, tmp_path / "a", cfg)
    train_tokenizer(lines, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "tokenizer.vocab").read_text() == (tmp_path / "b" / "tokenizer.vocab").read_text()
    assert a.info["sentences"] == len(lines)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer(["", "  "], tmp_path / "x", TokenizerConfig(vocab_size=50))
    with pytest.raises(DataError, match="too small: this corpus needs at least"):
        train_tokenizer(["tiny corpus"] * 5, tmp_path / "x", TokenizerConfig(vocab_size=8, byte_fallback=True))
    with pytest.raises(DataError, match="at most \\d+ pieces"):
        train_tokenizer(["tiny corpus"] * 5, tmp_path / "x", TokenizerConfig(vocab_size=5000))
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(CheckpointError, match="no tokenizer here"):
        Tokenizer(tmp_path)


def test_joint_tokenizer_on_multi30k(shared_corpora, tmp_path):
    from nmtkit.data.corpora import read_lines

    m = shared_corpora / "multi30k"
    lines = itertools.chain(read_lines(m / "train.en"), read_lines(m / "train.de"))
    tok = train_tokenizer(lines, tmp_path / "m30k", TokenizerConfig(vocab_size=8000))
    assert tok.vocab_size == 8000 and tok.info["sentences"] == 58000
    assert tok.decode(tok.encode(["Zwei junge Männer stehen im Freien."])) == ["Zwei junge Männer stehen im Freien."]
