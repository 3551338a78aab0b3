"""Export run folders to CTranslate2, the C++ inference engine (optional: `pip install ctranslate2`), and write
the folders of the other formats (`write_hf`: a Hugging Face GPT-2 folder; `write_run`: a run of full weights)
from weights that `nmtkit.workflows.runs.export_run` reads.

`export_ctranslate2(run_dir, out)` builds a CTranslate2 model with its model-spec API from a Transformer
translator or a GPT run (pretrained, or instruction-tuned by finetune --task generate): each nmtkit tensor
mapped onto the spec's variable of the same role, the vocabulary the tokenizer's pieces (special pieces at
their fixed ids). The folder it writes is CTranslate2's own
(`model.bin`, `config.json`, vocabulary) plus `tokenizer/` and `nmtkit.json` (what was exported, from where),
so `nmtkit translate -m OUT` and `nmtkit generate -m OUT` run it. What is *not* here: running it
(`nmtkit.workflows.translation.CT2Translator`, `nmtkit.workflows.lm.CT2LanguageModel`).

How the two architectures line up: a CTranslate2 attention layer holds its layer norm (before attention in
pre-norm, after the residual in post-norm, like nmtkit's `Block`); self-attention's first linear is the fused
query/key/value projection and cross-attention's second the fused key/value one, in nmtkit's row order; the
position encodings are written out (nmtkit interleaves sin and cos, CTranslate2's built-in table does not);
embedding tables and the output layer are cut to the real vocabulary (nmtkit pads them to a multiple of 64).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from nmtkit import checkpoint, hf
from nmtkit.errors import CheckpointError, ConfigError
from nmtkit.files import read_json, write_json

INFO = "nmtkit.json"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which every nmtkit model uses


def ctranslate2_module():
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("CTranslate2 is not installed: pip install ctranslate2") from None
    return ctranslate2


def ctranslate2_device(ct2, device: str) -> dict[str, Any]:
    """CTranslate2's device and threads for nmtkit's --device (auto: the GPU when there is one)."""
    import torch

    if device.startswith("cuda") or (device == "auto" and ct2.get_cuda_device_count() > 0):
        return {"device": "cuda", "device_index": int(device.split(":")[1]) if ":" in device else 0}
    return {"device": "cpu", "intra_threads": torch.get_num_threads()}


def is_ctranslate2_folder(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file() and (Path(path) / "model.bin").is_file()


def read_export(folder: str | Path, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The config of the run an export was made from; refuses an export of another kind of run."""
    info = read_json(Path(folder) / INFO)
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{Path(folder) / INFO}: holds no run config; the export is damaged")
    if kinds is not None and info.get("kind") not in kinds:
        raise CheckpointError(f"{folder}: a CTranslate2 export of a {info.get('kind')!r} run, but this command needs "
                              f"one of: {', '.join(kinds)}")
    checkpoint.check_sections(config, Path(folder) / INFO)
    return config


