"""Translation: train a translator (RNN, RNN with attention, Transformer), translate with it (or with its
CTranslate2 export), score translations with sacreBLEU, and evaluate a translator on a test set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import TokenizerConfig, TrainConfig, from_dict, to_dict
from nmtkit.data import corpora, registry
from nmtkit.data.sources import ParallelSource, describe_files
from nmtkit.errors import ConfigError, DataError, OutOfMemory
from nmtkit.files import file_sha256
from nmtkit.tokenization import Tokenizer
from nmtkit.workflows import runs

log = logging.getLogger("nmtkit")


# ---------------------------------------------------------------------------------------------------------
# Loading and translating


class Translator:
    """A translator run folder loaded for use: model (in eval mode), tokenizer, settings."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from nmtkit.models import build_translator, translator_config
        from nmtkit.runtime import pick_device

        run = runs.open_run(run_dir, ("translator",))
        self.run_dir, self.config, self.arch = run.path, run.config, run.config["arch"]
        self.model_cfg = translator_config(self.arch, self.config["model"], f"{self.run_dir / checkpoint.CONFIG}")
        self.tok = runs.run_tokenizer(run, self.model_cfg.src_vocab)
        self.device = pick_device(device)
        self.model = runs.load_weights_for_inference(lambda: build_translator(self.arch, self.model_cfg), run,
                                                     self.device)
        self.max_src_len = max_source_len(self.model_cfg)

    def translate_ids(self, src: list[list[int]], **options):
        return decode_batch(self.model, self.device, src, self.max_src_len, **options)


class CT2Translator:
    """A folder written by `nmtkit export --format ctranslate2`, run by CTranslate2, with the `Translator`
    interface (source ids in, (ids, score) lists out), so `translate` treats both alike."""

    def __init__(self, folder: str | Path, device: str = "auto", compute_type: str = "default"):
        from nmtkit.export import INFO, ctranslate2_device, ctranslate2_module
        from nmtkit.models import translator_config

        ct2 = ctranslate2_module()
        run = runs.open_run(folder, ("translator",))
        self.run_dir, self.config, self.arch = run.path, run.config, run.config["arch"]
        model_cfg = translator_config(self.arch, self.config["model"], str(self.run_dir / INFO))
        self.tok = runs.run_tokenizer(run, model_cfg.src_vocab)
        self.max_src_len = max_source_len(model_cfg)
        self.model = ct2.Translator(str(self.run_dir), **ctranslate2_device(ct2, device), compute_type=compute_type)

    def translate_ids(self, src: list[list[int]], *, beam: int = 5, length_penalty: float = 1.0, n_best: int = 1,
                      max_len_ratio: float = 2.0, max_len_extra: int = 10, scores: bool = False):
        """Each sentence with the output limit nmtkit's decoder gives it (`decoding.max_lengths`): CTranslate2
        takes one limit per call, so sentences are translated in groups of one limit."""
        piece, to_id = self.tok.id_to_piece, self.tok.piece_to_id
        limits = [max(1, min(int(len(ids) * max_len_ratio + max_len_extra), self.max_src_len)) for ids in src]
        out: list = [None] * len(src)
        for limit in set(limits):
            idx = [i for i, n in enumerate(limits) if n == limit]
            results = self.model.translate_batch(
                [[piece(i) for i in src[i]] for i in idx], beam_size=beam, num_hypotheses=n_best,
                length_penalty=length_penalty, return_scores=True, max_decoding_length=limit)
            for i, r in zip(idx, results):
                out[i] = [([to_id(p) for p in h], float(sc) if (scores or beam > 1) else 0.0)
                          for h, sc in zip(r.hypotheses, r.scores)]
        return out


def open_translator(path: str | Path, device: str = "auto", compute_type: str = "default"):
    """A translator run folder, or a CTranslate2 export of one."""
    return runs.open_for_inference(path, device, compute_type, Translator, CT2Translator)


