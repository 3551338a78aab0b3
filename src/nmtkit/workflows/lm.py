"""Language models (upstream): pretrain a GPT-style decoder on raw text (next-token prediction), and generate
text with it (or with its CTranslate2 export): sampling with temperature, top-k and top-p, streamed or batched."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import TokenizerConfig, TrainConfig, from_dict, to_dict
from nmtkit.data.sources import TextSource, describe_files
from nmtkit.errors import CheckpointError, ConfigError, DataError
from nmtkit.files import file_sha256, read_json
from nmtkit.tokenization import Tokenizer
from nmtkit.workflows import runs

log = logging.getLogger("nmtkit")

# pretraining's own defaults, on top of TrainConfig's (nanoGPT's shakespeare-char recipe)
TRAIN_DEFAULTS = {"schedule": "cosine", "lr": 1e-3, "warmup_steps": 100, "label_smoothing": 0.0,
                  "weight_decay": 0.1, "beta2": 0.99, "best_metric": "valid_loss", "max_steps": 5000, "eval_every": 250}
# the last share of the text kept for validation; windows per micro-batch; the GPT to go on pretraining from
DATA_DEFAULTS = {"valid_fraction": 0.1, "batch_size": 64, "init_from": None}


# ---------------------------------------------------------------------------------------------------------
# pretrain


@runs.one_writer
def pretrain(
    *,
    run_dir: Path,
    source: TextSource | None = None,
    valid_fraction: float | None = None,
    batch_size: int | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    init_from: str | None = None,
    device: str = "auto",
    resume: bool = False,
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Pretrain a GPT-style decoder on raw text (next-token prediction): a new one, or (`init_from`: a GPT run,
    a Hugging Face GPT-2 folder or its hub name) one that goes on from those weights, with their tokenizer and
    architecture. Returns the run's summary."""
    from nmtkit.data.batching import random_windows
    from nmtkit.data.datasets import load_stream
    from nmtkit.models.gpt import GPT
    from nmtkit.objectives import lm_loss
    from nmtkit.runtime import init_distributed, pick_device, seed_everything
    from nmtkit.training import train

    dev = pick_device(device)
    dist = init_distributed(dev)
    source, data, model_settings, train_cfg = _settings(
        run_dir, resume, source, {"valid_fraction": valid_fraction, "batch_size": batch_size, "init_from": init_from},
        model_settings, train_settings)
    base = runs.open_run(data["init_from"], ("gpt",)) if data["init_from"] and not resume else None
    if base is not None:
        if tokenizer:
            raise DataError("--init-from brings its own tokenizer; leave out --tokenizer")
        model_settings = runs.pretrained_settings(base.config["model"], model_settings)
        tokenizer = str(base.path)
    tok = runs.provide_tokenizer(run_dir, tokenizer, lambda: (line for doc in source.documents() for line in doc.split("\n")),
                                 _with_newline(tokenizer_cfg), source.files(), resume=resume, dist=dist)
    meta = prepare_lm_data(run_dir, source, tok, data["valid_fraction"]) if dist.is_main else None
    runs.barrier(dist)
    meta = meta or read_json(run_dir / "data" / "meta.json")
    train_ids = load_stream(run_dir / "data", "train", meta["dtype"])
    valid_ids = load_stream(run_dir / "data", "valid", meta["dtype"])
    model_cfg = _model_config({**model_settings, "vocab_size": len(tok)})
    block, batch_size = model_cfg.block_size, data["batch_size"]
    train_cfg = dataclasses.replace(train_cfg, max_tokens=batch_size * block)
    log.info("%s training tokens, %s validation tokens (%s characters); GPT on %s%s", f"{len(train_ids):,}",
             f"{len(valid_ids):,}", f"{meta['valid']['chars']:,}", dev, f" x {dist.world_size}" if dist.enabled else "")
    if dist.is_main:
        _write_config(run_dir, resume, model_cfg, train_cfg, source, data, meta, command, dev, dist)

    def batches(epoch: int):
        try:
            return random_windows(train_ids, block, batch_size, seed=train_cfg.seed, epoch=epoch)
        except ValueError as exc:
            raise DataError(str(exc)) from None

    seed_everything(train_cfg.seed)
    model = GPT(model_cfg)
    if base is not None and not resume:
        checkpoint.load_state(model, runs.run_weights(base), base.path)
    validate = None
    if len(valid_ids) > block:
        validate = lambda m: validation_scores(m, dev, valid_ids, block, meta["valid"]["chars"], batch_size)  # noqa: E731
    else:
        log.warning("the validation text (%d tokens) is shorter than a block of %d: no validation; model.safetensors "
                    "will hold the weights of the last step (raise --valid-fraction)", len(valid_ids), block)
    result = train(model, lm_loss(), batches, cfg=train_cfg, run_dir=run_dir, device=dev, evaluate=validate,
                   dist=dist, resume=resume, progress=progress, flops_per_token=model.flops_per_token(),
                   fixed_shapes=True)  # every window is block_size long
    summary = runs.training_summary(run_dir, "gpt", model, result)
    if dist.is_main:
        runs.append_record(run_dir, "training", summary)
    return summary


