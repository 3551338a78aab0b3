"""Hugging Face GPT-2 folders, read and written: the config, the weights and where the hub's cache keeps them.

A GPT-2 folder (`save_pretrained`) holds `config.json` (model_type gpt2), `model.safetensors` (or shards listed
in `model.safetensors.index.json`) and the byte-level BPE tokenizer's files (`nmtkit.tokenization.BPETokenizer`).
nmtkit's GPT is GPT-2's shape, so the weights map one to one:

    transformer.wte.weight          embed.weight (rows padded to a multiple of 64; out.weight is the same tensor)
    transformer.wpe.weight          pos.table.weight
    transformer.h.N.ln_1 / ln_2     blocks.N.norms.0 / norms.1
    transformer.h.N.attn.c_attn     blocks.N.self_attn.qkv   (Conv1D: stored in x out, so transposed; q, k, v in
    transformer.h.N.attn.c_proj     blocks.N.self_attn.out    the same order, heads split the same way)
    transformer.h.N.mlp.c_fc        blocks.N.ff.up
    transformer.h.N.mlp.c_proj      blocks.N.ff.down
    transformer.ln_f                norm

Attention is scaled by 1/sqrt(head size) in both, GPT-2's gelu_new is `gelu_tanh`, its layer-norm epsilon is
kept in the config. Pickled `pytorch_model.bin` files are never read (unpickling runs code). What is *not* here:
opening runs (`nmtkit.workflows.runs`), exporting one (`nmtkit.workflows.hub`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from nmtkit.errors import CheckpointError
from nmtkit.files import read_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# tensors a GPT-2 file may hold that are not weights: the causal masks older versions saved
NOT_WEIGHTS = re.compile(r"h\.\d+\.attn\.(masked_)?bias")


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face model folder (its config.json has a model_type, not nmtkit's format)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and "format_version" not in data


def hub_cache() -> Path:
    """The local Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def resolve(name: str | Path) -> Path:
    """A model folder from a path, or from a hub name (`gpt2`, `openai-community/gpt2`) already downloaded into
    the local hub cache; nothing is downloaded. A name that is neither is refused with one line."""
    path = Path(name)
    if path.exists() or not HUB_ID.fullmatch(str(name)) or str(name).startswith("."):
        return path
    from huggingface_hub import snapshot_download

    cache = hub_cache()
    try:
        return Path(snapshot_download(str(name), cache_dir=str(cache), local_files_only=True))
    except Exception:  # huggingface_hub's own errors, whose classes move between versions
        raise CheckpointError(
            f"{name}: no such folder, and no model of that name in the Hugging Face cache ({cache}); nmtkit never "
            f"downloads: fetch it once (hf download {name}) and run again") from None


