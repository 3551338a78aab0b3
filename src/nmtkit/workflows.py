"""One plain function per command: wire data, tokenizer, model and training together and return results.

Nothing here prints or exits (that is `nmtkit.cli`); progress goes through the `nmtkit` logger. Heavy
libraries (torch, datasets) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import TokenizerConfig
from nmtkit.data import corpora, registry
from nmtkit.errors import CheckpointError, ConfigError, DataError, OutOfMemory
from nmtkit.files import file_sha256, read_json, read_jsonl
from nmtkit.tokenization import INFO_FILE, Tokenizer, train_tokenizer as _train_tokenizer

log = logging.getLogger("nmtkit")


# ---------------------------------------------------------------------------------------------------------
# Inputs


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, `NAME/FILE` of a known corpus, or a bare known translation corpus name (its train files)."""
    paths: list[Path] = []
    for spec in inputs:
        if not Path(spec).exists() and spec in registry.manifest():
            info = registry.corpus_info(spec)
            folder = registry.corpus_dir(spec)
            train = info.get("splits", {}).get("train")
            if train and info.get("languages"):
                paths += [folder / f"{train}.{lang}" for lang in info["languages"]]
            else:
                paths += [folder / name for name in info.get("files", {})][:1]
        else:
            paths.append(registry.resolve(spec))
    return paths


def input_lines(files: Iterable[str | Path] | None, stdin=None, on_bad_line: corpora.OnBadLine = "error") -> Iterator[str | None]:
    """The decoded lines of the given files (known corpus names resolved), or of `stdin` when there are none.
    `None` stands for a line skipped as invalid UTF-8, so line-by-line commands keep the line count."""
    files = list(files or [])
    if not files and stdin is not None:
        yield from corpora.decode_lines(stdin, "<stdin>", on_bad_line)
    for spec in files:
        with corpora.open_binary(registry.resolve(spec)) as stream:
            yield from corpora.decode_lines(stream, str(spec), on_bad_line)


def describe_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Provenance for run records: each data file with its size and sha256."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths if p.is_file()]


# ---------------------------------------------------------------------------------------------------------
# train-tokenizer / tokenize


def train_tokenizer(
    inputs: list[str],
    out: str | Path,
    cfg: TokenizerConfig,
    *,
    column: str | None = None,
    header: bool = True,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    data_files: list[str] | None = None,
    on_bad_line: corpora.OnBadLine = "error",
) -> dict[str, Any]:
    """Train a SentencePiece tokenizer on files (text, table columns, JSON fields) and/or a HF dataset column."""
    if not inputs and not dataset:
        raise DataError("no training text: give input files, a known corpus name, or --dataset")
    paths = expand_inputs(inputs)
    streams: list[Iterator[str]] = [
        corpora.read_texts(p, column, header=header, on_bad_line=on_bad_line) for p in paths
    ]
    provenance: dict[str, Any] = {"files": describe_files(paths), "column": column}
    if dataset:
        if not column:
            raise DataError(f"dataset {dataset!r}: --column is needed to say which column holds the text")
        ds = corpora.load_hf_dataset(dataset, dataset_config, split, data_files)
        streams.append(corpora.hf_column(ds, column, dataset))
        provenance["dataset"] = {"name": dataset, "config": dataset_config, "split": split, "data_files": data_files}
    names = ", ".join([str(p) for p in paths] + ([dataset] if dataset else []))
    sentences = corpora.nonempty(itertools.chain.from_iterable(streams), names)
    tokenizer = _train_tokenizer(sentences, out, cfg, provenance)
    return {"folder": str(out), **tokenizer.info}


def tokenize(
    tokenizer: Tokenizer, lines: Iterable[str | None], *, ids: bool = False, decode: bool = False, batch_size: int = 4096
) -> Iterator[str]:
    """Map input lines to output lines, exactly one for one, in batches (so memory stays flat).

    `None` stands for a line the reader skipped (invalid UTF-8); it gives an empty output line. Encoding gives
    space-separated pieces (or ids); decoding reads pieces (or ids) and gives text. An empty line stays empty.
    """
    it = iter(lines)
    done = 0
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        texts = [line or "" for line in batch]
        if decode:
            yield from (_decode_line(tokenizer, line, ids, done + i + 1) for i, line in enumerate(texts))
        elif ids:
            yield from (" ".join(map(str, row)) for row in tokenizer.encode(texts))
        else:
            yield from (" ".join(row) for row in tokenizer.encode_pieces(texts))
        done += len(batch)


def _decode_line(tokenizer: Tokenizer, line: str, ids: bool, lineno: int) -> str:
    fields = line.split()
    if not ids:
        return tokenizer.decode_pieces([fields])[0]
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise DataError(f"input line {lineno}: {line[:40]!r} is not a line of integer ids (--decode --ids)") from None
    bad = [n for n in numbers if not 0 <= n < len(tokenizer)]
    if bad:
        raise DataError(f"input line {lineno}: id {bad[0]} is outside the vocabulary (0..{len(tokenizer) - 1})")
    return tokenizer.decode([numbers])[0]


# ---------------------------------------------------------------------------------------------------------
# download / info


def download(name: str, to: str | None = None, source: str | None = None, verify: bool = True) -> Path:
    return registry.download(name, to, source, verify)


def list_corpora() -> list[dict[str, Any]]:
    rows = []
    for name, info in registry.manifest().items():
        folder = registry.corpus_dir(name, must_exist=False)
        rows.append({"name": name, "task": info.get("task"), "local": str(folder) if folder.is_dir() else None,
                     "description": info.get("description")})
    return rows


def info(path: str | Path) -> dict[str, Any]:
    """What a run folder or tokenizer folder holds: kind, settings, parameters, data, scores, files."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run or tokenizer folder")
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if (path / INFO_FILE).is_file() and not (path / checkpoint.CONFIG).is_file():
        tok = read_json(path / INFO_FILE)
        return {"path": str(path), "kind": "tokenizer", **tok, "files": files}
    config = checkpoint.read_config(path)
    result: dict[str, Any] = {"path": str(path), "kind": config["kind"], "config": config, "files": files}
    if (path / checkpoint.WEIGHTS).is_file():
        result["parameters"] = checkpoint.count_parameters(checkpoint.load_weights(path / checkpoint.WEIGHTS))
    if (path / checkpoint.TOKENIZER_DIR / INFO_FILE).is_file():
        tok = read_json(path / checkpoint.TOKENIZER_DIR / INFO_FILE)
        result["tokenizer"] = {"vocab_size": tok.get("vocab_size"), **tok.get("config", {})}
    evals = [m for m in read_jsonl(path / checkpoint.METRICS) if m.get("kind") == "eval"]
    if evals:
        result["evaluations"] = len(evals)
        result["last_evaluation"] = evals[-1]
    if (path / checkpoint.RUN_RECORD).is_file():
        result["run"] = read_json(path / checkpoint.RUN_RECORD)
    return result


# ---------------------------------------------------------------------------------------------------------
# Translators: data


def parallel_pairs(spec: dict[str, Any], on_bad_line: corpora.OnBadLine = "error") -> Iterator[tuple[str, str]]:
    """Sentence pairs from files (`src`, `tgt`), a known corpus (`corpus`, `src_lang`, `tgt_lang`, `split`) or a
    Hugging Face dataset (`dataset`, `config`, `split`, with a `translation` column or `src_column`/`tgt_column`)."""
    if spec.get("src"):
        return corpora.read_parallel(registry.resolve(spec["src"]), registry.resolve(spec["tgt"]), on_bad_line)
    if spec.get("corpus"):
        src, tgt = registry.parallel_files(spec["corpus"], spec["src_lang"], spec["tgt_lang"], spec["split"])
        return corpora.read_parallel(src, tgt, on_bad_line)
    if spec.get("dataset"):
        ds = corpora.load_hf_dataset(spec["dataset"], spec.get("config"), spec["split"], spec.get("data_files"))
        name = spec["dataset"]
        if spec.get("src_column"):
            return zip(corpora.hf_column(ds, spec["src_column"], name), corpora.hf_column(ds, spec["tgt_column"], name))
        if "translation" not in ds.column_names:
            raise DataError(f"dataset {name!r}: no 'translation' column; name the columns with --src-column/--tgt-column")
        return ((row[spec["src_lang"]], row[spec["tgt_lang"]]) for row in ds["translation"])
    raise DataError("no training data: give --src/--tgt files, --corpus NAME, or --dataset NAME")


def data_files_of(spec: dict[str, Any]) -> list[Path]:
    if spec.get("src"):
        return [registry.resolve(spec["src"]), registry.resolve(spec["tgt"])]
    if spec.get("corpus"):
        return list(registry.parallel_files(spec["corpus"], spec["src_lang"], spec["tgt_lang"], spec["split"]))
    return []


def _versions() -> dict[str, str]:
    import sacrebleu
    import sentencepiece
    import torch

    from nmtkit import __version__

    return {"nmtkit": __version__, "torch": torch.__version__, "sentencepiece": sentencepiece.__version__,
            "sacrebleu": sacrebleu.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------------------
# Translators: loading and translating


def ready_for_inference(model, device):
    """The model on `device` in eval mode; on a CPU with its linear layers in the faster decoding layout."""
    from nmtkit.models.layers import for_cpu_inference

    model = model.to(device).eval()
    return for_cpu_inference(model) if device.type == "cpu" else model


class Translator:
    """A translator run folder loaded for use: model (in eval mode), tokenizers, settings."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from nmtkit.models import build_translator, translator_config
        from nmtkit.runtime import pick_device

        self.run_dir = Path(run_dir)
        self.config = checkpoint.read_config(self.run_dir, ("translator",))
        self.arch = self.config["arch"]
        self.model_cfg = translator_config(self.arch, self.config["model"], f"{self.run_dir / checkpoint.CONFIG}")
        self.src_tok = Tokenizer(self.run_dir / checkpoint.TOKENIZER_DIR)
        tgt_dir = self.run_dir / "tgt_tokenizer"
        self.tgt_tok = Tokenizer(tgt_dir) if tgt_dir.is_dir() else self.src_tok
        self.device = pick_device(device)
        model = build_translator(self.arch, self.model_cfg)
        checkpoint.load_into(model, self.run_dir / checkpoint.WEIGHTS)
        self.model = ready_for_inference(model, self.device)
        self.max_src_len = max_source_len(self.model_cfg)

    def translate_ids(self, src: list[list[int]], **options):
        return decode_batch(self.model, self.device, src, self.max_src_len, **options)