def export_ctranslate2(run_dir: str | Path, out: str | Path, quantization: str | None = None) -> dict[str, Any]:
    """Write the CTranslate2 model of a Transformer translator or GPT run into `out`; returns what was written.
    `quantization` (int8, int8_float32, float16, ...) stores the weights so; translation can also quantize at
    load time (`--compute-type`)."""
    import torch

    from nmtkit.config import from_dict
    from nmtkit.models import build_translator, translator_config
    from nmtkit.models.gpt import GPT, GPTConfig
    from nmtkit.tokenization import load_tokenizer

    ct2 = ctranslate2_module()
    run_dir, out = Path(run_dir), Path(out)
    _check_free(out)  # before the model is built
    config = checkpoint.read_config(run_dir, ("translator", "gpt", "finetune"))
    checkpoint.check_sections(config, run_dir / checkpoint.CONFIG)
    if config["kind"] == "finetune" and config["task"] != "generate":
        raise ConfigError(f"{run_dir}: a --task {config['task']} run; CTranslate2 export is for translators and GPTs")
    if (config.get("data") or {}).get("lora_rank"):
        raise ConfigError(f"{run_dir}: a LoRA run holds adapters only; export it with --format nmtkit (full weights) "
                          "first, then that run for CTranslate2")
    tok = load_tokenizer(run_dir / checkpoint.TOKENIZER_DIR)
    pieces = [tok.id_to_piece(i) for i in range(len(tok))]
    if config["kind"] == "translator":
        if config["arch"] != "transformer":
            raise ConfigError(f"{run_dir}: a {config['arch']} translator; CTranslate2 export is for Transformers")
        model = build_translator("transformer", translator_config("transformer", config["model"], str(run_dir)))
    else:
        model = GPT(from_dict(GPTConfig, config["model"], str(run_dir / checkpoint.CONFIG)))
    checkpoint.load_into(model, run_dir / checkpoint.WEIGHTS)
    with torch.no_grad():
        spec = _translator_spec(model, pieces) if config["kind"] == "translator" else _gpt_spec(model, pieces)
    spec.config.layer_norm_epsilon = getattr(model.cfg, "norm_eps", LAYER_NORM_EPS)
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"CTranslate2 refused the model: {exc}") from None
    info = {"format_version": checkpoint.FORMAT_VERSION, "kind": config["kind"], "exported_from": str(run_dir),
            "quantization": quantization or "float32", "ctranslate2": ct2.__version__, "config": config}
    with _assembled(out) as tmp:
        spec.save(str(tmp))
        tok.copy_to(tmp / checkpoint.TOKENIZER_DIR)
        write_json(tmp / INFO, info)
    return {"output": str(out), "kind": config["kind"], "quantization": info["quantization"],
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def _np(t) -> Any:
    return t.detach().float().cpu().numpy()


def _linear(spec, layer, rows: int | None = None) -> None:
    spec.weight = _np(layer.weight[:rows])
    if getattr(layer, "bias", None) is not None:
        spec.bias = _np(layer.bias[:rows])


def _norm(spec, norm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def _block(spec, block) -> None:
    """One nmtkit `Block` onto a CTranslate2 encoder or decoder layer."""
    _norm(spec.self_attention.layer_norm, block.norms[0])
    _linear(spec.self_attention.linear[0], block.self_attn.qkv)
    _linear(spec.self_attention.linear[1], block.self_attn.out)
    if block.cross_attn is not None:
        _norm(spec.attention.layer_norm, block.norms[1])
        _linear(spec.attention.linear[0], block.cross_attn.q)
        _linear(spec.attention.linear[1], block.cross_attn.kv)
        _linear(spec.attention.linear[2], block.cross_attn.out)
    _norm(spec.ffn.layer_norm, block.norms[-1])
    _linear(spec.ffn.linear_0, block.ff.up)
    _linear(spec.ffn.linear_1, block.ff.down)


def _positions(spec, positions, n: int) -> None:
    table = positions.table.weight if positions.kind == "learned" else positions.table_
    spec.encodings = _np(table[:n])


def _translator_spec(model, pieces: list[str]):
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    pre = cfg.norm == "pre"
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=pre,
        activation=common_spec.Activation.GELU if cfg.activation == "gelu" else common_spec.Activation.RELU)
    for side, blocks, table, positions, final in (
        (spec.encoder, model.encoder, model.src_embed, model.src_pos, model.enc_norm),
        (spec.decoder, model.decoder, model.tgt_embed, model.tgt_pos, model.dec_norm),
    ):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = _np(table.weight[: len(pieces)])
        side.scale_embeddings = True  # nmtkit multiplies embeddings by sqrt(D) too
        _positions(side.position_encodings, positions, cfg.max_positions)
        for layer_spec, block in zip(side.layer, blocks):
            _block(layer_spec, block)
        if pre:
            _norm(side.layer_norm, final)
    _linear(spec.decoder.projection, model.out, len(pieces))
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def _gpt_spec(model, pieces: list[str]):
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        cfg.layers, cfg.heads, pre_norm=True,
        activation=common_spec.Activation.GELUTanh if cfg.activation == "gelu_tanh" else common_spec.Activation.GELU)
    decoder = spec.decoder
    decoder.embeddings.weight = _np(model.embed.weight[: len(pieces)])
    decoder.scale_embeddings = False
    _positions(decoder.position_encodings, model.pos, cfg.block_size)
    for layer_spec, block in zip(decoder.layer, model.blocks):
        _block(layer_spec, block)
    _norm(decoder.layer_norm, model.norm)
    _linear(decoder.projection, model.out, len(pieces))
    spec.register_vocabulary(pieces)
    return spec


# ---------------------------------------------------------------------------------------------------------
# A Hugging Face GPT-2 folder, a run of full weights


