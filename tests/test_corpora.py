import gzip
import json

import pytest

from nmtkit.data import corpora
from nmtkit.data.corpora import (
    ReadStats, load_hf_dataset, hf_column, read_instructions, read_lines, read_parallel, read_records, read_squad,
    read_table, read_texts,
)
from nmtkit.errors import DataError

from conftest import write


def test_plain_text_keeps_empty_lines_and_strips_crlf(tmp_path):
    p = write(tmp_path / "a.txt", b"one\r\n\ntwo\nthree")
    assert list(read_lines(p)) == ["one", "", "two", "three"]


def test_gzip_is_transparent(tmp_path):
    p = tmp_path / "a.txt.gz"
    p.write_bytes(gzip.compress("hello\n안녕\n".encode()))
    assert list(read_lines(p)) == ["hello", "안녕"]


def test_invalid_utf8_error_names_file_and_line(tmp_path):
    p = write(tmp_path / "bad.txt", b"ok\nalso ok\nbad \xff here\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: invalid UTF-8"):
        list(read_lines(p))


def test_invalid_utf8_skip_counts_and_reports(tmp_path, caplog):
    p = write(tmp_path / "bad.txt", b"ok\n\xfe\xff\nfine\n\xc3\n")
    stats = ReadStats()
    assert list(read_lines(p, on_bad_line="skip", stats=stats)) == ["ok", "fine"]
    assert stats.skipped == 2 and stats.first_skipped == [f"{p}:2", f"{p}:4"]
    assert "skipped 2 line(s) with invalid UTF-8" in caplog.text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        list(read_lines(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a directory"):
        list(read_lines(tmp_path))


def test_parallel_files(tmp_path):
    s = write(tmp_path / "t.en", "a\nb\nc\n")
    t = write(tmp_path / "t.de", "x\ny\nz\n")
    assert list(read_parallel(s, t)) == [("a", "x"), ("b", "y"), ("c", "z")]


def test_parallel_files_of_different_lengths(tmp_path):
    s = write(tmp_path / "t.en", "a\nb\nc\n")
    t = write(tmp_path / "t.de", "x\ny\n")
    with pytest.raises(DataError, match=r"t\.de:3: file ends after 2 lines but .*t\.en has more"):
        list(read_parallel(s, t))
    with pytest.raises(DataError, match=r"t\.de:3: file ends after 2 lines"):
        list(read_parallel(t, s))


def test_parallel_skip_drops_the_pair(tmp_path):
    s = write(tmp_path / "t.en", b"a\n\xff\nc\n")
    t = write(tmp_path / "t.de", b"x\ny\nz\n")
    assert list(read_parallel(s, t, on_bad_line="skip")) == [("a", "x"), ("c", "z")]


def test_tsv_named_and_numbered_columns(tmp_path):
    p = write(tmp_path / "d.tsv", 'label\tsentence\n0\ta "quoted" thing\n1\tgood , fine\n')
    assert list(read_table(p, ["sentence"])) == [('a "quoted" thing',), ("good , fine",)]
    assert list(read_table(p, ["2", "label"])) == [('a "quoted" thing', "0"), ("good , fine", "1")]
    assert list(read_table(p, ["1"], header=False)) == [("label",), ("0",), ("1",)]


def test_csv_quoting(tmp_path):
    p = write(tmp_path / "d.csv", 'text,label\n"hello, world",1\n"say ""hi""",0\n')
    assert list(read_table(p, ["text"])) == [("hello, world",), ('say "hi"',)]


def test_missing_column(tmp_path):
    p = write(tmp_path / "d.tsv", "label\tsentence\n0\tfine\n")
    with pytest.raises(DataError, match=r"d\.tsv:1: no column 'text'; columns are: label, sentence"):
        list(read_table(p, ["text"]))
    q = write(tmp_path / "e.tsv", "label\tsentence\n0\tfine\n1\n")
    with pytest.raises(DataError, match=r"e\.tsv:3: row has 1 field\(s\), so column 'sentence' is missing"):
        list(read_table(q, ["sentence"]))
    assert list(read_table(q, ["sentence"], on_bad_line="skip")) == [("fine",)]


def test_read_texts_needs_column_for_tables(tmp_path):
    p = write(tmp_path / "d.tsv", "label\tsentence\n0\tfine\n")
    with pytest.raises(DataError, match="needs --column"):
        list(read_texts(p))
    assert list(read_texts(p, "sentence")) == ["fine"]


def test_jsonl_and_json(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b", "x": 1}\n')
    assert [r["text"] for _, r in read_records(p)] == ["a", "b"]
    q = write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    assert list(read_texts(q, "text")) == ["a", "b"]
    r = write(tmp_path / "hf.json", json.dumps({"data": [{"text": "c"}]}))
    assert list(read_texts(r, "text")) == ["c"]


def test_malformed_json(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        list(read_records(p))
    q = write(tmp_path / "d.json", '[\n{"text": "a"},\n{"text" "b"}\n]')
    with pytest.raises(DataError, match=r"d\.json:3: malformed JSON: Expecting ':' delimiter"):
        list(read_records(q))
    r = write(tmp_path / "e.jsonl", '["not", "an", "object"]\n')
    with pytest.raises(DataError, match=r"e\.jsonl:1: expected a JSON object"):
        list(read_records(r))


def test_missing_json_field(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: no field 'text'; fields are: body"):
        list(read_texts(p, "text"))


def test_empty_corpus(tmp_path):
    p = write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: empty corpus"):
        list(corpora.nonempty(read_lines(p), str(p)))


SQUAD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
    {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}


def test_squad(tmp_path):
    p = write(tmp_path / "s.json", json.dumps(SQUAD))
    (ex,) = read_squad(p)
    assert (ex.id, ex.question, ex.answers) == ("q1", "Where is Paris?", (("France", 12),))


def test_squad_bad_offset(tmp_path):
    bad = json.loads(json.dumps(SQUAD))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    p = write(tmp_path / "s.json", json.dumps(bad))
    with pytest.raises(DataError, match="answer 'France' is not at character 3"):
        read_squad(p)
    q = write(tmp_path / "n.json", json.dumps([1, 2]))
    with pytest.raises(DataError, match="not SQuAD format"):
        read_squad(q)


def test_instructions_output_or_response(tmp_path):
    p = write(tmp_path / "a.json", json.dumps([
        {"instruction": "Add", "input": "1 2", "output": "3"},
        {"instruction": "Greet", "response": "Hi"},
    ]))
    assert [tuple(vars(x).values()) for x in read_instructions(p)] == [("Add", "1 2", "3"), ("Greet", "", "Hi")]
    q = write(tmp_path / "b.jsonl", '{"input": "x", "output": "y"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:1: no field 'instruction'"):
        read_instructions(q)


def test_hugging_face_dataset_from_local_files(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "hello"}\n{"text": "world"}\n')
    ds = load_hf_dataset("json", split="train", data_files=[str(p)])
    assert list(hf_column(ds, "text", "json")) == ["hello", "world"]
    with pytest.raises(DataError, match="no column 'body'; columns are: text"):
        list(hf_column(ds, "body", "json"))
    with pytest.raises(DataError, match="dataset 'json'"):
        load_hf_dataset("json", split="train", data_files=[str(tmp_path / "missing.jsonl")])


def test_real_corpora_read(shared_corpora):
    m = shared_corpora / "multi30k"
    assert sum(1 for _ in read_parallel(m / "train.en", m / "train.de")) == 29000
    assert sum(1 for _ in read_table(shared_corpora / "sst2" / "train.tsv", ["sentence", "label"])) == 66349
    assert len(read_squad(shared_corpora / "squad" / "train.json")) == 8123
    assert len(read_instructions(shared_corpora / "code_alpaca" / "train.json")) == 1717


# ---------------------------------------------------------------------------------------------------------
# Users' tables, as the csv module and spreadsheets mean them (issue 26)


def _cli(*args):
    from typer.testing import CliRunner

    from nmtkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _prepared_texts(folder, tok):
    """The source and target texts of a prepared folder, decoded."""
    from pathlib import Path

    from nmtkit.data import mapped

    data = mapped.PreparedPairs(Path(folder), 1000)
    pairs = [data.pair(i) for i in range(len(data))]
    return [tuple(tok.decode([side.tolist()])[0] for side in pair) for pair in pairs]


def test_a_csv_table_keeps_line_breaks_in_quoted_fields_and_drops_the_byte_order_mark(tmp_path, demo_tokenizer):
    table = write(tmp_path / "pairs.csv", '\ufeffen,ko\n"two\nlines","x, ""y"""\nplain,z\n'.encode("utf-8"))
    assert list(corpora.read_table(table, ["en", "ko"])) == [("two\nlines", 'x, "y"'), ("plain", "z")]
    result = _cli("prepare", "--train", table, "--src-column", "en", "--tgt-column", "ko", "-t", demo_tokenizer.folder)
    assert result.exit_code == 0, result.output  # the first column is 'en', not '\ufeffen'
    texts = _prepared_texts(result.stdout.strip(), demo_tokenizer)
    assert texts[0][0] in ("two lines", "two\nlines") and texts[1] == ("plain", "z")  # not 'twolines'


def test_a_field_over_128_kb_is_a_text_not_a_malformed_row(tmp_path):
    long = "word " * 40_000  # 200 KB
    table = write(tmp_path / "long.csv", f'text,label\n"{long}",pos\nshort,neg\n')
    assert [label for _, label in corpora.read_table(table, ["text", "label"])] == ["pos", "neg"]


def test_labels_are_class_names_and_an_empty_one_is_refused_with_its_row(tmp_path, gpt):
    from nmtkit.data.sources import TaskSource

    table = write(tmp_path / "labels.tsv", "text\tlabel\ngood\tpos \nbad\tneg\nfine\t pos\n")
    assert list(TaskSource(file=str(table)).labelled()) == [("good", "pos"), ("bad", "neg"), ("fine", "pos")]
    empty = write(tmp_path / "empty.tsv", "text\tlabel\ngood\tpos\nbad\t\nfine\tpos\n")
    result = _cli("finetune", "--task", "classify", "-m", gpt, "--train", empty, "--max-steps", "1", "--device", "cpu",
                  "-o", tmp_path / "run")
    assert result.exit_code == 1
    assert f"{empty}:3: the label (column 'label') is empty; use --on-bad-line skip" in " ".join(result.stderr.split())
    assert list(TaskSource(file=str(empty)).labelled("skip")) == [("good", "pos"), ("fine", "pos")]


def test_train_tokenizer_trains_on_lines_longer_than_sentencepiece_takes(tmp_path):
    import json as json_

    words = [f"w{i % 97}x{i % 13}" for i in range(3000)]
    text = write(tmp_path / "long.txt", " ".join(words) + "\n" + "".join(words[:2000]) + "\n")  # 20 KB and 12 KB
    result = _cli("train-tokenizer", text, "-o", tmp_path / "tok", "--vocab-size", "20")
    assert result.exit_code == 0, result.output  # was: INTERNAL ... [!sentences_.empty()]
    assert "2 line(s) longer than sentencepiece's 4,192 bytes were trained on in pieces" in " ".join(result.stderr.split())
    assert json_.loads((tmp_path / "tok" / "tokenizer.json").read_text())["long_lines_in_pieces"] == 2