def _model_config(settings: dict[str, Any]):
    from nmtkit.models.gpt import GPTConfig

    return from_dict(GPTConfig, settings, "model settings")


def _with_newline(cfg: TokenizerConfig | None) -> TokenizerConfig:
    """A tokenizer trained for pretraining keeps the newline as a piece."""
    cfg = cfg or TokenizerConfig()
    return dataclasses.replace(cfg, user_defined_symbols=tuple(dict.fromkeys(("\n", *cfg.user_defined_symbols))))


def _settings(run_dir: Path, resume: bool, source: TextSource | None, data: dict[str, Any], model_settings,
              train_settings):
    """The text, data settings, model settings and TrainConfig of a new run (checked before any text is read),
    or of a resumed one (those it was started with; settings given again must not change)."""
    data = {k: v for k, v in data.items() if v is not None}
    if not resume:
        runs.refuse_existing_run(run_dir, "gpt")
        if source is None or not (source.inputs or source.dataset):
            raise DataError("no training text: give files, a known corpus (tinyshakespeare), or --dataset")
        data = {**DATA_DEFAULTS, **data}
        if data["init_from"] and Path(data["init_from"]).exists():  # where it is, whatever the directory
            data["init_from"] = str(Path(data["init_from"]).resolve())
        elif not data["init_from"]:  # (a pretrained GPT's settings are checked against it)
            _model_config({k: v for k, v in (model_settings or {}).items() if k != "vocab_size"})
        train_cfg = from_dict(TrainConfig, {**TRAIN_DEFAULTS, **(train_settings or {})}, "train settings")
    else:
        saved = runs.saved_config(run_dir, "gpt")
        saved_data = saved["data"]
        source = runs.resumed_source(run_dir, TextSource, TextSource.saved(saved_data), source, "data")
        data = runs.resumed_values(run_dir, saved_data, data, DATA_DEFAULTS)
        model_settings = runs.resumed_model(run_dir, saved["model"], model_settings, _model_config, ("vocab_size",))
        train_cfg = runs.resumed_config(run_dir, TrainConfig, saved["train"], train_settings, "train settings",
                                        runs.RESUME_OVERRIDES)
    if not 0.0 < data["valid_fraction"] < 1.0:
        raise DataError(f"--valid-fraction must be between 0 and 1, got {data['valid_fraction']}")
    return source, data, model_settings or {}, train_cfg


def _write_config(run_dir: Path, resume: bool, model_cfg, train_cfg, source: TextSource, data, meta, command, device,
                  dist) -> None:
    """config.json and run.json of a new run; a resumed run's config.json gets its new training limits."""
    if resume:
        checkpoint.update_config(run_dir, train=to_dict(train_cfg))
        return
    checkpoint.write_config(run_dir, "gpt", model=to_dict(model_cfg), train=to_dict(train_cfg),
                            data={"text": to_dict(source), **data})
    runs.start_record(run_dir, command, train_cfg.seed, device, {"files": describe_files(source.files()), "tokens": meta},
                      dist.world_size)


def prepare_lm_data(run_dir: Path, source: TextSource, tok: Tokenizer, valid_fraction: float) -> dict[str, Any]:
    """Tokenize the text once into run_dir/data/{train,valid}.bin; reuse them while text and tokenizer are
    unchanged (the key hashes the input files, the source, the split and the tokenizer model)."""
    import hashlib
    import json

    from nmtkit.data import corpora
    from nmtkit.data.datasets import encode_stream, split_documents
    from nmtkit.files import write_json

    folder = run_dir / "data"
    key_source = {"files": [file_sha256(p) for p in source.files()], "source": to_dict(source),
                  "valid_fraction": valid_fraction, "tokenizer": file_sha256(tok.model_file)}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()
    meta_file = folder / "meta.json"
    if meta_file.is_file() and read_json(meta_file).get("key") == key:
        log.info("reusing the tokenized text in %s", folder)
        return read_json(meta_file)
    total = sum(len(d) for d in corpora.nonempty(source.documents(), source.name()))
    valid_chars = total - int(total * (1 - valid_fraction))  # the split nanoGPT uses: text[int(n * 0.9):]
    newline_id = tok.newline_id
    if newline_id is None:
        log.warning("the tokenizer has no newline piece: line breaks become spaces")
    log.info("tokenizing %s characters", f"{total:,}")
    counts = encode_stream(split_documents(source.documents(), valid_chars, total), tok, folder, newline_id)
    meta = {"key": key, "characters": total, "valid_fraction": valid_fraction, **counts}
    write_json(meta_file, meta)
    return meta