def _check_free(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose another output folder")


@contextlib.contextmanager
def _assembled(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write an export into, renamed to `out` when the block ends, removed if
    it fails: an export is never half-written. `out` must not exist, or be empty."""
    _check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_hf(out: Path, cfg, weights: dict[str, Any], tok, task: str | None = None,
             labels: list[str] | None = None) -> None:
    """A GPT's config, weights (nmtkit names) and tokenizer as a GPT-2 folder that transformers'
    AutoModelForCausalLM and AutoTokenizer load: safetensors only; a byte-level BPE tokenizer as its own files,
    a SentencePiece one as a `tokenizers` Unigram model with its pieces, scores and normalisation table.

    A fine-tuned head (`task`; weights `body.*` and `head.*`) goes with it. classify: a
    GPT2ForSequenceClassification with `labels`. Its `score` layer has no bias, but the final layer norm's bias
    reaches it as a constant: that bias takes the head's (W beta' = W beta + b, solved exactly when W's rows are
    independent: "where the shapes allow"); its tokenizer closes every text with </s>, the token whose state
    nmtkit's classifier reads. qa: a GPT2ForQuestionAnswering, whose `qa_outputs` is nmtkit's span head as it is
    (its input: </s> question </s> context </s>)."""
    import torch
    from safetensors.torch import save_file

    config = hf.gpt2_config(cfg, tok.bos_id, tok.eos_id)
    head = {}
    if task in ("classify", "qa"):
        weights = {k.removeprefix("body."): v for k, v in weights.items()}
        w, b = weights.pop("head.weight").double(), weights.pop("head.bias").double()
        head = {"qa_outputs.weight": w, "qa_outputs.bias": b} if task == "qa" else {"score.weight": w}
        config["architectures"] = ["GPT2ForQuestionAnswering" if task == "qa" else "GPT2ForSequenceClassification"]
    if task == "classify":
        if torch.linalg.matrix_rank(w) < w.shape[0]:
            raise ConfigError(f"the head's {w.shape[0]} rows are not independent, so its bias has no place in "
                              "GPT2ForSequenceClassification (whose score layer has none)")
        shift = torch.linalg.lstsq(w, b.unsqueeze(1)).solution.squeeze(1)
        weights["norm.bias"] = (weights["norm.bias"].double() + shift).float()
        config.update(id2label=dict(enumerate(labels or [])), label2id={name: i for i, name in enumerate(labels or [])},
                      pad_token_id=tok.pad_id)
    tensors = {**hf.gpt2_tensors(weights, cfg), **{k: v.float().contiguous() for k, v in head.items()}}
    with _assembled(out) as tmp:
        save_file(tensors, str(tmp / hf.WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / hf.CONFIG, config)
        if tok.kind == "bpe":
            tok.copy_to(tmp)
        else:
            _unigram_tokenizer(tok, tmp)
        if task == "classify":
            _close_with_eos(tmp / "tokenizer.json", tok.id_to_piece(tok.eos_id), tok.eos_id)


def _close_with_eos(path: Path, eos: str, eos_id: int) -> None:
    """Make the tokenizer.json at `path` end every text with </s> (a classifier reads that token)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    found = HFTokenizer.from_file(str(path))
    found.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, eos_id)])
    found.save(str(path))


def _unigram_tokenizer(tok, folder: Path) -> None:
    """A SentencePiece tokenizer as tokenizer.json (a `tokenizers` Unigram model) and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tok.sp
    vocab = [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(len(tok))]
    byte_fallback = any(sp.IsByte(i) for i in range(len(tok)))
    out = HFTokenizer(models.Unigram(vocab, unk_id=tok.unk_id, byte_fallback=byte_fallback))
    # SentencePiece's own normalisation table, then its whitespace rules: runs of spaces collapsed, none at the
    # end, a text's first word opening with "▁" (written here, so that a text opening with spaces gets one too)
    charsmap = tok.charsmap()
    out.normalizer = normalizers.Sequence(([normalizers.Precompiled(charsmap)] if charsmap else []) + [
        normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=False, right=True),
        normalizers.Replace(Regex("^ "), "\u2581")])
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    out.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    special = [sp.IdToPiece(i) for i in (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id)]
    out.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in special])
    user = [sp.IdToPiece(i) for i in range(len(tok)) if _user_defined(sp, i)]
    if user:  # user-defined symbols ("\n" of a GPT's tokenizer) are matched before normalisation, as SentencePiece does
        out.add_tokens([AddedToken(p, normalized=False) for p in user])
    out.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": special[0], "unk_token": special[1],
        "bos_token": special[2], "eos_token": special[3], "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False})


def _user_defined(sp, i: int) -> bool:
    """Whether piece i is a user-defined symbol, which SentencePiece never splits: the one kind of ordinary
    piece whose score is 0 (its Python API has no IsUserDefined)."""
    return not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsByte(i)) and sp.GetScore(i) == 0.0 and i > 3


def write_run(out: Path, config: dict[str, Any], weights: dict[str, Any], run_dir: Path) -> None:
    """A run folder of `config` and full `weights`, with the tokenizer and run.json of `run_dir`."""
    with _assembled(out) as tmp:
        write_json(tmp / checkpoint.CONFIG, config)
        shutil.copytree(run_dir / checkpoint.TOKENIZER_DIR, tmp / checkpoint.TOKENIZER_DIR)
        checkpoint.save_weights(tmp / checkpoint.WEIGHTS, weights)
        if (run_dir / checkpoint.RUN_RECORD).is_file():
            shutil.copyfile(run_dir / checkpoint.RUN_RECORD, tmp / checkpoint.RUN_RECORD)