def max_source_len(model_cfg) -> int:
    """The longest source (pieces, </s> included) a translator takes: the Transformer's positions, else 1023."""
    return getattr(model_cfg, "max_positions", 1024) - 1


def decode_batch(model, device, src: list[list[int]], max_src_len: int, *, beam: int = 5, length_penalty: float = 1.0,
                 n_best: int = 1, max_len_ratio: float = 2.0, max_len_extra: int = 10, scores: bool = False):
    """Translate one batch of source id lists (each ending in </s>). Returns, per sentence, (ids, score) pairs;
    the score is 0.0 for plain greedy decoding unless `scores` (then beam search with beam 1, the same output)."""
    import torch

    from nmtkit import decoding
    from nmtkit.data.batching import pad
    from nmtkit.runtime import autocast
    from nmtkit.tokenization import BOS_ID, EOS_ID

    x = pad(src).to(device)
    mask = x != 0
    limit = decoding.max_lengths(mask, max_len_ratio, max_len_extra, cap=max_src_len)
    with torch.inference_mode(), autocast(device):
        if beam == 1 and n_best == 1 and not scores:
            return [[(ids, 0.0)] for ids in decoding.greedy(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit)]
        hyps = decoding.beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=beam,
                                    length_penalty=length_penalty, n_best=n_best)
    return [[(h.tokens, h.score) for h in sent] for sent in hyps]


def in_halves_on_oom(run, items: list, settings: str, describe) -> list:
    """`run(items)`, retried in two halves (down to single items) when the device runs out of memory; a single
    item that still does not fit raises `OutOfMemory` naming it (`describe(item)`) and the `settings` in use."""
    import torch

    try:
        return run(items)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) == 1:
            raise OutOfMemory(f"out of memory on {describe(items[0])} alone with {settings}: lower --beam or "
                              "--max-len-ratio, or run on the CPU (--device cpu)") from None
        half = len(items) // 2
        log.warning("out of memory on a batch of %d with %s; retrying it in halves (lower --batch-size to avoid "
                    "this)", len(items), settings)
        return (in_halves_on_oom(run, items[:half], settings, describe)
                + in_halves_on_oom(run, items[half:], settings, describe))


def translate(translator: Translator, lines: Iterable[str | None], **options) -> Iterator[str]:
    """Translate lines, exactly one output line per input line (`translate_blocks`, line by line)."""
    for block in translate_blocks(translator, lines, **options):
        yield from block


def translate_blocks(
    translator: Translator,
    lines: Iterable[str | None],
    *,
    beam: int = 5,
    batch_size: int = 64,
    length_penalty: float = 1.0,
    n_best: int = 1,
    with_scores: bool = False,
    max_len_ratio: float = 2.0,
    max_len_extra: int = 10,
    buffer_lines: int = 1024,
    wait: float | None = None,
) -> Iterator[list[str]]:
    """Translate lines, exactly one output line per input line, given as blocks of output lines in input order:
    after each batch, the lines whose every earlier line is done.

    The input is read in buffers of `buffer_lines` (with `wait`, also what has come when the input pauses:
    `line_chunks`); within a buffer, sentences are sorted by length into batches of `batch_size`. An empty (or
    skipped, `None`) line gives an empty line; an over-long line is truncated with a warning naming it (its
    file:line when `lines` can say, as `input_lines` does). With
    `n_best > 1` each output line is a JSON object holding the hypotheses and scores.
    """
    from nmtkit.data.sources import InOrder, line_chunks, line_names

    if beam < 1 or n_best < 1 or n_best > beam:
        raise DataError(f"--beam {beam} and --n-best {n_best}: need 1 <= n-best <= beam")
    options = dict(beam=beam, length_penalty=length_penalty, n_best=n_best, max_len_ratio=max_len_ratio,
                   max_len_extra=max_len_extra, scores=with_scores)
    where = line_names(lines)
    lineno = 0
    for chunk in line_chunks(lines, buffer_lines, wait):
        src = _source_ids(translator, [line or "" for line in chunk], lineno, where)
        order = sorted(src, key=lambda i: len(src[i]))
        ordered = InOrder(len(chunk), (i for i in range(len(chunk)) if i not in src))
        for start in range(0, max(len(order), 1), batch_size):
            idx = order[start : start + batch_size]
            done = zip(idx, in_halves_on_oom(
                lambda part: translator.translate_ids([src[i] for i in part], **options), idx,
                f"--batch-size {batch_size}, --beam {beam}",
                lambda i: f"line {lineno + i + 1} ({len(src[i])} pieces)")) if idx else ()
            if ready := ordered.add(done):
                yield [_output_line(translator, hyps or [], lineno + i + 1, n_best, with_scores) for i, hyps in ready]
        lineno += len(chunk)


