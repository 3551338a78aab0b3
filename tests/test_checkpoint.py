import pickle

import pytest
import torch

from nmtkit import checkpoint
from nmtkit.errors import CheckpointError
from nmtkit.files import append_jsonl, atomic_write, read_jsonl


def test_weights_round_trip_with_tied_tensors(tmp_path):
    emb = torch.randn(5, 3)
    state = {"embed.weight": emb, "out.weight": emb, "bias": torch.zeros(2)}  # tied, as shared embeddings are
    checkpoint.save_weights(tmp_path / "model.safetensors", state)
    loaded = checkpoint.load_weights(tmp_path / "model.safetensors")
    assert set(loaded) == set(state)
    assert torch.equal(loaded["embed.weight"], emb) and loaded["out.weight"] is loaded["embed.weight"]
    assert checkpoint.count_parameters(loaded) == 17  # the tied table counts once


def test_config_versions(tmp_path):
    checkpoint.write_config(tmp_path, "translator", model={"arch": "rnn"})
    assert checkpoint.read_config(tmp_path, ("translator",))["model"] == {"arch": "rnn"}
    with pytest.raises(CheckpointError, match="a 'translator' run, but this command needs one of: gpt"):
        checkpoint.read_config(tmp_path, ("gpt",))
    (tmp_path / "config.json").write_text('{"format_version": 99, "kind": "translator"}')
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        checkpoint.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.read_config(tmp_path)
    with pytest.raises(CheckpointError, match="no such run folder"):
        checkpoint.read_config(tmp_path / "missing")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_disguised_as_weights_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CheckpointError, match="not a valid safetensors weights file"):
        checkpoint.load_weights(tmp_path / "model.safetensors")


def test_truncated_weights_are_refused(tmp_path):
    checkpoint.save_weights(tmp_path / "model.safetensors", {"w": torch.randn(100, 100)})
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        checkpoint.load_weights(tmp_path / "model.safetensors")


def test_train_state_is_loaded_without_unpickling_code(tmp_path, capsys):
    good = {"step": 3, "rng": torch.get_rng_state(), "opt": {"lr": 0.1}}
    checkpoint.save_train_state(tmp_path / "train_state.pt", good)
    assert checkpoint.load_train_state(tmp_path / "train_state.pt")["step"] == 3
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused: not a safe training-state file"):
        checkpoint.load_train_state(tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def boom(handle):
        handle.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_metrics_jsonl_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "bleu": 10.0})
    with open(path, "a") as f:
        f.write('{"step": 2, "bl')
    assert read_jsonl(path) == [{"step": 1, "bleu": 10.0}]
