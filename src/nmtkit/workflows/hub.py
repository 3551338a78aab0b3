"""Export a GPT run in the formats others read: a Hugging Face GPT-2 folder (`export --format hf`, which
`transformers.AutoModelForCausalLM` and `AutoTokenizer` load), or a full nmtkit run (`--format nmtkit`: a LoRA
run's adapters folded into full weights, so it no longer needs its base model).

The tokenizer goes with the model: a byte-level BPE one as its own files; a SentencePiece one as a `tokenizers`
Unigram model with SentencePiece's pieces and scores, normalisation and word boundaries (tokenizer.json), so
AutoTokenizer gives the ids nmtkit gives.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from nmtkit import checkpoint, hf
from nmtkit.config import from_dict
from nmtkit.errors import CheckpointError, ConfigError
from nmtkit.files import write_json
from nmtkit.workflows import runs


def _fresh(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def _into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def export_hf(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """A GPT run (pretrained, or fine-tuned with --task generate, LoRA adapters merged) as a GPT-2 folder."""
    from safetensors.torch import save_file

    from nmtkit.models.gpt import GPTConfig

    out = Path(out)
    run = runs.open_run(run_dir, ("gpt", "finetune"))
    if run.kind == "finetune" and run.task != "generate":
        raise ConfigError(f"{run.path}: a --task {run.task} run; --format hf exports GPTs (pretrained, or "
                          "fine-tuned with --task generate)")
    cfg = from_dict(GPTConfig, run.config["model"], str(run.path / checkpoint.CONFIG))
    tok = runs.run_tokenizer(run, cfg.vocab_size)
    tensors = hf.gpt2_tensors(runs.run_weights(run), cfg)
    tmp = _fresh(out)
    try:
        save_file(tensors, str(tmp / hf.WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / hf.CONFIG, hf.gpt2_config(cfg, tok.bos_id, tok.eos_id))
        if tok.kind == "bpe":
            tok.copy_to(tmp)
        else:
            _unigram_tokenizer(tok, tmp)
        _into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"output": str(out), "format": "hf", "kind": run.kind,
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def _unigram_tokenizer(tok, folder: Path) -> None:
    """A SentencePiece tokenizer as tokenizer.json (a `tokenizers` Unigram model) and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tok.sp
    vocab = [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(len(tok))]
    byte_fallback = any(sp.IsByte(i) for i in range(len(tok)))
    out = HFTokenizer(models.Unigram(vocab, unk_id=tok.unk_id, byte_fallback=byte_fallback))
    out.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "),
                                           normalizers.Strip()])
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    out.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Metaspace(replacement="\u2581", prepend_scheme="always")])
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


def export_full_run(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """A run as a run folder of full weights: a LoRA run's adapters merged into its base (the config says it
    has none), any other run's best weights as they are; config, tokenizer and run.json copied."""
    out = Path(out)
    run = runs.open_run(run_dir)
    if run.exported or run.hf:
        raise ConfigError(f"{run.path}: not an nmtkit run folder; --format nmtkit exports one")
    config = dict(run.config)
    if config.get("data", {}).get("lora_rank"):
        config["data"] = {**config["data"], "lora_rank": 0, "merged_lora": {
            k: config["data"][k] for k in ("lora_rank", "lora_alpha", "lora_targets")}}
    weights = runs.run_weights(run)
    tmp = _fresh(out)
    try:
        write_json(tmp / checkpoint.CONFIG, config)
        shutil.copytree(run.path / checkpoint.TOKENIZER_DIR, tmp / checkpoint.TOKENIZER_DIR)
        checkpoint.save_weights(tmp / checkpoint.WEIGHTS, weights)
        if (run.path / checkpoint.RUN_RECORD).is_file():
            shutil.copyfile(run.path / checkpoint.RUN_RECORD, tmp / checkpoint.RUN_RECORD)
        runs.append_record(tmp, "exported", {"from": str(run.path), "format": "nmtkit"})
        _into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"output": str(out), "format": "nmtkit", "kind": run.kind,
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