def _source_ids(translator, texts: list[str], lineno: int, where) -> dict[int, list[int]]:
    """The source ids (ending in </s>) of each non-blank line of a buffer, by its index; an over-long line is
    truncated to the model's longest source with a warning naming it."""
    from nmtkit.tokenization import EOS_ID

    todo = [i for i, t in enumerate(texts) if t.strip()]
    src: dict[int, list[int]] = {}
    for i, ids in zip(todo, translator.tok.encode([texts[i] for i in todo])):
        if len(ids) + 1 > translator.max_src_len:
            log.warning("%s: %d pieces, truncated to %d", where(lineno + i + 1), len(ids), translator.max_src_len - 1)
            ids = ids[: translator.max_src_len - 1]
        src[i] = ids + [EOS_ID]
    return src


def _output_line(translator, hyps: list[tuple[list[int], float]], lineno: int, n_best: int, with_scores: bool) -> str:
    """The output line of one input line: the translation, with its score, or the n best as JSON."""
    import json

    decoded = translator.tok.decode([h[0] for h in hyps]) if hyps else []
    if n_best > 1:
        return json.dumps({"line": lineno, "hypotheses": [{"text": t, "score": round(s, 4)}
                                                          for t, (_, s) in zip(decoded, hyps)]}, ensure_ascii=False)
    if with_scores:
        return f"{decoded[0]}\t{hyps[0][1]:.4f}" if hyps else "\t"
    return decoded[0] if hyps else ""


# ---------------------------------------------------------------------------------------------------------
# score, evaluate


def score(hypotheses: list[str], references: list[list[str]], names: tuple[str, list[str]], **options) -> dict[str, Any]:
    """sacrebleu scores; hypothesis and reference files must have the same number of lines."""
    from nmtkit import evaluation

    _check_lines(hypotheses, references, names)
    return evaluation.score(hypotheses, references, **options)


def significance(systems: list[tuple[str, list[str]]], references: list[list[str]], ref_names: list[str],
                 **options) -> dict[str, Any]:
    """Whether systems differ significantly from the first (sacrebleu's paired tests); every system must have
    as many lines as the references."""
    from nmtkit import evaluation

    for name, hyps in systems:
        _check_lines(hyps, references, (name, ref_names))
    return evaluation.paired_test(systems, references, **options)


def _check_lines(hypotheses: list[str], references: list[list[str]], names: tuple[str, list[str]]) -> None:
    hyp_name, ref_names = names
    if not hypotheses:
        raise DataError(f"{hyp_name}: no lines to score")
    for ref, name in zip(references, ref_names):
        if len(ref) != len(hypotheses):
            raise DataError(f"{name} has {len(ref)} lines but {hyp_name} has {len(hypotheses)}; they must match line for line")