class CT2Translator:
    """A folder written by `nmtkit export --format ctranslate2`, run by CTranslate2, with the `Translator`
    interface (source ids in, (ids, score) lists out), so `translate` treats both alike."""

    def __init__(self, folder: str | Path, device: str = "auto", compute_type: str = "default"):
        from nmtkit.export import INFO, ctranslate2_module, read_export
        from nmtkit.models import translator_config

        ct2 = ctranslate2_module()
        self.run_dir = Path(folder)
        self.config = read_export(self.run_dir, ("translator",))
        self.arch = self.config["arch"]
        self.src_tok = self.tgt_tok = Tokenizer(self.run_dir / checkpoint.TOKENIZER_DIR)
        self.max_src_len = max_source_len(translator_config(self.arch, self.config["model"], str(self.run_dir / INFO)))
        self.model = ct2.Translator(str(self.run_dir), **_ct2_device(ct2, device), compute_type=compute_type)

    def translate_ids(self, src: list[list[int]], *, beam: int = 5, length_penalty: float = 1.0, n_best: int = 1,
                      max_len_ratio: float = 2.0, max_len_extra: int = 10, scores: bool = False):
        piece, to_id = self.src_tok.id_to_piece, self.tgt_tok.piece_to_id
        results = self.model.translate_batch(
            [[piece(i) for i in ids] for ids in src], beam_size=beam, num_hypotheses=n_best,
            length_penalty=length_penalty, return_scores=True,
            max_decoding_length=min(int(max(map(len, src)) * max_len_ratio + max_len_extra), self.max_src_len))
        return [[([to_id(p) for p in h], float(sc) if (scores or beam > 1) else 0.0) for h, sc in zip(r.hypotheses, r.scores)]
                for r in results]


def _ct2_device(ct2, device: str) -> dict[str, Any]:
    """CTranslate2's device and threads for nmtkit's --device (auto: the GPU when there is one)."""
    import torch

    if device.startswith("cuda") or (device == "auto" and ct2.get_cuda_device_count() > 0):
        return {"device": "cuda", "device_index": int(device.split(":")[1]) if ":" in device else 0}
    return {"device": "cpu", "intra_threads": torch.get_num_threads()}


def _run_or_export(path: str | Path, device: str, compute_type: str, run_class, export_class):
    """A run folder loaded as `run_class`, or a CTranslate2 export of one as `export_class` (`compute_type`:
    int8, float16... for those)."""
    from nmtkit.export import is_ctranslate2_folder

    if is_ctranslate2_folder(path):
        return export_class(path, device, compute_type)
    if compute_type != "default":
        raise ConfigError(f"--compute-type is for CTranslate2 exports; {path} is a run folder")
    return run_class(path, device)


def open_translator(path: str | Path, device: str = "auto", compute_type: str = "default"):
    """A translator run folder, or a CTranslate2 export of one."""
    return _run_or_export(path, device, compute_type, Translator, CT2Translator)


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
        return in_halves_on_oom(run, items[:half], settings, describe) + in_halves_on_oom(run, items[half:], settings,
                                                                                          describe)


def translate(
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
) -> Iterator[str]:
    """Translate lines, exactly one output line per input line, streaming in buffers of `buffer_lines`.

    Within a buffer, sentences are sorted by length into batches and the results written back in input
    order. An empty (or skipped, `None`) line gives an empty line; an over-long line is truncated with a
    warning naming it. With `n_best > 1` each output line is a JSON object holding the hypotheses and scores.
    """
    import json

    from nmtkit.tokenization import EOS_ID

    if beam < 1 or n_best < 1 or n_best > beam:
        raise DataError(f"--beam {beam} and --n-best {n_best}: need 1 <= n-best <= beam")
    it = iter(lines)
    lineno = 0
    while True:
        chunk = list(itertools.islice(it, buffer_lines))
        if not chunk:
            return
        texts = [line or "" for line in chunk]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        encoded = translator.src_tok.encode([texts[i] for i in todo])
        src: dict[int, list[int]] = {}
        for i, ids in zip(todo, encoded):
            if len(ids) + 1 > translator.max_src_len:
                log.warning("line %d: %d pieces, truncated to %d", lineno + i + 1, len(ids), translator.max_src_len - 1)
                ids = ids[: translator.max_src_len - 1]
            src[i] = ids + [EOS_ID]
        results: dict[int, list[tuple[list[int], float]]] = {}
        order = sorted(src, key=lambda i: len(src[i]))

        def run(idx: list[int]) -> list[list[tuple[list[int], float]]]:
            return translator.translate_ids([src[i] for i in idx], beam=beam, length_penalty=length_penalty,
                                            n_best=n_best, max_len_ratio=max_len_ratio, max_len_extra=max_len_extra,
                                            scores=with_scores)

        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            results.update(zip(idx, in_halves_on_oom(run, idx, f"--batch-size {batch_size}, --beam {beam}",
                                                     lambda i: f"line {lineno + i + 1} ({len(src[i])} pieces)")))
        for i in range(len(chunk)):
            hyps = results.get(i, [])
            decoded = translator.tgt_tok.decode([h[0] for h in hyps]) if hyps else []
            if n_best > 1:
                yield json.dumps({"line": lineno + i + 1, "hypotheses": [
                    {"text": t, "score": round(s, 4)} for t, (_, s) in zip(decoded, hyps)]}, ensure_ascii=False)
            elif with_scores:
                yield f"{decoded[0]}\t{hyps[0][1]:.4f}" if hyps else "\t"
            else:
                yield decoded[0] if hyps else ""
        lineno += len(chunk)


def score(hypotheses: list[str], references: list[list[str]], names: tuple[str, list[str]], **options) -> dict[str, Any]:
    """sacrebleu scores; hypothesis and reference files must have the same number of lines."""
    from nmtkit import evaluation

    hyp_name, ref_names = names
    for ref, name in zip(references, ref_names):
        if len(ref) != len(hypotheses):
            raise DataError(f"{name} has {len(ref)} lines but {hyp_name} has {len(hypotheses)}; they must match line for line")
    return evaluation.score(hypotheses, references, **options)


def evaluate_translator(
    run_dir: str | Path, src: str, ref: str, *, device: str = "auto", beam: int = 5, batch_size: int = 64,
    length_penalty: float = 1.0, tokenize: str | None = None, lowercase: bool = False, target_lang: str | None = None,
    record: bool = True, compute_type: str = "default",
) -> dict[str, Any]:
    """Translate a test set, score it, and record the result in the run folder's run.json (a run folder or a
    CTranslate2 export of one, as `open_translator` takes)."""
    import time

    translator = open_translator(run_dir, device, compute_type)
    src_path, ref_path = registry.resolve(src), registry.resolve(ref)
    sources = list(corpora.read_lines(src_path))
    references = list(corpora.read_lines(ref_path))
    t0 = time.perf_counter()
    hyps = list(translate(translator, sources, beam=beam, batch_size=batch_size, length_penalty=length_penalty))
    seconds = time.perf_counter() - t0
    lang = target_lang or translator.config.get("data", {}).get("tgt_lang") or ref_path.suffix.lstrip(".")
    scores = score(hyps, [references], (str(src_path), [str(ref_path)]), tokenize=tokenize, lowercase=lowercase,
                   target_lang=lang)
    result = {"src": str(src_path), "ref": str(ref_path), "sha256": {"src": file_sha256(src_path), "ref": file_sha256(ref_path)},
              "beam": beam, "length_penalty": length_penalty, "sentences": len(sources),
              "seconds": round(seconds, 2), "scores": scores}
    if record:
        from nmtkit.files import write_json

        run_file = Path(run_dir) / checkpoint.RUN_RECORD
        run = read_json(run_file) if run_file.is_file() else {}
        run.setdefault("evaluations", []).append(result)
        write_json(run_file, run)
    return result


def average_checkpoints(run_dir: str | Path, last: int, output: str | Path) -> dict[str, Any]:
    """Average the weights of the last N step checkpoints into a new run folder (config and tokenizer copied)."""
    import shutil

    import torch

    from nmtkit.training import STEPS_DIR

    run_dir, output = Path(run_dir), Path(output)
    checkpoint.read_config(run_dir)
    files = sorted((run_dir / STEPS_DIR).glob("step-*.safetensors"))[-last:]
    if len(files) < 2:
        raise CheckpointError(f"{run_dir}: needs at least 2 step checkpoints to average, found {len(files)} in {STEPS_DIR}/")
    total: dict[str, torch.Tensor] = {}
    for f in files:
        for k, v in checkpoint.load_weights(f).items():
            total[k] = total.get(k, 0) + v.double()
    averaged = {k: (v / len(files)).to(torch.float32) for k, v in total.items()}
    output.mkdir(parents=True, exist_ok=True)
    for name in (checkpoint.CONFIG,):
        shutil.copyfile(run_dir / name, output / name)
    for sub in (checkpoint.TOKENIZER_DIR, "tgt_tokenizer"):
        if (run_dir / sub).is_dir():
            shutil.copytree(run_dir / sub, output / sub, dirs_exist_ok=True)
    checkpoint.save_weights(output / checkpoint.WEIGHTS, averaged)
    from nmtkit.files import write_json

    write_json(output / checkpoint.RUN_RECORD, {"averaged_from": str(run_dir), "checkpoints": [f.name for f in files]})
    return {"output": str(output), "checkpoints": [f.name for f in files]}


# ---------------------------------------------------------------------------------------------------------
# Translators: training


def _refuse_existing_run(run_dir: Path, kind: str | None = None) -> None:
    """Refuse to start a new run over an existing one, but for a `kind` run that never saved a checkpoint
    (killed before its first), which starts again from the beginning."""
    config = run_dir / checkpoint.CONFIG
    if not config.exists():
        return
    if kind and not (run_dir / checkpoint.TRAIN_STATE).exists() and read_json(config).get("kind") == kind:
        return
    raise CheckpointError(f"{run_dir}: already holds a run; continue it with --resume, or choose another --output")


def _resuming(run_dir: Path, resume: bool) -> bool:
    """--resume of a run that has no checkpoint yet (killed before its first) starts it from the beginning."""
    if resume and not (run_dir / checkpoint.TRAIN_STATE).exists():
        log.warning("%s: no checkpoint saved yet; starting the run from the beginning", run_dir)
        return False
    return resume


def _one_writer(train_workflow):
    """Run a training workflow holding its run folder's lock (`checkpoint.lock_run`), so a second process
    pointed at the same folder is refused (under torchrun, rank 0 holds it for all), and with `resume` turned
    off when there is nothing to resume yet (`_resuming`)."""

    @functools.wraps(train_workflow)
    def locked(*, run_dir: str | Path, resume: bool = False, **kwargs: Any) -> Any:
        run_dir = Path(run_dir)
        lock = contextlib.nullcontext() if int(os.environ.get("RANK", "0")) else checkpoint.lock_run(run_dir)
        with lock:
            return train_workflow(run_dir=run_dir, resume=_resuming(run_dir, resume), **kwargs)

    return locked