def gpt_settings(folder: str | Path) -> dict[str, Any]:
    """nmtkit's GPT settings (`GPTConfig` fields) for a GPT-2 folder's config.json; anything nmtkit's GPT cannot
    compute the same way is refused with one line."""
    where = Path(folder) / CONFIG
    cfg = read_json(where)
    if cfg.get("model_type") != "gpt2":
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r}; nmtkit reads GPT-2 models (model_type gpt2)")
    activation = cfg.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{where}: activation_function {activation!r} is not one nmtkit's GPT has "
                              f"({', '.join(ACTIVATIONS)})")
    for key, fine in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if cfg.get(key, fine) != fine:
            raise CheckpointError(f"{where}: {key} is {cfg[key]}; nmtkit's GPT needs it {fine}")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if not isinstance(cfg.get(k), int)]
    if missing:
        raise CheckpointError(f"{where}: no whole number for {missing[0]}")
    return {"vocab_size": cfg["vocab_size"], "block_size": cfg["n_positions"], "d_model": cfg["n_embd"],
            "layers": cfg["n_layer"], "heads": cfg["n_head"], "ff_dim": cfg.get("n_inner") or 0,
            "dropout": cfg.get("resid_pdrop", 0.1), "attention_dropout": cfg.get("attn_pdrop", 0.1),
            "activation": ACTIVATIONS[activation], "norm_eps": cfg.get("layer_norm_epsilon", 1e-5)}


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a model folder (one, or the shards its index lists); pickles are refused."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        index = read_json(folder / INDEX)
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index, dict) else []
        if not shards or not all(isinstance(s, str) for s in shards):
            raise CheckpointError(f"{folder / INDEX}: lists no weight files")
        return [folder / s for s in shards]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    pickled = next((folder / p for p in PICKLES if (folder / p).is_file()), None)
    if pickled is not None:
        raise CheckpointError(f"{pickled}: refused: a pickle, and unpickling can run code; nmtkit reads {WEIGHTS} "
                              "(save it with save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"{folder}: no {WEIGHTS} here")


def read_tensors(folder: str | Path, shapes_only: bool = False) -> dict[str, Any]:
    """Every tensor of a model folder's safetensors files, by name (`shapes_only`: each one's shape, read from the
    files' headers: nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, Any] = {}
    for path in weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {INDEX})")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors.update({name: f.get_slice(name).get_shape() if shapes_only else f.get_tensor(name)
                                for name in f.keys()})
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    return tensors


def _layer_names(layers: int) -> list[tuple[str, str, bool]]:
    """(GPT-2 name, nmtkit name, transposed) of every weight but the embeddings."""
    names = []
    for i in range(layers):
        for hf, ours, conv in (("ln_1", "norms.0", False), ("ln_2", "norms.1", False), ("attn.c_attn", "self_attn.qkv", True),
                               ("attn.c_proj", "self_attn.out", True), ("mlp.c_fc", "ff.up", True),
                               ("mlp.c_proj", "ff.down", True)):
            names.append((f"h.{i}.{hf}.weight", f"blocks.{i}.{ours}.weight", conv))
            names.append((f"h.{i}.{hf}.bias", f"blocks.{i}.{ours}.bias", False))
    return names + [("wpe.weight", "pos.table.weight", False), ("ln_f.weight", "norm.weight", False),
                    ("ln_f.bias", "norm.bias", False)]


def is_weight(name: str) -> bool:
    """Whether a tensor of a GPT-2 file is a weight of its own (not a saved mask, not the tied output layer)."""
    name = name.removeprefix("transformer.")
    return not NOT_WEIGHTS.fullmatch(name) and name != "lm_head.weight"


def gpt_weights(folder: str | Path, model) -> dict[str, Any]:
    """A GPT-2 folder's weights as the state dict of nmtkit's `model` (a GPT built from `gpt_settings`), each
    one checked: a missing tensor, a wrong shape or a tensor GPT-2 does not have is one line."""
    import torch

    folder = Path(folder)
    raw = {name.removeprefix("transformer."): t for name, t in read_tensors(folder).items()}
    expected = model.state_dict()
    where = f"{folder}: weights do not match {CONFIG}"
    out: dict[str, Any] = {}
    for hf, ours, conv in _layer_names(model.cfg.layers) + [("wte.weight", "embed.weight", False)]:
        if hf not in raw:
            raise CheckpointError(f"{where}: {hf} is missing")
        t = raw.pop(hf).float()
        t = t.t() if conv else t
        want = tuple(expected[ours].shape)
        if ours == "embed.weight" and t.dim() == 2 and t.shape[0] <= want[0] and t.shape[1] == want[1]:
            t = torch.cat([t, t.new_zeros(want[0] - t.shape[0], t.shape[1])])  # padded to a multiple of 64 rows
        if tuple(t.shape) != want:
            shown = tuple(t.t().shape) if conv else tuple(t.shape)
            raise CheckpointError(f"{where}: {hf} has shape {shown}, the config makes it "
                                  f"{tuple(reversed(want)) if conv else want}")
        out[ours] = t.contiguous()
    head = raw.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head.float(), out["embed.weight"][: head.shape[0]]):
        raise CheckpointError(f"{folder}: lm_head.weight differs from wte.weight; nmtkit's GPT ties them")
    unknown = sorted(name for name in raw if not NOT_WEIGHTS.fullmatch(name))
    if unknown:
        raise CheckpointError(f"{where}: {unknown[0]} is not part of a GPT-2 ({len(unknown)} such)")
    out["out.weight"] = out["embed.weight"]
    return out


def gpt2_config(cfg, bos: int, eos: int) -> dict[str, Any]:
    """The config.json of a GPT-2 folder for nmtkit's `GPTConfig`."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.d_model, "n_layer": cfg.layers,
            "n_head": cfg.heads, "n_inner": cfg.ff_dim or None,
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": cfg.norm_eps, "initializer_range": 0.02, "scale_attn_weights": True,
            "use_cache": True, "bos_token_id": bos, "eos_token_id": eos, "tie_word_embeddings": True,
            "torch_dtype": "float32"}


def gpt2_tensors(state: dict[str, Any], cfg, prefix: str = "transformer.") -> dict[str, Any]:
    """nmtkit GPT weights (a state dict, its names under `body.` for a task model stripped) as GPT-2's."""
    out = {prefix + "wte.weight": state["embed.weight"][: cfg.vocab_size]}
    for hf, ours, conv in _layer_names(cfg.layers):
        out[prefix + hf] = state[ours].t() if conv else state[ours]
    return {name: t.detach().float().contiguous() for name, t in out.items()}