def validation_scores(model, device, ids, block: int, characters: int, batch_size: int) -> dict[str, float]:
    """Validation during pretraining: the loss over the whole validation stream in consecutive windows, per
    token (nats), as perplexity, and in bits per character (so runs with different tokenizers compare)."""
    import math

    import torch
    import torch.nn.functional as F

    from nmtkit.data.batching import lm_windows

    starts = list(range(0, len(ids) - 1 - block + 1, block))
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # read once, at the end
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = lm_windows(ids, starts[i : i + batch_size], block).to(device)
            logits = model(batch.ids)
            total += F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="sum").double()
            count += batch.target_tokens
    total = total.item()
    covered_chars = characters * count / max(len(ids) - 1, 1)  # the windows cover all but a tail of < block tokens
    loss = total / max(count, 1)
    return {"valid_loss": round(loss, 4), "valid_ppl": round(math.exp(min(loss, 50)), 2),
            "bits_per_char": round(total / max(covered_chars, 1) / math.log(2), 4)}


# ---------------------------------------------------------------------------------------------------------
# generate


class LanguageModel:
    """A GPT run folder (pretrained, or instruction-tuned by finetune --task generate) loaded for generation."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from nmtkit.models.gpt import GPT
        from nmtkit.runtime import pick_device

        run = runs.open_run(run_dir, ("gpt", "finetune"))
        self._settings(run)
        self.device = pick_device(device)
        self.model = runs.load_weights_for_inference(lambda: GPT(self.cfg), run, self.device)

    def _settings(self, run: runs.Run) -> None:
        from nmtkit.data.datasets import prompt_budget
        from nmtkit.models.gpt import GPTConfig

        self.run_dir = run.path
        if run.kind == "finetune" and run.task != "generate":
            raise CheckpointError(f"{self.run_dir}: a --task {run.task} run cannot generate text")
        self.cfg = from_dict(GPTConfig, run.config["model"], str(self.run_dir / checkpoint.CONFIG))
        self.tok = runs.run_tokenizer(run, self.cfg.vocab_size)
        self.eos = self.tok.eos_id
        # instruction examples start a new document with </s> and keep at most half the context for the prompt
        self.prefix = [self.eos] if run.kind == "finetune" else []
        self.max_prompt = prompt_budget(run.config["data"]["max_len"]) if run.kind == "finetune" else None

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids, line breaks as the newline piece; an empty prompt starts a new document (</s>)."""
        ids = self.tok.encode([text])[0] if text else []
        if not ids:  # nothing to continue (empty, or only spaces): start a new document
            return [self.eos]
        return self.prefix + (ids[-self.max_prompt :] if self.max_prompt else ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([ids])[0]

    def continuation(self, prompt: list[int], new: list[int]) -> str:
        """The text that `new` adds to `prompt`. A pretrained model continues the prompt's text, so the two are
        decoded together: sentencepiece drops the space that opens a text, and "My mother" + "▁likes" must give
        " likes". An instruction's response was encoded as a text of its own (`encode_instruction`): alone."""
        if self.prefix:
            return self.decode(new)
        before = self.decode(prompt)
        text = self.decode(prompt + new)
        return text[len(before) :] if text.startswith(before) else self.decode(new)

    def seeded(self, seed: int):
        """The random state that `steps` draws from."""
        import torch

        return torch.Generator(device=self.device).manual_seed(seed)

    def steps(self, prompts: list[list[int]], rng, *, max_new_tokens: int, temperature: float, top_k: int,
              top_p: float) -> Iterator[list[int]]:
        """Continue prompts of one length together; yields each step's new token of every prompt (</s> once a
        prompt has ended) until all have ended or max_new_tokens."""
        import torch

        from nmtkit import decoding
        from nmtkit.runtime import autocast

        with autocast(self.device):
            for token in decoding.sample_stream(self.model, torch.tensor(prompts, device=self.device),
                                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, eos=self.eos, generator=rng, context=self.cfg.block_size):
                yield token.tolist()


class CT2LanguageModel(LanguageModel):
    """A GPT exported by `nmtkit export --format ctranslate2`, run by CTranslate2's Generator, with the
    `LanguageModel` interface. It cannot slide its window: generation stops at the model's last position."""

    def __init__(self, folder: str | Path, device: str = "auto", compute_type: str = "default"):
        from nmtkit.export import ctranslate2_device, ctranslate2_module

        self.ct2 = ctranslate2_module()
        self._settings(runs.open_run(folder, ("gpt", "finetune")))
        self.model = self.ct2.Generator(str(self.run_dir), **ctranslate2_device(self.ct2, device),
                                        compute_type=compute_type)

    def seeded(self, seed: int):
        self.ct2.set_random_seed(seed)

    def steps(self, prompts: list[list[int]], rng, *, max_new_tokens: int, temperature: float, top_k: int,
              top_p: float) -> Iterator[list[int]]:
        room = self.cfg.block_size - len(prompts[0])
        if max_new_tokens > room:
            log.warning("the CTranslate2 export has %d positions: at most %d new tokens after this prompt",
                        self.cfg.block_size, max(room, 0))
        if room <= 0:
            return
        options = dict(max_length=min(max_new_tokens, room), sampling_temperature=temperature if temperature > 0 else 1.0,
                       sampling_topk=1 if temperature <= 0 else top_k, sampling_topp=top_p)
        pieces = [[self.tok.id_to_piece(i) for i in ids] for ids in prompts]
        if len(prompts) == 1:  # token by token, for streaming
            for step in self.model.generate_tokens(pieces[0], **options):
                yield [step.token_id]
            return
        rows = [r.sequences_ids[0] for r in self.model.generate_batch(pieces, include_prompt_in_result=False, **options)]
        for i in range(max(map(len, rows), default=0)):
            yield [row[i] if i < len(row) else self.eos for row in rows]


def open_language_model(path: str | Path, device: str = "auto", compute_type: str = "default") -> LanguageModel:
    """A GPT run folder, or a CTranslate2 export of one."""
    return runs.open_for_inference(path, device, compute_type, LanguageModel, CT2LanguageModel)


def generate(
    lm: LanguageModel,
    prompts: Iterable[str],
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_samples: int = 1,
    buffer: int = 256,
    batch_size: int = 64,
    wait: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Continue each prompt; yields one record per prompt and sample, in order: {"index", "prompt", "sample", "text"}.
    Streams: prompts are read `buffer` at a time (with `wait`, also what has come when the input pauses:
    `line_chunks`); within a buffer, prompts of the same token length are sampled together, `batch_size` rows at
    a time, and each record is given as soon as every earlier one is done."""
    from nmtkit.data.sources import InOrder, line_chunks

    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {num_samples}")
    rng = lm.seeded(seed)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    done = 0
    for chunk in line_chunks(prompts, buffer, wait):
        ordered = InOrder(len(chunk) * num_samples)
        for texts in _sample_buffer(lm, chunk, done, num_samples, rng, options, batch_size):
            for k, text in ordered.add((i * num_samples + s, text) for (i, s), text in texts.items()):
                i, s = divmod(k, num_samples)
                yield {"index": done + i + 1, "prompt": chunk[i], "sample": s + 1, "text": text}
        done += len(chunk)


def _sample_buffer(lm: LanguageModel, prompts: list[str], done: int, num_samples: int, rng, options,
                   batch_size: int) -> Iterator[dict[tuple[int, int], str]]:
    """The text of every (prompt, sample) of one buffer, prompts of one token length sampled together; yields
    each batch's texts as it is done."""
    by_length: dict[int, list] = {}
    for i, p in enumerate(prompts):
        ids = _crop(lm, lm.encode_prompt(p), done + i)
        for s in range(num_samples):
            by_length.setdefault(len(ids), []).append((i, s, ids))
    for jobs in by_length.values():
        for start in range(0, len(jobs), batch_size):
            group = jobs[start : start + batch_size]
            steps = list(lm.steps([ids for _, _, ids in group], rng, **options))
            texts: dict[tuple[int, int], str] = {}
            for row, (i, s, ids) in enumerate(group):
                new = [step[row] for step in steps]
                texts[(i, s)] = lm.continuation(ids, new[: new.index(lm.eos)] if lm.eos in new else new)
            yield texts


def generate_stream(lm: LanguageModel, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[str]:
    """Continue one prompt, yielding the new text as soon as each token is produced."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    context = _crop(lm, lm.encode_prompt(prompt), 0)
    ids: list[int] = []
    shown = ""
    for (token,) in lm.steps([context], lm.seeded(seed), max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p):
        if token == lm.eos:
            return
        ids.append(token)
        text = lm.continuation(context, ids)
        if text.startswith(shown):
            yield text[len(shown):]
            shown = text


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Refuse sampling settings that mean nothing, naming the option and its valid range."""
    import math

    if max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be 0 or more, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be 0 (all tokens) or more, got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")


def _crop(lm: LanguageModel, ids: list[int], index: int) -> list[int]:
    """A prompt longer than the model's context keeps its last tokens, with a warning."""
    room = lm.cfg.block_size
    if len(ids) > room:
        log.warning("prompt %d: %d tokens; the model sees the last %d", index + 1, len(ids), room)
        return ids[-room:]
    return ids