@_one_writer
def train_translator(
    *,
    run_dir: str | Path,
    arch: str = "transformer",
    train_spec: dict[str, Any] | None = None,
    valid_spec: dict[str, Any] | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    on_bad_line: corpora.OnBadLine = "error",
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Train a translator into `run_dir` (or continue one with `resume=True`). Returns the run's summary."""
    from nmtkit.config import from_dict, to_dict
    from nmtkit.data.datasets import encode_parallel
    from nmtkit.files import write_json
    from nmtkit.models import build_translator, translator_config
    from nmtkit.objectives import seq2seq_loss
    from nmtkit.runtime import init_distributed, pick_device, seed_everything
    from nmtkit.training import TrainConfig, resumed_settings, train

    run_dir = Path(run_dir)
    dev = pick_device(device)
    dist = init_distributed(dev)
    if resume:
        saved = checkpoint.read_config(run_dir, ("translator",))
        arch, model_settings, data = saved["arch"], saved["model"], saved["data"]
        train_spec, valid_spec = data["train"], data.get("valid")
        train_settings = resumed_settings(saved["train"], train_settings)
    else:
        _refuse_existing_run(run_dir, "translator")
        if not train_spec:
            raise DataError("no training data: give --src/--tgt files, --corpus NAME, or --dataset NAME")
    train_cfg = from_dict(TrainConfig, train_settings or {}, "train settings")
    translator_config(arch, {k: v for k, v in (model_settings or {}).items() if k not in ("src_vocab", "tgt_vocab")},
                      "model settings")  # fail fast on bad model settings, before any data is read

    # tokenizer: given, trained on the training pairs, or (resume) the one in the run folder
    tok_dir = run_dir / checkpoint.TOKENIZER_DIR
    pairs = list(parallel_pairs(train_spec, on_bad_line))
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main:
            if tokenizer:
                Tokenizer(tokenizer_folder(Path(tokenizer))).copy_to(tok_dir)
            else:
                cfg = tokenizer_cfg or TokenizerConfig()
                log.info("training a joint %s tokenizer with %d pieces", cfg.model_type, cfg.vocab_size)
                _train_tokenizer(corpora.nonempty((x for pair in pairs for x in pair), "training data"), tok_dir, cfg,
                                 {"files": describe_files(data_files_of(train_spec))})
        _barrier(dist)
    tok = Tokenizer(tok_dir)
    model_settings = {**(model_settings or {}), "src_vocab": len(tok), "tgt_vocab": len(tok)}
    model_cfg = translator_config(arch, model_settings, "model settings")

    train_data = encode_parallel(pairs, tok, tok, train_cfg.max_len, "training data")
    valid_data = None
    if valid_spec:
        valid_data = encode_parallel(parallel_pairs(valid_spec, on_bad_line), tok, tok, train_cfg.max_len,
                                     "validation data", drop_long=False)
    log.info("%d training pairs%s; %s on %s%s", len(train_data),
             f", {len(valid_data)} validation pairs" if valid_data else "", arch, dev,
             f" x {dist.world_size} processes" if dist.enabled else "")

    if not resume and dist.is_main:
        checkpoint.write_config(run_dir, "translator", arch=arch, model=to_dict(model_cfg), train=to_dict(train_cfg),
                                data={"train": train_spec, "valid": valid_spec,
                                      "src_lang": train_spec.get("src_lang"), "tgt_lang": train_spec.get("tgt_lang")})
        _write_run_record(run_dir, command, train_cfg, dev, dist, {
            "train": describe_files(data_files_of(train_spec)),
            "valid": describe_files(data_files_of(valid_spec)) if valid_spec else []})
    elif dist.is_main:
        write_json(run_dir / checkpoint.CONFIG, {**checkpoint.read_config(run_dir), "train": to_dict(train_cfg)})

    from nmtkit.data.batching import LazyBatches, collate_pairs, token_batches

    lengths = train_data.lengths()

    def batches(epoch: int):
        index = token_batches(lengths, train_cfg.max_tokens, shuffle=True, seed=train_cfg.seed, epoch=epoch)
        return LazyBatches(index, lambda ids: collate_pairs([train_data.src[i] for i in ids], [train_data.tgt[i] for i in ids]))

    tgt_lang = train_spec.get("tgt_lang")
    evaluate = (lambda model: evaluate_on(model, dev, valid_data, tok, train_cfg, tgt_lang)) if valid_data else None
    seed_everything(train_cfg.seed)  # the initial weights depend on the seed alone
    model = build_translator(arch, model_cfg)
    objective = seq2seq_loss(train_cfg.label_smoothing, train_cfg.teacher_forcing)
    flops = None
    if arch == "transformer":  # for MFU on GPU
        mean = lambda seqs: sum(map(len, seqs)) / max(len(seqs), 1)
        flops = model.flops_per_token(mean(train_data.src), mean(train_data.tgt) - 1)  # targets: <s> ... </s>
    result = train(model, objective, batches, cfg=train_cfg, run_dir=run_dir, device=dev, evaluate=evaluate,
                   dist=dist, resume=resume, progress=progress, flops_per_token=flops)
    return _record_training(run_dir, arch, model, result, dist)


def evaluate_on(model, device, data, tok: Tokenizer, cfg, tgt_lang: str | None, batch_size: int = 128) -> dict[str, float]:
    """Validation: loss and perplexity under teacher forcing, and greedy BLEU/chrF against the references."""
    import math

    import torch
    import torch.nn.functional as F

    from nmtkit import evaluation
    from nmtkit.data.batching import collate_pairs, token_batches
    from nmtkit.tokenization import PAD_ID

    total, items = 0.0, 0
    with torch.inference_mode():
        for ids in token_batches(data.lengths(), cfg.max_tokens, shuffle=False):
            batch = collate_pairs([data.src[i] for i in ids], [data.tgt[i] for i in ids]).to(device)
            logits = model(batch.src, batch.src_mask, batch.tgt_in)
            total += F.cross_entropy(logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                     reduction="sum").item()
            items += batch.target_tokens
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


def _write_run_record(run_dir: Path, command, train_cfg, device, dist, data: dict[str, Any]) -> None:
    """run.json at the start of a run: command, versions, seed, device, data files with their hashes."""
    import datetime

    from nmtkit.files import write_json

    write_json(run_dir / checkpoint.RUN_RECORD, {
        "command": command or sys.argv, "versions": _versions(), "seed": train_cfg.seed, "device": str(device),
        "world_size": dist.world_size,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "data": data,
    })


def _record_training(run_dir: Path, arch: str, model, result, dist) -> dict[str, Any]:
    """The summary of a training run, appended to run.json by rank 0."""
    from nmtkit.files import write_json

    summary = {"run": str(run_dir), "arch": arch, "steps": result.steps, "best_step": result.best_step,
               "best": result.best, "stopped_early": result.stopped_early, "seconds": round(result.seconds, 1),
               "parameters": sum({id(p): p.numel() for p in model.parameters()}.values())}
    if dist.is_main:
        run = read_json(run_dir / checkpoint.RUN_RECORD)
        run.setdefault("training", []).append(summary)
        write_json(run_dir / checkpoint.RUN_RECORD, run)
    return summary


def _barrier(dist) -> None:
    if dist.enabled:
        import torch.distributed

        torch.distributed.barrier()


def tokenizer_folder(path: Path) -> Path:
    """A tokenizer folder, or the tokenizer inside a run folder."""
    return path / checkpoint.TOKENIZER_DIR if (path / checkpoint.TOKENIZER_DIR).is_dir() else path


# ---------------------------------------------------------------------------------------------------------
# Upstream: GPT pretraining and generation

GPT_TRAIN_DEFAULTS = {"schedule": "cosine", "lr": 1e-3, "warmup_steps": 100, "label_smoothing": 0.0,
                      "weight_decay": 0.1, "beta2": 0.99, "best_metric": "valid_loss", "max_steps": 5000,
                      "eval_every": 250}


def lm_documents(inputs: list[str], column: str | None = None, dataset: dict[str, Any] | None = None,
                 on_bad_line: corpora.OnBadLine = "error") -> Iterator[str]:
    """Documents for language modelling: a plain text file is one document (its lines joined by newlines);
    each row or record of a table, JSON file or Hugging Face dataset column is one."""
    for path in expand_inputs(inputs):
        if corpora.base_suffix(path) in corpora.TABLE_SUFFIXES + corpora.JSON_SUFFIXES:
            yield from corpora.read_texts(path, column, on_bad_line=on_bad_line)
        else:
            yield "\n".join(corpora.read_lines(path, on_bad_line))
    if dataset:
        ds = corpora.load_hf_dataset(dataset["name"], dataset.get("config"), dataset.get("split", "train"),
                                     dataset.get("data_files"))
        yield from corpora.hf_column(ds, column or "text", dataset["name"])


def prepare_lm_data(run_dir: Path, spec: dict[str, Any], tok: Tokenizer, valid_fraction: float) -> dict[str, Any]:
    """Tokenize the text once into run_dir/data/{train,valid}.bin; reuse them while text and tokenizer are
    unchanged (the key hashes the input files, the settings and the tokenizer model)."""
    import hashlib
    import json

    from nmtkit.data.datasets import encode_stream, split_documents
    from nmtkit.files import write_json
    from nmtkit.tokenization import MODEL_FILE

    folder = run_dir / "data"
    files = expand_inputs(spec.get("inputs", []))
    key_source = {"files": [file_sha256(p) for p in files], "spec": spec, "valid_fraction": valid_fraction,
                  "tokenizer": file_sha256(tok.folder / MODEL_FILE)}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()
    meta_file = folder / "meta.json"
    if meta_file.is_file() and read_json(meta_file).get("key") == key:
        log.info("reusing the tokenized text in %s", folder)
        return read_json(meta_file)
    documents = lambda: lm_documents(spec.get("inputs", []), spec.get("column"), spec.get("dataset"))  # noqa: E731
    total = sum(len(d) for d in corpora.nonempty(documents(), ", ".join(map(str, files)) or "the dataset"))
    valid_chars = total - int(total * (1 - valid_fraction))  # the split nanoGPT uses: text[int(n * 0.9):]
    newline = tok.piece_to_id("\n")
    newline_id = newline if newline != tok.sp.unk_id() else None
    if newline_id is None:
        log.warning("the tokenizer has no newline piece: line breaks become spaces")
    log.info("tokenizing %s characters", f"{total:,}")
    counts = encode_stream(split_documents(documents(), valid_chars, total), tok, folder, newline_id)
    meta = {"key": key, "characters": total, "valid_fraction": valid_fraction, **counts}
    write_json(meta_file, meta)
    return meta


@_one_writer
def pretrain(
    *,
    run_dir: str | Path,
    inputs: list[str] | None = None,
    column: str | None = None,
    dataset: dict[str, Any] | None = None,
    valid_fraction: float = 0.1,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    batch_size: int = 64,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Pretrain a GPT-style decoder on raw text (next-token prediction). Returns the run's summary."""
    import dataclasses

    from nmtkit.config import from_dict, to_dict
    from nmtkit.data.batching import random_windows
    from nmtkit.data.datasets import load_stream
    from nmtkit.files import write_json
    from nmtkit.models.gpt import GPT, GPTConfig
    from nmtkit.objectives import lm_loss
    from nmtkit.runtime import init_distributed, pick_device, seed_everything
    from nmtkit.training import TrainConfig, resumed_settings, train

    run_dir = Path(run_dir)
    dev = pick_device(device)
    dist = init_distributed(dev)
    if resume:
        saved = checkpoint.read_config(run_dir, ("gpt",))
        model_settings, data = saved["model"], saved["data"]
        inputs, column, dataset, valid_fraction, batch_size = (data["inputs"], data["column"], data["dataset"],
                                                               data["valid_fraction"], data["batch_size"])
        train_settings = resumed_settings(saved["train"], train_settings)
    else:
        _refuse_existing_run(run_dir, "gpt")
        if not inputs and not dataset:
            raise DataError("no training text: give files, a known corpus (tinyshakespeare), or --dataset")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    train_cfg = from_dict(TrainConfig, {**GPT_TRAIN_DEFAULTS, **(train_settings or {})}, "train settings")
    from_dict(GPTConfig, {k: v for k, v in (model_settings or {}).items() if k != "vocab_size"}, "model settings")
    spec = {"inputs": list(inputs or []), "column": column, "dataset": dataset}

    tok_dir = run_dir / checkpoint.TOKENIZER_DIR
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main:
            if tokenizer:
                Tokenizer(tokenizer_folder(Path(tokenizer))).copy_to(tok_dir)
            else:
                cfg = tokenizer_cfg or TokenizerConfig()
                cfg = dataclasses.replace(cfg, user_defined_symbols=tuple(dict.fromkeys(("\n", *cfg.user_defined_symbols))))
                log.info("training a %s tokenizer with %d pieces (newline kept as a piece)", cfg.model_type, cfg.vocab_size)
                lines = (line for doc in lm_documents(spec["inputs"], column, dataset) for line in doc.split("\n"))
                _train_tokenizer(corpora.nonempty(lines, "training text"), tok_dir, cfg, {"files": describe_files(expand_inputs(spec["inputs"]))})
        _barrier(dist)
    tok = Tokenizer(tok_dir)
    meta = prepare_lm_data(run_dir, spec, tok, valid_fraction) if dist.is_main else None
    _barrier(dist)
    meta = meta or read_json(run_dir / "data" / "meta.json")
    train_ids = load_stream(run_dir / "data", "train", meta["dtype"])
    valid_ids = load_stream(run_dir / "data", "valid", meta["dtype"])
    model_cfg = from_dict(GPTConfig, {**(model_settings or {}), "vocab_size": len(tok)}, "model settings")
    block = model_cfg.block_size
    train_cfg = from_dict(TrainConfig, {**to_dict(train_cfg), "max_tokens": batch_size * block}, "train settings")
    log.info("%s training tokens, %s validation tokens (%s characters); GPT on %s%s", f"{len(train_ids):,}",
             f"{len(valid_ids):,}", f"{meta['valid']['chars']:,}", dev, f" x {dist.world_size}" if dist.enabled else "")
    if not resume and dist.is_main:
        checkpoint.write_config(run_dir, "gpt", model=to_dict(model_cfg), train=to_dict(train_cfg),
                                data={**spec, "valid_fraction": valid_fraction, "batch_size": batch_size})
        _write_run_record(run_dir, command, train_cfg, dev, dist,
                          {"files": describe_files(expand_inputs(spec["inputs"])), "tokens": meta})
    elif dist.is_main:
        write_json(run_dir / checkpoint.CONFIG, {**checkpoint.read_config(run_dir), "train": to_dict(train_cfg)})

    def batches(epoch: int):
        try:
            return random_windows(train_ids, block, batch_size, seed=train_cfg.seed, epoch=epoch)
        except ValueError as exc:
            raise DataError(str(exc)) from None

    seed_everything(train_cfg.seed)
    model = GPT(model_cfg)
    evaluate = (lambda m: evaluate_lm(m, dev, valid_ids, block, meta["valid"]["chars"], batch_size)) if len(valid_ids) > block else None
    result = train(model, lm_loss(), batches, cfg=train_cfg, run_dir=run_dir, device=dev, evaluate=evaluate,
                   dist=dist, resume=resume, progress=progress, flops_per_token=model.flops_per_token())
    return _record_training(run_dir, "gpt", model, result, dist)


def evaluate_lm(model, device, ids, block: int, characters: int, batch_size: int) -> dict[str, float]:
    """Loss over the whole validation stream in consecutive windows: per token (nats), perplexity, and bits
    per character (so runs with different tokenizers compare)."""
    import math

    import torch
    import torch.nn.functional as F

    from nmtkit.data.batching import lm_windows

    starts = list(range(0, len(ids) - 1 - block + 1, block))
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = lm_windows(ids, starts[i : i + batch_size], block).to(device)
            logits = model(batch.ids)
            total += F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="sum").item()
            count += batch.target_tokens
    covered_chars = characters * count / max(len(ids) - 1, 1)  # the windows cover all but a tail of < block tokens
    loss = total / max(count, 1)
    return {"valid_loss": round(loss, 4), "valid_ppl": round(math.exp(min(loss, 50)), 2),
            "bits_per_char": round(total / max(covered_chars, 1) / math.log(2), 4)}


class LanguageModel:
    """A GPT run folder loaded for generation."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from nmtkit.models.gpt import GPT
        from nmtkit.runtime import pick_device

        self.run_dir = Path(run_dir)
        self._settings(checkpoint.read_config(self.run_dir, ("gpt", "finetune")))
        self.device = pick_device(device)
        model = GPT(self.cfg)
        checkpoint.load_into(model, self.run_dir / checkpoint.WEIGHTS)
        self.model = ready_for_inference(model, self.device)

    def _settings(self, config: dict[str, Any]) -> None:
        from nmtkit.config import from_dict
        from nmtkit.data.datasets import prompt_budget
        from nmtkit.models.gpt import GPTConfig
        from nmtkit.tokenization import EOS_ID

        if config["kind"] == "finetune" and config["task"] != "generate":
            raise CheckpointError(f"{self.run_dir}: a --task {config['task']} run cannot generate text")
        # instruction examples start a new document with </s> and keep at most half the context for the prompt
        self.prefix = [EOS_ID] if config["kind"] == "finetune" else []
        self.max_prompt = prompt_budget(config["data"]["max_len"]) if config["kind"] == "finetune" else None
        self.cfg = from_dict(GPTConfig, config["model"], str(self.run_dir / checkpoint.CONFIG))
        self.tok = Tokenizer(self.run_dir / checkpoint.TOKENIZER_DIR)

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids, line breaks as the newline piece; an empty prompt starts a new document (</s>)."""
        from nmtkit.tokenization import EOS_ID

        if not text:
            return [EOS_ID]
        ids = self.tok.encode([text])[0]
        return self.prefix + (ids[-self.max_prompt :] if self.max_prompt else ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([ids])[0]

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
        from nmtkit.tokenization import EOS_ID

        with autocast(self.device):
            for token in decoding.sample_stream(self.model, torch.tensor(prompts, device=self.device),
                                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, eos=EOS_ID, generator=rng, context=self.cfg.block_size):
                yield token.tolist()


class CT2LanguageModel(LanguageModel):
    """A GPT exported by `nmtkit export --format ctranslate2`, run by CTranslate2's Generator, with the
    `LanguageModel` interface. It cannot slide its window: generation stops at the model's last position."""

    def __init__(self, folder: str | Path, device: str = "auto", compute_type: str = "default"):
        from nmtkit.export import ctranslate2_module, read_export

        self.ct2 = ctranslate2_module()
        self.run_dir = Path(folder)
        self._settings(read_export(self.run_dir, ("gpt", "finetune")))
        self.model = self.ct2.Generator(str(self.run_dir), **_ct2_device(self.ct2, device), compute_type=compute_type)

    def seeded(self, seed: int):
        self.ct2.set_random_seed(seed)

    def steps(self, prompts: list[list[int]], rng, *, max_new_tokens: int, temperature: float, top_k: int,
              top_p: float) -> Iterator[list[int]]:
        from nmtkit.tokenization import EOS_ID

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
            yield [row[i] if i < len(row) else EOS_ID for row in rows]


def open_language_model(path: str | Path, device: str = "auto", compute_type: str = "default") -> LanguageModel:
    """A GPT run folder, or a CTranslate2 export of one."""
    return _run_or_export(path, device, compute_type, LanguageModel, CT2LanguageModel)


def generate(
    lm: LanguageModel,
    prompts: list[str],
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_samples: int = 1,
) -> Iterator[dict[str, Any]]:
    """Continue each prompt; yields one record per prompt and sample, in order: {"index", "prompt", "sample", "text"}.
    Prompts of the same token length are sampled together as one batch."""
    from nmtkit.tokenization import EOS_ID

    rng = lm.seeded(seed)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    jobs = [(i, s, _crop(lm, lm.encode_prompt(p), i)) for i, p in enumerate(prompts) for s in range(num_samples)]
    results: dict[tuple[int, int], str] = {}
    by_length: dict[int, list] = {}
    for job in jobs:
        by_length.setdefault(len(job[2]), []).append(job)
    for group in by_length.values():
        steps = list(lm.steps([ids for _, _, ids in group], rng, **options))
        for row, (i, s, _) in enumerate(group):
            new = [step[row] for step in steps]
            results[(i, s)] = lm.decode(new[: new.index(EOS_ID)] if EOS_ID in new else new)
    for i, p in enumerate(prompts):
        for s in range(num_samples):
            yield {"index": i + 1, "prompt": p, "sample": s + 1, "text": results[(i, s)]}


def generate_stream(lm: LanguageModel, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[str]:
    """Continue one prompt, yielding the new text as soon as each token is produced."""
    from nmtkit.tokenization import EOS_ID

    ids: list[int] = []
    shown = ""
    for (token,) in lm.steps([_crop(lm, lm.encode_prompt(prompt), 0)], lm.seeded(seed), max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p):
        if token == EOS_ID:
            return
        ids.append(token)
        text = lm.decode(ids)
        if text.startswith(shown):
            yield text[len(shown):]
            shown = text


def _crop(lm: LanguageModel, ids: list[int], index: int) -> list[int]:
    """A prompt longer than the model's context keeps its last tokens, with a warning."""
    room = lm.cfg.block_size
    if len(ids) > room:
        log.warning("prompt %d: %d tokens; the model sees the last %d", index + 1, len(ids), room)
        return ids[-room:]
    return ids


# ---------------------------------------------------------------------------------------------------------
# Vocabularies and word vectors


def corpus_texts(inputs: list[str], column: str | None = None, on_bad_line: corpora.OnBadLine = "error") -> Iterator[str]:
    """Every text of the inputs: lines of text files, or one column/field of tables and JSON files."""
    for path in expand_inputs(inputs):
        yield from corpora.read_texts(path, column, on_bad_line=on_bad_line)


def build_vocab(tokenizer: str | Path, inputs: list[str], *, column: str | None = None, output: str | Path | None = None,
                embedding_dim: int | None = None, top: int = 20, seed: int = 0,
                on_bad_line: corpora.OnBadLine = "error") -> dict[str, Any]:
    """How a corpus uses a tokenizer's vocabulary; with `output`, a folder with the vocab file (and, with
    `embedding_dim`, an initialised `nn.Embedding(len(vocab), D)` run folder ready for `neighbors`)."""
    from nmtkit import vocab

    if not inputs:
        raise DataError("no corpus: give text files or known corpus files (multi30k/train.en)")
    if embedding_dim is not None and (embedding_dim < 1 or output is None):
        raise DataError("--embedding-dim needs a positive size and --output, the run folder to write")
    tok = Tokenizer(tokenizer_folder(Path(tokenizer)))
    counts = vocab.count_pieces(tok, corpus_texts(inputs, column, on_bad_line))
    stats = vocab.vocab_stats(tok, counts, top, embedding_dim)
    if output is not None:
        import torch

        from nmtkit.files import write_json
        from nmtkit.tokenization import PAD_ID

        output = Path(output)
        _refuse_existing_run(output)
        tok.copy_to(output / checkpoint.TOKENIZER_DIR)
        vocab.write_vocab_file(output / checkpoint.VOCAB, zip(map(tok.id_to_piece, range(len(tok))), counts.counts))
        model = {"vocab_size": len(tok), "dim": embedding_dim, "init": "normal(0, 1), <pad> row zero"} if embedding_dim else None
        checkpoint.write_config(output, "embeddings" if embedding_dim else "vocab", model=model,
                                data={"inputs": inputs, "column": column, "unit": "piece"})
        if embedding_dim:
            torch.manual_seed(seed)
            table = torch.nn.Embedding(len(tok), embedding_dim, padding_idx=PAD_ID)
            checkpoint.save_weights(output / checkpoint.WEIGHTS, {"embedding.weight": table.weight})
        write_json(output / checkpoint.RUN_RECORD, {"command": sys.argv, "versions": _versions(),
                                                    "data": describe_files(expand_inputs(inputs)), "stats": stats})
        stats["output"] = str(output)
    return stats


@_one_writer
def train_embeddings(
    *,
    run_dir: str | Path,
    inputs: list[str] | None = None,
    column: str | None = None,
    unit: str = "word",
    tokenizer: str | None = None,
    lowercase: bool = True,
    min_count: int = 5,
    max_vocab: int = 0,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    resume: bool = False,
    progress=None,
    command: list[str] | None = None,
    on_bad_line: corpora.OnBadLine = "error",
) -> dict[str, Any]:
    """Skip-gram or CBOW word vectors on words or on a tokenizer's pieces; writes an embedding run folder with
    the vocab file, word2vec text vectors and the two projector TSV files. Returns the run's summary."""
    import torch

    from nmtkit import vocab
    from nmtkit.config import from_dict, to_dict
    from nmtkit.data.datasets import TokenStream
    from nmtkit.models.embeddings import Word2Vec, Word2VecConfig
    from nmtkit.runtime import Distributed
    from nmtkit.tokenization import UNK_ID
    from nmtkit.training import Word2VecTrainConfig, train_word2vec

    run_dir = Path(run_dir)
    if resume:
        saved = checkpoint.read_config(run_dir, ("embeddings",))
        data = saved["data"]
        inputs, column, unit, lowercase, min_count, max_vocab = (data["inputs"], data["column"], data["unit"],
                                                                data["lowercase"], data["min_count"], data["max_vocab"])
        model_settings, train_settings = saved["model"], saved["train"]
    else:
        _refuse_existing_run(run_dir, "embeddings")
        if not inputs:
            raise DataError("no training text: give text files or known corpus files (multi30k/train.en)")
    if unit not in ("word", "piece"):
        raise DataError(f"--unit {unit!r} is not valid; choose word or piece")
    train_cfg = from_dict(Word2VecTrainConfig, train_settings or {}, "train settings")
    train_cfg.validate("train settings")
    from_dict(Word2VecConfig, {k: v for k, v in (model_settings or {}).items() if k != "vocab_size"}, "model settings")
    texts = lambda: corpus_texts(inputs, column, on_bad_line)  # noqa: E731

    tok_dir = run_dir / checkpoint.TOKENIZER_DIR
    if unit == "piece":
        if not resume:
            if not tokenizer:
                raise DataError("--unit piece needs --tokenizer, the tokenizer whose pieces get vectors")
            Tokenizer(tokenizer_folder(Path(tokenizer))).copy_to(tok_dir)
        tok = Tokenizer(tok_dir)
        sentences: list[list[int]] = []
        for batch in _batched(texts(), 4096):
            sentences += [[i for i in ids if i != UNK_ID] for ids in tok.encode(batch)]  # <unk> gets no vector
        stream = TokenStream.from_sentences(sentences)
        counts = torch.bincount(stream.ids, minlength=len(tok))
        entries = list(zip(map(tok.id_to_piece, range(len(tok))), counts.tolist()))
    else:
        entries = vocab.word_vocab((vocab.split_words(t, lowercase) for t in texts()), min_count, max_vocab)
        index = {w: i for i, (w, _) in enumerate(entries)}
        stream = TokenStream.from_sentences([index[w] for w in vocab.split_words(t, lowercase) if w in index]
                                            for t in texts())
        counts = torch.tensor([n for _, n in entries])
    model_cfg = from_dict(Word2VecConfig, {**(model_settings or {}), "vocab_size": len(entries)}, "model settings")
    log.info("%s %s tokens, %s %ss in the vocabulary; %s, %d dimensions", f"{len(stream):,}", unit,
             f"{len(entries):,}", unit, model_cfg.arch, model_cfg.dim)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        vocab.write_vocab_file(run_dir / checkpoint.VOCAB, entries)
        checkpoint.write_config(run_dir, "embeddings", model=to_dict(model_cfg), train=to_dict(train_cfg), data={
            "inputs": list(inputs), "column": column, "unit": unit, "lowercase": lowercase, "min_count": min_count,
            "max_vocab": max_vocab})
        _write_run_record(run_dir, command, train_cfg, "cpu", Distributed(), {"files": describe_files(expand_inputs(inputs))})
    torch.manual_seed(train_cfg.seed)
    model = Word2Vec(model_cfg)
    result = train_word2vec(model, stream, counts, train_cfg, run_dir=run_dir, resume=resume, progress=progress)
    table = EmbeddingTable.load(run_dir)
    table.export(run_dir)
    summary = {"run": str(run_dir), "arch": model_cfg.arch, "unit": unit, "vocabulary": len(entries), **result}
    run = read_json(run_dir / checkpoint.RUN_RECORD)
    run.setdefault("training", []).append(summary)
    from nmtkit.files import write_json

    write_json(run_dir / checkpoint.RUN_RECORD, run)
    return summary


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


EMBEDDING_WEIGHTS = {"embeddings": "embedding.weight", "gpt": "embed.weight"}
TRANSLATOR_SIDES = {"source": ("src_embed.weight", checkpoint.TOKENIZER_DIR), "target": ("tgt_embed.weight", "tgt_tokenizer")}


class EmbeddingTable:
    """Any embedding table, ready for cosine geometry: the vectors of a train-embeddings or build-vocab run, the
    input embeddings of a translator or GPT run, or a word2vec text file (gensim's, GloVe's with a header)."""

    def __init__(self, entries: list[str], vectors, allowed, source: str, tokenizer: Tokenizer | None = None,
                 lowercase: bool = False, counts: list[int] | None = None):
        self.entries, self.vectors, self.allowed, self.source = entries, vectors, allowed, source
        self.tokenizer, self.lowercase, self.counts = tokenizer, lowercase, counts
        self.index = {e: i for i, e in enumerate(entries)} if tokenizer is None else {}

    @classmethod
    def load(cls, spec: str | Path, side: str = "source") -> "EmbeddingTable":
        import torch

        from nmtkit import vocab

        path = Path(spec)
        if path.is_file():
            return cls.read_word2vec(path)
        config = checkpoint.read_config(path)
        kind = config["kind"]
        if kind == "translator":
            if side not in TRANSLATOR_SIDES:
                raise DataError(f"--side {side!r} is not valid; choose source or target")
            key, tok_dir = TRANSLATOR_SIDES[side]
            tok_dir = tok_dir if (path / tok_dir).is_dir() else checkpoint.TOKENIZER_DIR
        elif kind in EMBEDDING_WEIGHTS:
            key, tok_dir = EMBEDDING_WEIGHTS[kind], checkpoint.TOKENIZER_DIR
        elif kind == "finetune":  # a task head on a GPT body, or (generate) the GPT itself
            key = "embed.weight" if config["task"] == "generate" else "body.embed.weight"
            tok_dir = checkpoint.TOKENIZER_DIR
        else:
            raise CheckpointError(f"{path}: a {kind!r} run has no embedding table (use a train-embeddings, "
                                  "build-vocab --embedding-dim, translator, GPT or finetune run)")
        weights = checkpoint.load_weights(path / checkpoint.WEIGHTS)
        if key not in weights:
            raise CheckpointError(f"{path / checkpoint.WEIGHTS}: no {key!r} tensor")
        listed = vocab.read_vocab_file(path / checkpoint.VOCAB) if (path / checkpoint.VOCAB).is_file() else None
        counts = [n for _, n in listed] if listed is not None else None
        data = config.get("data", {})
        if kind == "embeddings" and data.get("unit") == "word":
            entries = [w for w, _ in listed]
            allowed = torch.ones(len(entries), dtype=torch.bool)
            return cls(entries, weights[key].float(), allowed, str(path), lowercase=data.get("lowercase", False), counts=counts)
        tok = Tokenizer(path / tok_dir)
        vectors = weights[key][: len(tok)].float()  # tables are padded to a multiple of 64 rows
        allowed = torch.arange(len(tok)) >= vocab.SPECIAL_IDS
        if counts is not None and kind == "embeddings" and config.get("train"):
            allowed &= torch.tensor(counts) > 0  # pieces never seen in training kept their random vectors
        entries = [tok.id_to_piece(i) for i in range(len(tok))]
        return cls(entries, vectors, allowed, str(path), tokenizer=tok, counts=counts)

    @classmethod
    def read_word2vec(cls, path: Path) -> "EmbeddingTable":
        """word2vec text format: an optional `count dim` header, then `word v1 v2 ...` per line."""
        import torch

        entries, rows = [], []
        for lineno, line in enumerate(corpora.read_lines(path), 1):
            fields = line.rstrip().split(" ")
            if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                continue
            try:
                rows.append([float(x) for x in fields[1:]])
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected a word and numbers, got {line[:40]!r}") from None
            if len(rows[-1]) != len(rows[0]) or not rows[-1]:
                raise DataError(f"{path}:{lineno}: {len(rows[-1])} numbers, but the first vector has {len(rows[0])}")
            entries.append(fields[0])
        if not rows:
            raise DataError(f"{path}: no vectors")
        return cls(entries, torch.tensor(rows), torch.ones(len(rows), dtype=torch.bool), str(path))

    def lookup(self, word: str) -> tuple[Any, list[int]]:
        """The vector of a word and the rows it was made from; a word of several pieces is their average."""
        if self.tokenizer is None:
            key = word.lower() if self.lowercase else word
            if key not in self.index:
                raise DataError(f"{word!r} is not in the vocabulary of {self.source} ({len(self.entries):,} entries)")
            return self.vectors[self.index[key]], [self.index[key]]
        from nmtkit.tokenization import UNK_ID

        rows = self.tokenizer.encode([word])[0]
        if not rows:
            raise DataError(f"{word!r} gives no pieces")
        if UNK_ID in rows:
            raise DataError(f"{word!r} has characters the tokenizer of {self.source} does not know (it gives <unk>)")
        return self.vectors[rows].mean(0), rows

    def describe(self, word: str, rows: list[int]) -> dict[str, Any]:
        pieces = [self.entries[r] for r in rows]
        return {"word": word, "pieces": pieces, "averaged": len(rows) > 1}

    def similarity(self, a: str, b: str) -> dict[str, Any]:
        from nmtkit.models.embeddings import cosine

        (va, ra), (vb, rb) = self.lookup(a), self.lookup(b)
        return {"a": self.describe(a, ra), "b": self.describe(b, rb), "cosine": round(cosine(va, vb), 4)}

    def neighbors(self, word: str, k: int = 10) -> dict[str, Any]:
        from nmtkit.models.embeddings import nearest

        vector, rows = self.lookup(word)
        found = nearest(self.vectors, vector, k, self.allowed, rows)
        return {"query": self.describe(word, rows), "neighbors": [{"entry": self.entries[i], "cosine": s} for i, s in found]}

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> dict[str, Any]:
        """A is to B as C is to ?: the entries nearest to b - a + c, the three words themselves left out."""
        from nmtkit.models.embeddings import analogy_query, nearest

        (va, ra), (vb, rb), (vc, rc) = self.lookup(a), self.lookup(b), self.lookup(c)
        found = nearest(self.vectors, analogy_query(va, vb, vc), k, self.allowed, ra + rb + rc)
        return {"query": [self.describe(w, r) for w, r in ((a, ra), (b, rb), (c, rc))],
                "answers": [{"entry": self.entries[i], "cosine": s} for i, s in found]}

    def export(self, folder: Path) -> None:
        """`vectors.txt` in word2vec text format, and `projector/vectors.tsv` + `projector/metadata.tsv` for
        embedding projectors; the rows are the entries that `neighbors` searches."""
        from nmtkit.files import write_lines
        from nmtkit.vocab import escape

        rows = self.allowed.nonzero().flatten().tolist()
        names = [escape(e).replace(" ", "\\s") for e in self.entries]
        vectors = [" ".join(f"{x:.6g}" for x in self.vectors[r].tolist()) for r in rows]
        write_lines(folder / "vectors.txt",
                    [f"{len(rows)} {self.vectors.shape[1]}", *(f"{names[r]} {v}" for r, v in zip(rows, vectors))])
        write_lines(folder / "projector" / "vectors.tsv", (v.replace(" ", "\t") for v in vectors))
        counts = self.counts or [0] * len(self.entries)
        write_lines(folder / "projector" / "metadata.tsv", ["word\tcount", *(f"{names[r]}\t{counts[r]}" for r in rows)])


# ---------------------------------------------------------------------------------------------------------
# Downstream: fine-tuning a pretrained decoder (classify, qa, generate)

FINETUNE_TASKS = ("classify", "qa", "generate")
FINETUNE_TRAIN_DEFAULTS = {"schedule": "cosine", "lr": 3e-4, "warmup_steps": 50, "label_smoothing": 0.0,
                           "weight_decay": 0.01, "beta2": 0.99, "max_steps": 1000, "eval_every": 100}
TASK_METRIC = {"classify": "accuracy", "qa": "f1", "generate": "valid_loss"}


def task_examples(task: str, spec: dict[str, Any], on_bad_line: corpora.OnBadLine = "error") -> list:
    """A task's examples from a file (`file`) or a Hugging Face dataset (`dataset`, `config`, `split`,
    `data_files`): (text, label) pairs for classify (columns `text_column`, `label_column`), `QAExample`s from
    SQuAD JSON or squad-style datasets for qa, `Instruction`s from Alpaca-style JSON or datasets for generate."""
    if spec.get("file"):
        path = registry.resolve(spec["file"])
        if task == "classify":
            pairs = list(corpora.read_labeled(path, spec["text_column"], spec["label_column"], on_bad_line=on_bad_line))
            if not pairs:
                raise DataError(f"{path}: empty corpus (no labelled rows)")
            return pairs
        return corpora.read_squad(path) if task == "qa" else corpora.read_instructions(path)
    if not spec.get("dataset"):
        raise DataError("no data: give a file, a known corpus file (sst2/train.tsv), or --dataset")
    name = spec["dataset"]
    ds = corpora.load_hf_dataset(name, spec.get("config"), spec["split"], spec.get("data_files"))
    if task == "classify":
        texts = corpora.hf_column(ds, spec["text_column"], name)
        labels = corpora.hf_column(ds, spec["label_column"], name)
        return list(zip(texts, labels))
    if task == "qa":
        need = {"context", "question", "answers"} - set(ds.column_names)
        if need:
            raise DataError(f"dataset {name!r}: a squad-style dataset needs columns {', '.join(sorted(need))}")
        return [corpora.QAExample(str(row.get("id", i)), str(row.get("title", "")), row["context"], row["question"],
                                  tuple(zip(row["answers"]["text"], row["answers"]["answer_start"])))
                for i, row in enumerate(ds)]
    answer = "output" if "output" in ds.column_names else "response"
    return [corpora.Instruction(row["instruction"], row.get("input") or "", row[answer]) for row in ds]


def sorted_labels(labels: Iterable[str]) -> list[str]:
    """Label names in a stable order: numerically when they are all integers (0, 1, 2, 10), else alphabetically."""
    unique = set(labels)
    if all(x.lstrip("-").isdigit() for x in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def build_task_model(task: str, model_cfg, labels: list[str] | None = None):
    from nmtkit.models.gpt import GPT
    from nmtkit.models.heads import GPTClassifier, GPTSpanQA

    if task == "classify":
        return GPTClassifier(model_cfg, len(labels or []))
    return GPTSpanQA(model_cfg) if task == "qa" else GPT(model_cfg)


class TaskData:
    """A task's examples encoded for a model: what batches, the loss and the metrics are made from."""

    def __init__(self, task: str, examples: list, tok: Tokenizer, max_len: int, stride: int, labels: list[str] | None,
                 where: str):
        from nmtkit.data import datasets

        self.task, self.examples = task, examples
        if task == "classify":
            index = {name: i for i, name in enumerate(labels or [])}
            unknown = sorted({label for _, label in examples} - set(index))
            if unknown:
                raise DataError(f"{where}: label {unknown[0]!r} is not one of the run's labels ({', '.join(labels or [])})")
            self.seqs = datasets.encode_texts(tok, [text for text, _ in examples], max_len)
            self.labels = [index[label] for _, label in examples]
        elif task == "qa":
            self.features = datasets.qa_features(tok, examples, max_len, stride)
            self.seqs = [f.ids for f in self.features]
        else:
            encoded = [datasets.encode_instruction(tok, datasets.format_prompt(ex.instruction, ex.input), ex.output, max_len)
                       for ex in examples]
            self.seqs = [ids for ids, _ in encoded]
            self.prompt_lengths = [n for _, n in encoded]

    def collate(self, index: list[int]):
        from nmtkit.data import batching

        if self.task == "classify":
            return batching.collate_classify([self.seqs[i] for i in index], [self.labels[i] for i in index])
        if self.task == "qa":
            return batching.collate_spans([self.features[i] for i in index])
        return batching.collate_instructions([self.seqs[i] for i in index], [self.prompt_lengths[i] for i in index])

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0):
        from nmtkit.data.batching import LazyBatches, example_batches

        index = example_batches([len(s) for s in self.seqs], batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return LazyBatches(index, self.collate)


def task_objective(task: str):
    from nmtkit import objectives

    return {"classify": objectives.classify_loss, "qa": objectives.span_loss, "generate": objectives.lm_loss}[task]()


def evaluate_task(model, device, data: TaskData, labels: list[str] | None, batch_size: int = 64) -> dict[str, Any]:
    """The task's metric on `data` and its loss, from one pass of the model: accuracy, macro-F1 and the confusion
    matrix (classify); exact match and F1 (qa); validation loss over response tokens (generate)."""
    import torch
    import torch.nn.functional as F

    from nmtkit import evaluation

    was_training = model.training
    model.eval()
    if data.task == "classify":
        probs = predict_classes(model, device, data.seqs, batch_size)  # (N, C)
        gold = torch.tensor(data.labels)
        result = {"valid_loss": round(F.nll_loss(probs.clamp(min=1e-12).log(), gold).item(), 4)}
        result.update(evaluation.classification_scores(probs.argmax(1).tolist(), data.labels, labels or []))
    elif data.task == "qa":
        logits = span_logits(model, device, data.features, batch_size)
        total = 0.0
        for f, (start, end) in zip(data.features, logits):
            allowed = torch.zeros(len(f.ids), dtype=torch.bool)
            allowed[f.offset : f.offset + len(f.starts)] = True
            allowed[f.null] = True  # "not in this window"
            for scores, gold in ((start, f.start), (end, f.end)):
                total += (scores.masked_fill(~allowed, float("-inf")).logsumexp(0) - scores[gold]).item()
        result = {"valid_loss": round(total / max(2 * len(data.features), 1), 4)}
        answers = best_spans(data.features, data.examples, logits)
        result.update(evaluation.squad_scores([a["answer"] for a in answers],
                                              [[t for t, _ in ex.answers] or [""] for ex in data.examples]))
    else:
        objective = task_objective(data.task)
        total = items = 0.0
        with torch.inference_mode():
            for batch in data.batches(batch_size, shuffle=False):
                loss, n = objective(model, batch.to(device))
                total, items = total + loss.item(), items + n
        result = {"valid_loss": round(total / max(items, 1), 4)}
    model.train(was_training)
    return result


def predict_classes(model, device, seqs: list[list[int]], batch_size: int = 64):
    """Class probabilities (N, C) for encoded texts, in input order."""
    import torch

    from nmtkit.data.batching import collate_classify, example_batches

    probs = torch.zeros(len(seqs), model.head.out_features)
    with torch.inference_mode():
        for index in example_batches([len(s) for s in seqs], batch_size, shuffle=False):
            batch = collate_classify([seqs[i] for i in index], [0] * len(index)).to(device)
            probs[index] = model(batch.ids, batch.lengths).float().softmax(-1).cpu()
    return probs


def span_logits(model, device, features, batch_size: int = 64) -> list:
    """Each QA feature's start and end logits over its own positions, (len(ids),) each, on the CPU."""
    import torch

    from nmtkit.data.batching import collate_spans, example_batches

    logits: list = [None] * len(features)
    with torch.inference_mode():
        for index in example_batches([len(f.ids) for f in features], batch_size, shuffle=False):
            start, end = model(collate_spans([features[i] for i in index]).ids.to(device))
            for i, s, e in zip(index, start.float().cpu(), end.float().cpu()):
                logits[i] = (s[: len(features[i].ids)], e[: len(features[i].ids)])
    return logits


def best_spans(features, examples, logits, max_answer: int = 30) -> list[dict[str, Any]]:
    """The best answer span of each example over all its windows: the highest start + end logit with
    start <= end < start + max_answer, mapped back to character offsets in the original context."""
    import torch

    best: dict[int, tuple[float, int, int]] = {}
    for f, (s, e) in zip(features, logits):
        n = len(f.starts)
        s, e = s[f.offset : f.offset + n], e[f.offset : f.offset + n]
        scores = s.unsqueeze(1) + e.unsqueeze(0)  # (n, n): start i, end j
        valid = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer - 1)
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(scores.argmax())
        i, j, value = flat // n, flat % n, float(scores.flatten()[flat])
        if f.example not in best or value > best[f.example][0]:
            best[f.example] = (value, f.starts[i], f.ends[j])
    answers = []
    for k, ex in enumerate(examples):
        score, a, b = best.get(k, (float("-inf"), 0, 0))
        answers.append({"id": ex.id, "answer": ex.context[a:b], "start": a, "end": b, "score": round(score, 4)})
    return answers


def predict_answers(model, device, features, examples, batch_size: int = 64) -> list[dict[str, Any]]:
    return best_spans(features, examples, span_logits(model, device, features, batch_size))


@_one_writer
def finetune(
    *,
    run_dir: str | Path,
    task: str = "classify",
    pretrained: str | None = None,
    from_scratch: bool = False,
    tokenizer: str | None = None,
    train_spec: dict[str, Any] | None = None,
    valid_spec: dict[str, Any] | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    max_len: int = 256,
    stride: int = 64,
    batch_size: int = 32,
    freeze: bool = False,
    max_new_tokens: int = 128,
    device: str = "auto",
    resume: bool = False,
    on_bad_line: corpora.OnBadLine = "error",
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune a pretrained decoder (or the same architecture from scratch) for one task. Returns the summary."""
    from nmtkit.config import from_dict, to_dict
    from nmtkit.files import write_json
    from nmtkit.models.gpt import GPTConfig
    from nmtkit.runtime import Distributed, pick_device, seed_everything
    from nmtkit.training import TrainConfig, resumed_settings, train

    run_dir = Path(run_dir)
    dev = pick_device(device)
    labels = None
    if resume:
        saved = checkpoint.read_config(run_dir, ("finetune",))
        task, data = saved["task"], saved["data"]
        train_spec, valid_spec, max_len, stride, batch_size, freeze = (data["train"], data["valid"], data["max_len"],
                                                                      data["stride"], data["batch_size"], data["freeze"])
        labels, max_new_tokens = saved.get("labels"), data.get("max_new_tokens", max_new_tokens)
        model_cfg = from_dict(GPTConfig, saved["model"], str(run_dir / checkpoint.CONFIG))
        train_settings = resumed_settings(saved["train"], train_settings)
    else:
        _refuse_existing_run(run_dir, "finetune")
        if task not in FINETUNE_TASKS:
            raise DataError(f"--task {task!r} is not valid; choose one of {', '.join(FINETUNE_TASKS)}")
        if not train_spec:
            raise DataError("no training data: give --train FILE or --dataset NAME")
        if freeze and task == "generate":
            raise DataError("--freeze-body leaves nothing to train for --task generate (it has no head)")
        if pretrained:
            base = checkpoint.read_config(pretrained, ("gpt",))
            tweaks = {k: v for k, v in (model_settings or {}).items() if k in ("dropout", "attention_dropout")}
            others = sorted(set(model_settings or {}) - set(tweaks))
            if others:
                raise DataError(f"--{others[0].replace('_', '-')} cannot change a pretrained model's architecture "
                                "(only --dropout can)")
            model_cfg = from_dict(GPTConfig, {**base["model"], **tweaks}, "model settings")
            Tokenizer(Path(pretrained) / checkpoint.TOKENIZER_DIR).copy_to(run_dir / checkpoint.TOKENIZER_DIR)
        elif from_scratch and tokenizer:
            Tokenizer(tokenizer_folder(Path(tokenizer))).copy_to(run_dir / checkpoint.TOKENIZER_DIR)
            tok = Tokenizer(run_dir / checkpoint.TOKENIZER_DIR)
            model_cfg = from_dict(GPTConfig, {**(model_settings or {}), "vocab_size": len(tok)}, "model settings")
        else:
            raise DataError("give -m PRETRAINED (a pretrain run), or --from-scratch with -m PRETRAINED (its "
                            "architecture and tokenizer, new weights) or with --tokenizer")
    model_cfg.validate("model settings")
    metric = TASK_METRIC[task]
    train_cfg = from_dict(TrainConfig, {**FINETUNE_TRAIN_DEFAULTS, "best_metric": metric, **(train_settings or {})},
                          "train settings")
    tok = Tokenizer(run_dir / checkpoint.TOKENIZER_DIR)
    max_len = min(max_len, model_cfg.block_size)

    train_examples = task_examples(task, train_spec, on_bad_line)
    valid_examples = task_examples(task, valid_spec, on_bad_line) if valid_spec else None
    if valid_examples is None:  # hold out the last 5% of the training examples
        cut = max(1, len(train_examples) // 20)
        train_examples, valid_examples = train_examples[:-cut], train_examples[-cut:]
        log.info("no validation data given: the last %d training examples are held out", cut)
    if task == "classify" and labels is None:
        labels = sorted_labels(label for _, label in train_examples)
        if len(labels) < 2:
            raise DataError(f"the training data has one label only ({labels[0]!r}); a classifier needs two or more")
    train_data = TaskData(task, train_examples, tok, max_len, stride, labels, "training data")
    valid_data = TaskData(task, valid_examples, tok, max_len, stride, labels, "validation data")
    log.info("%s: %d training and %d validation examples%s; GPT on %s", task, len(train_examples),
             len(valid_examples), f" ({len(train_data.seqs)} windows)" if task == "qa" else "", dev)

    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_config(run_dir, "finetune", task=task, model=to_dict(model_cfg), labels=labels,
                                train=to_dict(train_cfg), init={"pretrained": pretrained, "from_scratch": from_scratch},
                                data={"train": train_spec, "valid": valid_spec, "max_len": max_len, "stride": stride,
                                      "batch_size": batch_size, "freeze": freeze, "max_new_tokens": max_new_tokens})
        files = [registry.resolve(s["file"]) for s in (train_spec, valid_spec) if s and s.get("file")]
        _write_run_record(run_dir, command, train_cfg, dev, Distributed(), {"files": describe_files(files)})
    else:
        write_json(run_dir / checkpoint.CONFIG, {**checkpoint.read_config(run_dir), "train": to_dict(train_cfg)})

    seed_everything(train_cfg.seed)
    model = build_task_model(task, model_cfg, labels)
    body = model if task == "generate" else model.body
    if pretrained and not from_scratch and not resume:
        checkpoint.load_into(body, Path(pretrained) / checkpoint.WEIGHTS)
    if freeze:
        body.requires_grad_(False)
    result = train(model, task_objective(task), lambda epoch: train_data.batches(batch_size, shuffle=True,
                   seed=train_cfg.seed, epoch=epoch), cfg=train_cfg, run_dir=run_dir, device=dev,
                   evaluate=lambda m: evaluate_task(m, dev, valid_data, labels), resume=resume, progress=progress)
    summary = _record_training(run_dir, task, model, result, Distributed())
    if task == "generate":  # chrF and BLEU of greedy responses, with the best weights
        summary["generation"] = evaluate_generation(run_dir, valid_examples, dev, max_new_tokens)
        run = read_json(run_dir / checkpoint.RUN_RECORD)
        run["training"][-1]["generation"] = summary["generation"]
        write_json(run_dir / checkpoint.RUN_RECORD, run)
    return summary


def evaluate_generation(run_dir: Path, examples, device, max_new_tokens: int = 128) -> dict[str, Any]:
    """Greedy responses to the examples' prompts, scored against their reference outputs with chrF and BLEU."""
    from nmtkit import evaluation
    from nmtkit.data.datasets import format_prompt

    lm = LanguageModel(run_dir, str(device))
    prompts = [format_prompt(ex.instruction, ex.input) for ex in examples]
    responses = [r["text"] for r in generate(lm, prompts, max_new_tokens=max_new_tokens, temperature=0.0)]
    scores = evaluation.score(responses, [[ex.output for ex in examples]], ("chrf", "bleu"))
    return {"chrf": scores["chrf"]["score"], "bleu": scores["bleu"]["score"], "examples": len(examples),
            "max_new_tokens": max_new_tokens, "signatures": {k: v["signature"] for k, v in scores.items()}}


class FineTuned:
    """A fine-tuned classify or qa run folder loaded for inference."""

    def __init__(self, run_dir: str | Path, device: str = "auto", tasks: tuple[str, ...] = ("classify", "qa")):
        from nmtkit.config import from_dict
        from nmtkit.models.gpt import GPTConfig
        from nmtkit.runtime import pick_device

        self.run_dir = Path(run_dir)
        self.config = checkpoint.read_config(self.run_dir, ("finetune",))
        self.task = self.config["task"]
        if self.task not in tasks:
            raise CheckpointError(f"{self.run_dir}: a --task {self.task} run; this command needs a {' or '.join(tasks)} run")
        self.labels = self.config.get("labels")
        self.max_len, self.stride = self.config["data"]["max_len"], self.config["data"]["stride"]
        self.tok = Tokenizer(self.run_dir / checkpoint.TOKENIZER_DIR)
        self.device = pick_device(device)
        model = build_task_model(self.task, from_dict(GPTConfig, self.config["model"], str(self.run_dir / checkpoint.CONFIG)),
                                 self.labels)
        checkpoint.load_into(model, self.run_dir / checkpoint.WEIGHTS)
        self.model = ready_for_inference(model, self.device)


def classify(ft: FineTuned, lines: Iterable[str | None], batch_size: int = 64, buffer_lines: int = 1024) -> Iterator[dict[str, Any] | None]:
    """One result per input line, streaming: {"label", "probs": {label: p}}; None for an empty line."""
    from nmtkit.data.datasets import encode_texts

    it = iter(lines)
    while chunk := list(itertools.islice(it, buffer_lines)):
        texts = [line or "" for line in chunk]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        probs = predict_classes(ft.model, ft.device, encode_texts(ft.tok, [texts[i] for i in todo], ft.max_len), batch_size)
        results: dict[int, dict[str, Any]] = {}
        for i, p in zip(todo, probs.tolist()):
            results[i] = {"label": ft.labels[max(range(len(p)), key=p.__getitem__)],
                          "probs": {name: round(x, 4) for name, x in zip(ft.labels, p)}}
        yield from (results.get(i) for i in range(len(chunk)))


def answer(ft: FineTuned, questions: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Answers to (id, context, question) triples: text, character offsets in the context, score."""
    from nmtkit.data.datasets import qa_features

    examples = [corpora.QAExample(qid, "", context, question, ()) for qid, context, question in questions]
    return predict_answers(ft.model, ft.device, qa_features(ft.tok, examples, ft.max_len, ft.stride), examples)


def evaluate_finetuned(run_dir: str | Path, spec: dict[str, Any], device: str = "auto", record: bool = True) -> dict[str, Any]:
    """Score a fine-tuned run on a data set with its task's metric; recorded in run.json."""
    from nmtkit.files import write_json

    config = checkpoint.read_config(run_dir, ("finetune",))
    task, data = config["task"], config["data"]
    spec = {**{k: v for k, v in (data.get("train") or {}).items() if k.endswith("_column")}, **spec}
    examples = task_examples(task, spec)
    if task == "generate":
        from nmtkit.runtime import pick_device

        result = evaluate_generation(Path(run_dir), examples, pick_device(device), data.get("max_new_tokens", 128))
    else:
        ft = FineTuned(run_dir, device)
        task_data = TaskData(task, examples, ft.tok, ft.max_len, ft.stride, ft.labels, spec.get("file") or spec.get("dataset"))
        result = evaluate_task(ft.model, ft.device, task_data, ft.labels)
    result = {"task": task, "data": spec, **result}
    if record:
        run_file = Path(run_dir) / checkpoint.RUN_RECORD
        run = read_json(run_file) if run_file.is_file() else {}
        run.setdefault("evaluations", []).append(result)
        write_json(run_file, run)
    return result


# ---------------------------------------------------------------------------------------------------------
# See it: attention maps, training curves, the three translators compared


def attention(run_dir: str | Path, src: str, tgt: str | None = None, *, kind: str | None = None,
              layer: int | None = None, head: int | None = None, device: str = "auto") -> dict[str, Any]:
    """One attention map of a translator (cross-attention over the source, or the encoder's self-attention) or
    of a GPT (self-attention over `src`): query tokens as rows, key tokens as columns, weights (T x S).
    Without `tgt`, a translator's own translation (beam 5) is used. `layer` (from 0; default the last) and
    `head` (default the mean over heads) pick the map; the answer also holds every layer's and head's maps."""
    import torch

    from nmtkit.models import attention_maps
    from nmtkit.tokenization import BOS_ID, EOS_ID

    if not src.strip():
        raise DataError("--src is empty: give the sentence to look at")
    kinds = checkpoint.read_config(run_dir)["kind"]
    if kinds == "gpt":
        lm = LanguageModel(run_dir, device)
        kind = kind or "self"
        ids = lm.encode_prompt(src)[: lm.cfg.block_size]
        maps = _attention_or_error(lambda: attention_maps(lm.model, torch.tensor([ids], device=lm.device), kind=kind))
        rows = cols = [lm.tok.id_to_piece(i) for i in ids]
        translation = None
    else:
        tr = Translator(run_dir, device)
        kind = kind or "cross"
        translation = tgt if tgt is not None else next(translate(tr, [src], beam=5))
        src_ids = tr.src_tok.encode([src])[0][: tr.max_src_len - 1] + [EOS_ID]
        tgt_ids = tr.tgt_tok.encode([translation])[0] + [EOS_ID]
        x = torch.tensor([src_ids], device=tr.device)
        maps = _attention_or_error(lambda: attention_maps(tr.model, x, x != 0, torch.tensor([[BOS_ID] + tgt_ids[:-1]],
                                                                                             device=tr.device), kind))
        cols = [tr.src_tok.id_to_piece(i) for i in src_ids]
        rows = cols if kind == "self" else [tr.tgt_tok.id_to_piece(i) for i in tgt_ids]
    maps = maps[0].float().cpu()  # (L, H, T, S)
    L, H = maps.shape[:2]
    layer = L - 1 if layer is None else layer
    if not 0 <= layer < L or (head is not None and not 0 <= head < H):
        raise DataError(f"the model has {L} layer(s) of {H} head(s): --layer goes from 0 to {L - 1}, --head from 0 to {H - 1}")
    chosen = maps[layer].mean(0) if head is None else maps[layer, head]
    return {"kind": kind, "layer": layer, "head": head, "layers": L, "heads": H, "rows": rows, "cols": cols,
            "weights": [[round(w, 4) for w in row] for row in chosen.tolist()], "translation": translation}


def _attention_or_error(compute):
    try:
        return compute()
    except ValueError as exc:
        raise DataError(str(exc)) from None


CURVE_METRICS = {"loss": ("train", "train_loss")}  # other names are read as they are, from the evaluations first


def training_curves(runs: list[str | Path], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each run's (steps, values) of one metric from its metrics.jsonl: loss (training loss), lr, tokens_per_s,
    or any evaluation metric (valid_loss, bleu, chrf, accuracy, f1, bits_per_char...)."""
    series = {}
    for run in runs:
        run = Path(run)
        checkpoint.read_config(run)
        records = read_jsonl(run / checkpoint.METRICS)
        kind, key = CURVE_METRICS.get(metric, ("eval" if any(metric in r for r in records if r.get("kind") == "eval")
                                                else "train", metric))
        points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r and "step" in r]
        if not points:
            found = sorted({k for r in records for k in r} - {"kind", "step", "epoch", "elapsed_s"})
            raise DataError(f"{run / checkpoint.METRICS}: no {metric!r} values; it has: {', '.join(found) or 'nothing yet'}")
        series[run.name if run.name not in series else str(run)] = ([p[0] for p in points], [float(p[1]) for p in points])
    return series


def parse_budget(budget: str) -> dict[str, Any]:
    """"300" -> 300 steps; "5m" (or "5min") -> 5 minutes of training each."""
    text = str(budget).strip().lower()
    for suffix in ("min", "m"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return {"max_minutes": float(text[: -len(suffix)]), "max_steps": 10**9}
    if text.isdigit() and int(text) > 0:
        return {"max_steps": int(text)}
    raise DataError(f"--budget {budget!r}: give steps (300) or minutes (5m)")


def compare(
    *,
    out_dir: str | Path,
    train_spec: dict[str, Any],
    valid_spec: dict[str, Any],
    test_spec: dict[str, Any] | None = None,
    archs: tuple[str, ...] = ("rnn", "attention", "transformer"),
    budget: str = "300",
    model_settings: dict[str, dict[str, Any]] | None = None,
    train_settings: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    tokenizer_cfg: TokenizerConfig | None = None,
    device: str = "auto",
    progress=None,
) -> dict[str, Any]:
    """Train (or take the existing runs in `out_dir` of) each architecture on the same data, tokenizer and
    budget; evaluate each on the test set (beam 5); return one row per architecture and draw their validation
    BLEU curves into out_dir/curves.png when matplotlib is there."""
    from statistics import mean

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tokenizer) if tokenizer else out_dir / checkpoint.TOKENIZER_DIR
    if not tokenizer and not (tok_dir / "tokenizer.model").is_file():
        cfg = tokenizer_cfg or TokenizerConfig()
        log.info("training one joint %s tokenizer with %d pieces for all three", cfg.model_type, cfg.vocab_size)
        _train_tokenizer(corpora.nonempty((x for pair in parallel_pairs(train_spec) for x in pair), "training data"),
                         tok_dir, cfg, {"files": describe_files(data_files_of(train_spec))})
    rows = []
    for arch in archs:
        run_dir = out_dir / arch
        if (run_dir / checkpoint.WEIGHTS).is_file():
            log.info("%s: taking the existing run in %s", arch, run_dir)
        else:
            log.info("%s: training", arch)
            train_translator(run_dir=run_dir, arch=arch, train_spec=train_spec, valid_spec=valid_spec,
                             model_settings=(model_settings or {}).get(arch), tokenizer=str(tok_dir), device=device,
                             train_settings={**(train_settings or {}), **parse_budget(budget)}, progress=progress)
        run = read_json(run_dir / checkpoint.RUN_RECORD)
        trained = run["training"][-1]
        records = read_jsonl(run_dir / checkpoint.METRICS)
        speeds = [r["tokens_per_s"] for r in records if r.get("kind") == "train" and r.get("step", 0) > 1]
        bleus = [r["bleu"] for r in records if r.get("kind") == "eval" and "bleu" in r]
        row = {"arch": arch, "parameters": trained["parameters"], "steps": trained["steps"],
               "train_seconds": trained["seconds"], "tokens_per_s": round(mean(speeds)) if speeds else None,
               "best_valid_bleu": max(bleus) if bleus else None}
        files = data_files_of(test_spec or valid_spec)
        if not files:
            raise DataError("compare evaluates on files or a known corpus's split (not a Hugging Face dataset)")
        result = evaluate_translator(run_dir, str(files[0]), str(files[1]), device=device, beam=5)
        row.update({"test_bleu" if test_spec else "valid_bleu_beam5": result["scores"]["bleu"]["score"],
                    "test_chrf" if test_spec else "valid_chrf_beam5": result["scores"]["chrf"]["score"],
                    "sentences_per_s": round(result["sentences"] / max(result["seconds"], 1e-9), 1)})
        rows.append(row)
    curves_file = None
    try:
        from nmtkit import plots

        plots.curves(training_curves([out_dir / a for a in archs], "bleu"), "validation BLEU (greedy)", out_dir / "curves.png")
        curves_file = str(out_dir / "curves.png")
    except ConfigError as exc:  # no matplotlib: the table still stands
        log.warning("no curves.png: %s", exc)
    return {"rows": rows, "curves": curves_file, "out": str(out_dir)}