def evaluate_translator(
    run_dir: str | Path, src: str, ref: str, *, device: str = "auto", beam: int = 5, batch_size: int = 64,
    length_penalty: float = 1.0, tokenize: str | None = None, lowercase: bool = False, target_lang: str | None = None,
    record: bool = True, compute_type: str = "default", progress=None, output: str | Path | None = None,
) -> dict[str, Any]:
    """Translate a test set, score it, and record the result in the run folder's run.json (a run folder or a
    CTranslate2 export of one, as `open_translator` takes). `progress` may wrap the translated lines as they
    come (a progress display); `output` keeps the translations in a file."""
    import time

    translator = open_translator(run_dir, device, compute_type)
    src_path, ref_path = registry.resolve(src), registry.resolve(ref)
    sources = list(corpora.read_lines(src_path))
    references = list(corpora.read_lines(ref_path))
    t0 = time.perf_counter()
    hyps = translate(translator, sources, beam=beam, batch_size=batch_size, length_penalty=length_penalty)
    hyps = list(progress(hyps) if progress else hyps)
    seconds = time.perf_counter() - t0
    if output is not None:
        from nmtkit.files import write_lines

        write_lines(output, (h.replace("\n", " ") for h in hyps))
    lang = target_lang or translator.config.get("data", {}).get("tgt_lang") or ref_path.suffix.lstrip(".")
    scores = score(hyps, [references], (str(src_path), [str(ref_path)]), tokenize=tokenize, lowercase=lowercase,
                   target_lang=lang)
    result = {"src": str(src_path), "ref": str(ref_path), "sha256": {"src": file_sha256(src_path), "ref": file_sha256(ref_path)},
              "beam": beam, "length_penalty": length_penalty, "sentences": len(sources),
              "seconds": round(seconds, 2), "scores": scores}
    if record:
        runs.append_record(run_dir, "evaluations", result)
    return result


# ---------------------------------------------------------------------------------------------------------
# prepare


def prepare(source: ParallelSource, tokenizer: str | Path, *, on_bad_line: corpora.OnBadLine = "error",
            cache_dir: str | Path | None = None, workers: int | None = None, progress=None) -> dict[str, Any]:
    """Tokenize a parallel corpus once into the cache that train-translator reads (`nmtkit.data.prepared`);
    returns the prepared folder and its counts. Data already prepared is found, not prepared again."""
    from nmtkit.data import prepared
    from nmtkit.files import read_json

    tok = Tokenizer(runs.tokenizer_folder(tokenizer))
    folder = prepared.provide(source, tok, on_bad_line=on_bad_line, cache_dir=cache_dir, workers=workers,
                              progress=progress)
    meta = read_json(folder / prepared.META)
    return {"folder": str(folder), "pairs": meta["pairs"], "empty": meta["empty"], "tokens": meta["tokens"],
            "seconds": meta["seconds"], "lines_per_s": meta["lines_per_s"]}


# ---------------------------------------------------------------------------------------------------------
# train-translator


