import gzip

import pytest

from nmtkit.data import registry
from nmtkit.errors import DataError
from nmtkit.files import file_sha256
from nmtkit.data.sources import expand_inputs

from conftest import DEMO


def test_demo_corpus_is_embedded():
    assert registry.corpus_dir("demo") == DEMO
    assert registry.resolve("demo/train.en") == DEMO / "train.en"
    assert expand_inputs(["demo"]) == [DEMO / "train.en", DEMO / "train.ko"]
    assert registry.parallel_files("demo", "en", "ko", "test") == (DEMO / "test.en", DEMO / "test.ko")


def test_demo_corpus_shape():
    for split, n in [("train", 1800), ("valid", 100), ("test", 100)]:
        en = (DEMO / f"{split}.en").read_text(encoding="utf-8").splitlines()
        ko = (DEMO / f"{split}.ko").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(ko) == n and all(en) and all(ko)
    assert ("I am a student.", "저는 학생입니다.") in zip(
        (DEMO / "train.en").read_text().splitlines(), (DEMO / "train.ko").read_text().splitlines())


def test_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("NMTKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="unknown corpus 'nope'; known corpora: demo, multi30k"):
        registry.corpus_info("nope")
    with pytest.raises(DataError, match="corpus 'multi30k' is not downloaded; run: nmtkit download multi30k"):
        registry.resolve("multi30k/train.en")
    with pytest.raises(DataError, match="has no language 'xx'"):
        registry.parallel_files("demo", "en", "xx", "train")
    with pytest.raises(DataError, match="demo/nope.txt: corpus 'demo' has no file 'nope.txt'"):
        registry.resolve("demo/nope.txt")


def test_download_fetches_gunzips_and_verifies(tmp_path, monkeypatch):
    raw = tmp_path / "remote" / "train.en.gz"
    raw.parent.mkdir()
    raw.write_bytes(gzip.compress(b"hello\n"))
    (tmp_path / "plain.txt").write_text("hello\n")
    good = file_sha256(tmp_path / "plain.txt")
    fake = {"toy": {"task": "language-modelling",
                    "files": {"train.en": {"url": raw.as_uri(), "gunzip": True, "sha256": good}}}}
    monkeypatch.setattr(registry, "manifest", lambda: fake)
    monkeypatch.setenv("NMTKIT_DATA", str(tmp_path / "data"))
    folder = registry.download("toy")
    assert (folder / "train.en").read_text() == "hello\n"
    assert registry.resolve("toy/train.en") == folder / "train.en"
    fake["toy"]["files"]["train.en"]["sha256"] = "0" * 64
    with pytest.raises(DataError, match="checksum mismatch"):
        registry.download("toy", to=tmp_path / "other")
    fake["toy"]["files"]["train.en"]["url"] = (tmp_path / "missing.gz").as_uri()
    with pytest.raises(DataError, match="download failed"):
        registry.download("toy", to=tmp_path / "third")


def test_download_from_local_copy(shared_corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("NMTKIT_DATA", str(tmp_path))
    folder = registry.download("multi30k", source=shared_corpora / "multi30k")
    assert folder == tmp_path / "multi30k"
    assert registry.resolve("multi30k/train.de").stat().st_size > 2_000_000
    registry.download("sst2", source=shared_corpora / "sst2")  # a prepared split: verified against the manifest
    with pytest.raises(DataError, match="prepared split of the official data"):
        registry.download("squad")