@runs.one_writer
def train_translator(
    *,
    run_dir: Path,
    arch: str | None = None,
    train_source: ParallelSource | None = None,
    valid_source: ParallelSource | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    on_bad_line: corpora.OnBadLine = "error",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Train a translator into `run_dir` (or continue one with `resume=True`). Returns the run's summary. The
    training pairs are prepared once (tokenized into memory-mapped id files, `nmtkit.data.prepared`) and reused
    from the cache by every later run and resume on the same files and tokenizer."""
    from nmtkit.models import build_translator
    from nmtkit.objectives import seq2seq_loss
    from nmtkit.runtime import init_distributed, pick_device, seed_everything
    from nmtkit.training import train

    dev = pick_device(device)
    dist = init_distributed(dev)
    arch, model_settings, train_cfg, train_source, valid_source = _settings(
        run_dir, resume, arch, model_settings, train_settings, train_source, valid_source)
    tok = runs.provide_tokenizer(run_dir, tokenizer, lambda: (x for pair in train_source.pairs(on_bad_line) for x in pair),
                                 tokenizer_cfg, train_source.files(), resume=resume, dist=dist)
    model_cfg = _model_config(arch, {**model_settings, "src_vocab": len(tok), "tgt_vocab": len(tok)})
    train_data, valid_data = _data(train_source, valid_source, tok, train_cfg, on_bad_line, cache_dir, workers, dist,
                                   progress)
    log.info("%d training pairs%s; %s on %s%s", len(train_data),
             f", {len(valid_data)} validation pairs" if valid_data else "", arch, dev,
             f" x {dist.world_size} processes" if dist.enabled else "")
    if dist.is_main:
        _write_config(run_dir, resume, arch, model_cfg, train_cfg, train_source, valid_source, command, dev, dist,
                      train_data.folder)

    seed_everything(train_cfg.seed)  # the initial weights depend on the seed alone
    model = build_translator(arch, model_cfg)
    validate = (lambda m: validation_scores(m, dev, valid_data, tok, train_cfg, train_source.tgt_lang)) if valid_data else None
    if validate is None:
        log.warning("no validation data (--valid-src/--valid-tgt): no BLEU, no early stopping; model.safetensors will "
                    "hold the weights of the last step")
    result = train(model, seq2seq_loss(train_cfg.label_smoothing, train_cfg.teacher_forcing),
                   _batches(train_data, train_cfg), cfg=train_cfg, run_dir=run_dir, device=dev, evaluate=validate,
                   dist=dist, resume=resume, progress=progress, flops_per_token=_flops_per_token(arch, model, train_data))
    summary = runs.training_summary(run_dir, arch, model, result)
    if dist.is_main:
        runs.append_record(run_dir, "training", summary)
    return summary


def _model_config(arch: str, settings: dict[str, Any]):
    from nmtkit.models import translator_config

    return translator_config(arch, settings, "model settings")


def _settings(run_dir: Path, resume: bool, arch, model_settings, train_settings, train_source, valid_source):
    """What a run trains with: for a new run the settings given (checked before any data is read); for a
    resumed one those it was started with (`runs.resumed`: settings given again must not change)."""
    if not resume:
        runs.refuse_existing_run(run_dir, "translator")
        if train_source is None:
            raise DataError("no training data: give --src/--tgt files, --corpus NAME, or --dataset NAME")
        arch = arch or "transformer"
        model_cfg = _model_config(arch, model_settings or {})  # fail fast on bad model settings
        train_cfg = from_dict(TrainConfig, train_settings or {}, "train settings")
        if getattr(model_cfg, "max_positions", train_cfg.max_len) < train_cfg.max_len:
            raise ConfigError(f"max_positions {model_cfg.max_positions} is shorter than --max-len {train_cfg.max_len}, "
                              "the longest pair trained on (in pieces): raise --max-positions or lower --max-len")
        return arch, model_settings or {}, train_cfg, train_source, valid_source
    saved = runs.saved_config(run_dir, "translator")
    runs.resumed_values(run_dir, saved, {"arch": arch} if arch else {}, ("arch",))
    model = runs.resumed_model(run_dir, saved["model"], model_settings,
                               lambda settings: _model_config(saved["arch"], settings), ("src_vocab", "tgt_vocab"))
    train_cfg = runs.resumed_config(run_dir, TrainConfig, saved["train"], train_settings, "train settings",
                                    runs.RESUME_OVERRIDES)
    data = saved["data"]
    return (saved["arch"], model, train_cfg, runs.resumed_source(run_dir, ParallelSource, data["train"], train_source, "data"),
            runs.resumed_source(run_dir, ParallelSource, data.get("valid"), valid_source, "validation data"))


def _data(train_source: ParallelSource, valid_source: ParallelSource | None, tok: Tokenizer, cfg: TrainConfig,
          on_bad_line, cache_dir, workers, dist, progress):
    """The training pairs (prepared and memory-mapped; under torchrun rank 0 prepares them while the others wait)
    and the validation data (or None), in memory as ids and text."""
    from nmtkit.data import mapped, prepared
    from nmtkit.data.datasets import encode_parallel

    if dist.is_main:
        folder = prepared.provide(train_source, tok, on_bad_line=on_bad_line, cache_dir=cache_dir, workers=workers,
                                  progress=progress)
    runs.barrier(dist)
    if not dist.is_main:
        folder = prepared.provide(train_source, tok, on_bad_line=on_bad_line, cache_dir=cache_dir, may_prepare=False)
    train_data = mapped.PreparedPairs(folder, cfg.max_len, "training data")
    valid_data = None
    if valid_source:
        valid_data = encode_parallel(valid_source.pairs(on_bad_line), tok, tok, cfg.max_len, "validation data",
                                     drop_long=False)
    return train_data, valid_data


def _write_config(run_dir: Path, resume: bool, arch: str, model_cfg, train_cfg, train_source: ParallelSource,
                  valid_source: ParallelSource | None, command, device, dist, prepared_folder: Path) -> None:
    """config.json and run.json of a new run (the training files as they were prepared: `prepared_folder`); a
    resumed run's config.json gets its new training limits."""
    from nmtkit.data.prepared import trained_on

    if resume:
        checkpoint.update_config(run_dir, train=to_dict(train_cfg))
        return
    checkpoint.write_config(run_dir, "translator", arch=arch, model=to_dict(model_cfg), train=to_dict(train_cfg),
                            data={"train": to_dict(train_source), "valid": to_dict(valid_source) if valid_source else None,
                                  "src_lang": train_source.src_lang, "tgt_lang": train_source.tgt_lang})
    runs.start_record(run_dir, command, train_cfg.seed, device, {
        "train": trained_on(prepared_folder),
        "valid": describe_files(valid_source.files()) if valid_source else []}, dist.world_size)


def _batches(data, cfg: TrainConfig):
    """The training batches of an epoch: token-based, from length buckets, shuffled by seed and epoch."""
    from nmtkit.data.batching import LazyBatches, token_batches

    lengths = data.lengths()

    def batches(epoch: int):
        return LazyBatches(token_batches(lengths, cfg.max_tokens, shuffle=True, seed=cfg.seed, epoch=epoch), data.collate)

    return batches


def _flops_per_token(arch: str, model, data) -> float | None:
    """A Transformer's training FLOPs per target token at the data's mean lengths (for MFU on GPU)."""
    if arch != "transformer":
        return None
    src, tgt = data.mean_lengths()
    return model.flops_per_token(src, tgt - 1)  # targets: <s> ... </s>


def validation_scores(model, device, data, tok: Tokenizer, cfg: TrainConfig, tgt_lang: str | None,
                      batch_size: int = 128) -> dict[str, float]:
    """Validation during training: loss and perplexity under teacher forcing, and greedy BLEU/chrF against the
    references."""
    import math

    import torch
    import torch.nn.functional as F

    from nmtkit import evaluation
    from nmtkit.data.batching import token_batches
    from nmtkit.tokenization import PAD_ID

    total, items = torch.zeros((), dtype=torch.float64, device=device), 0  # read once, at the end
    with torch.inference_mode():
        for ids in token_batches(data.lengths(), cfg.max_tokens, shuffle=False):
            batch = data.collate(ids).to(device)
            logits = model(batch.src, batch.src_mask, batch.tgt_in)
            total += F.cross_entropy(logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                     reduction="sum").double()
            items += batch.target_tokens
    total = total.item()
    order = sorted(range(len(data)), key=lambda i: len(data.src[i]))
    hyps: dict[int, str] = {}
    max_src = max_source_len(model.cfg)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        outs = decode_batch(model, device, [data.src[i] for i in idx], max_src, beam=1)
        hyps.update(zip(idx, tok.decode([o[0][0] for o in outs])))
    scores = evaluation.score([hyps[i] for i in range(len(data))], [data.tgt_text], ("bleu", "chrf"), target_lang=tgt_lang)
    loss = total / max(items, 1)
    return {"valid_loss": round(loss, 4), "valid_ppl": round(math.exp(min(loss, 50)), 2),
            "bleu": scores["bleu"]["score"], "chrf": scores["chrf"]["score"]}
