"""Fine-tuning (downstream): a pretrained decoder fine-tuned to classify texts, answer questions (extractive QA)
or follow instructions; then classify, answer and evaluate with the fine-tuned run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from nmtkit import checkpoint
from nmtkit.config import TrainConfig, from_dict, to_dict
from nmtkit.data import corpora
from nmtkit.data.sources import TaskSource, describe_files
from nmtkit.errors import CheckpointError, ConfigError, DataError
from nmtkit.tokenization import Tokenizer, load_tokenizer
from nmtkit.workflows import runs

log = logging.getLogger("nmtkit")

TASKS = ("classify", "qa", "generate")
TASK_METRIC = {"classify": "accuracy", "qa": "f1", "generate": "valid_loss"}  # what picks the best checkpoint
# fine-tuning's own defaults, on top of TrainConfig's
TRAIN_DEFAULTS = {"schedule": "cosine", "lr": 3e-4, "warmup_steps": 50, "label_smoothing": 0.0,
                  "weight_decay": 0.01, "beta2": 0.99, "max_steps": 1000, "eval_every": 100}
# the data settings a run keeps: longest input, QA window overlap, examples per micro-batch, a frozen body, the
# longest response when scoring generation, LoRA adapters (rank 0: none; alpha 0: twice the rank, recorded as
# such; which layers)
DATA_DEFAULTS = {"max_len": 256, "stride": 64, "batch_size": 32, "freeze": False, "max_new_tokens": 128,
                 "lora_rank": 0, "lora_alpha": 0.0, "lora_targets": "attn"}


# ---------------------------------------------------------------------------------------------------------
# A task's data, model, loss and scores


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

    @classmethod
    def encoded(cls, seqs: list[list[int]], labels: list[int]) -> "TaskData":
        """Classification data already encoded (the held-out rows of prepared training data)."""
        data = cls.__new__(cls)
        data.task, data.examples, data.seqs, data.labels = "classify", None, seqs, labels
        return data

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


def task_scores(model, device, data: TaskData, labels: list[str] | None, batch_size: int = 64) -> dict[str, Any]:
    """The task's metric on `data` and its loss, from one pass of the model (validation during training, and
    `evaluate`): accuracy, macro-F1 and the confusion matrix (classify); exact match and F1 (qa); validation
    loss over response tokens (generate)."""
    was_training = model.training
    model.eval()
    if data.task == "classify":
        result = _classify_scores(model, device, data, labels or [], batch_size)
    elif data.task == "qa":
        result = _qa_scores(model, device, data, batch_size)
    else:
        import torch

        objective = task_objective(data.task)
        total = items = 0.0
        with torch.inference_mode():
            for batch in data.batches(batch_size, shuffle=False):
                loss, n = objective(model, batch.to(device))
                total, items = total + loss.item(), items + n
        result = {"valid_loss": round(total / max(items, 1), 4)}
    model.train(was_training)
    return result


def _classify_scores(model, device, data: TaskData, labels: list[str], batch_size: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from nmtkit import evaluation

    probs = predict_classes(model, device, data.seqs, batch_size)  # (N, C)
    gold = torch.tensor(data.labels)
    result = {"valid_loss": round(F.nll_loss(probs.clamp(min=1e-12).log(), gold).item(), 4)}
    return {**result, **evaluation.classification_scores(probs.argmax(1).tolist(), data.labels, labels)}


def _qa_scores(model, device, data: TaskData, batch_size: int) -> dict[str, Any]:
    import torch

    from nmtkit import evaluation
    from nmtkit.decoding import best_spans

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
    return {**result, **evaluation.squad_scores([a["answer"] for a in answers],
                                                [[t for t, _ in ex.answers] or [""] for ex in data.examples])}


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


def generation_scores(run_dir: Path, examples, device, max_new_tokens: int = 128) -> dict[str, Any]:
    """Greedy responses to the examples' prompts, scored against their reference outputs with chrF and BLEU."""
    from nmtkit import evaluation
    from nmtkit.data.datasets import format_prompt
    from nmtkit.workflows.lm import LanguageModel, generate

    lm = LanguageModel(run_dir, str(device))
    prompts = [format_prompt(ex.instruction, ex.input) for ex in examples]
    responses = [r["text"] for r in generate(lm, prompts, max_new_tokens=max_new_tokens, temperature=0.0)]
    scores = evaluation.score(responses, [[ex.output for ex in examples]], ("chrf", "bleu"))
    return {"chrf": scores["chrf"]["score"], "bleu": scores["bleu"]["score"], "examples": len(examples),
            "max_new_tokens": max_new_tokens, "signatures": {k: v["signature"] for k, v in scores.items()}}


# ---------------------------------------------------------------------------------------------------------
# finetune


@runs.one_writer
def finetune(
    *,
    run_dir: Path,
    task: str | None = None,
    pretrained: str | None = None,
    from_scratch: bool = False,
    tokenizer: str | None = None,
    train_source: TaskSource | None = None,
    valid_source: TaskSource | None = None,
    model_settings: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
    max_len: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    freeze: bool | None = None,
    max_new_tokens: int | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: str | None = None,
    device: str = "auto",
    resume: bool = False,
    on_bad_line: corpora.OnBadLine = "error",
    progress=None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune a pretrained decoder (or the same architecture from scratch) for one task, all of it or (with
    `lora_rank`) LoRA adapters and the head. The data settings (`max_len` ... `lora_targets`) left as None take
    `DATA_DEFAULTS`. Returns the run's summary."""
    from nmtkit.runtime import pick_device, seed_everything
    from nmtkit.training import train

    dev = pick_device(device)
    s = _settings(run_dir, resume, task, pretrained, from_scratch, tokenizer, train_source, valid_source,
                  model_settings, train_settings, dict(max_len=max_len, stride=stride, batch_size=batch_size,
                                                       freeze=freeze, max_new_tokens=max_new_tokens,
                                                       lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets))
    task, data, model_cfg, train_cfg = s["task"], s["data"], s["model_cfg"], s["train_cfg"]
    tok = load_tokenizer(run_dir / checkpoint.TOKENIZER_DIR)
    data = {**data, "max_len": min(data["max_len"], model_cfg.block_size)}
    if task == "classify":
        train_data, valid_data, labels = _classify_data(s, tok, data["max_len"], on_bad_line, progress)
        examples = len(train_data), len(valid_data.seqs)
    else:
        train_examples, valid_examples = _examples(task, s["train"], s["valid"], on_bad_line)
        labels = None
        train_data = TaskData(task, train_examples, tok, data["max_len"], data["stride"], labels, "training data")
        valid_data = TaskData(task, valid_examples, tok, data["max_len"], data["stride"], labels, "validation data")
        examples = len(train_examples), len(valid_examples)
    log.info("%s: %d training and %d validation examples%s; GPT on %s", task, *examples,
             f" ({len(train_data.seqs)} windows)" if task == "qa" else "", dev)
    _write_config(run_dir, resume, task, model_cfg, labels, train_cfg, s, data, command, dev,
                  getattr(train_data, "folder", None))

    seed_everything(train_cfg.seed)
    model = _task_model(task, model_cfg, labels, s["pretrained"], s["from_scratch"] or resume, data)
    result = train(model, task_objective(task), lambda epoch: train_data.batches(data["batch_size"], shuffle=True,
                   seed=train_cfg.seed, epoch=epoch), cfg=train_cfg, run_dir=run_dir, device=dev,
                   evaluate=lambda m: task_scores(m, dev, valid_data, labels), resume=resume, progress=progress)
    summary = runs.training_summary(run_dir, task, model, result)
    if task == "generate":  # chrF and BLEU of greedy responses, with the best weights
        summary["generation"] = generation_scores(run_dir, valid_examples, dev, data["max_new_tokens"])
    runs.append_record(run_dir, "training", summary)
    return summary


def _settings(run_dir: Path, resume: bool, task, pretrained, from_scratch, tokenizer, train_source, valid_source,
              model_settings, train_settings, data: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuning run trains with: for a new run the settings given (its tokenizer copied into it),
    for a resumed one those it was started with (settings given again must not change)."""
    data = {k: v for k, v in data.items() if v is not None}
    if resume:
        return _resumed_settings(run_dir, task, train_source, valid_source, model_settings, train_settings, data)
    runs.refuse_existing_run(run_dir, "finetune")
    task = task or "classify"
    if task not in TASKS:
        raise DataError(f"--task {task!r} is not valid; choose one of {', '.join(TASKS)}")
    if train_source is None:
        raise DataError("no training data: give --train FILE or --dataset NAME")
    data = {**DATA_DEFAULTS, **data}
    for name, low in (("max_len", 1), ("stride", 0), ("batch_size", 1), ("max_new_tokens", 0), ("lora_rank", 0),
                      ("lora_alpha", 0)):
        if data[name] < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {data[name]}")
    if data["freeze"] and task == "generate":
        raise DataError("--freeze-body leaves nothing to train for --task generate (it has no head)")
    if data["lora_rank"]:
        from nmtkit.models.lora import parse_targets

        if not pretrained or from_scratch:
            raise DataError("--lora-rank adapts a pretrained model: give -m PRETRAINED, without --from-scratch")
        if data["freeze"]:
            raise DataError("--lora-rank freezes the body already; leave out --freeze-body")
        try:
            parse_targets(data["lora_targets"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        data["lora_alpha"] = float(data["lora_alpha"] or 2 * data["lora_rank"])  # the run records the alpha it uses
    if pretrained and Path(pretrained).exists():  # kept where it is: a LoRA run reads its base model from there
        pretrained = str(Path(pretrained).resolve())
    model_cfg = _new_model_config(run_dir, pretrained, from_scratch, tokenizer, model_settings or {})
    train_cfg = from_dict(TrainConfig, {**TRAIN_DEFAULTS, "best_metric": TASK_METRIC[task], **(train_settings or {})},
                          "train settings")
    return {"task": task, "data": data, "model_cfg": model_cfg, "train_cfg": train_cfg, "labels": None,
            "train": train_source, "valid": valid_source, "pretrained": pretrained, "from_scratch": from_scratch}


def _new_model_config(run_dir: Path, pretrained, from_scratch: bool, tokenizer, model_settings: dict[str, Any]):
    """The GPT config of a new run (the pretrained one, or one from the settings), its tokenizer provided."""
    from nmtkit.models.gpt import GPTConfig

    if pretrained:
        base = runs.open_run(pretrained, ("gpt",)).config
        model_cfg = from_dict(GPTConfig, runs.pretrained_settings(base["model"], model_settings), "model settings")
        runs.provide_tokenizer(run_dir, pretrained)
    elif from_scratch and tokenizer:
        tok = runs.provide_tokenizer(run_dir, tokenizer)
        model_cfg = from_dict(GPTConfig, {**model_settings, "vocab_size": len(tok)}, "model settings")
    else:
        raise DataError("give -m PRETRAINED (a pretrain run), or --from-scratch with -m PRETRAINED (its "
                        "architecture and tokenizer, new weights) or with --tokenizer")
    model_cfg.validate("model settings")
    return model_cfg


def _resumed_settings(run_dir: Path, task, train_source, valid_source, model_settings, train_settings,
                      data: dict[str, Any]) -> dict[str, Any]:
    from nmtkit.models.gpt import GPTConfig

    saved = runs.saved_config(run_dir, "finetune")
    runs.resumed_values(run_dir, saved, {"task": task} if task else {}, ("task",))
    saved_data = saved["data"]
    model = runs.resumed_config(run_dir, GPTConfig, saved["model"], model_settings, "model settings")
    if "max_len" in data:  # as a new run keeps it: at most the model's context
        data["max_len"] = min(data["max_len"], model.block_size)
    return {"task": saved["task"], "data": {**DATA_DEFAULTS, **runs.resumed_values(run_dir, saved_data, data, DATA_DEFAULTS)},
            "model_cfg": model, "labels": saved.get("labels"),
            "train_cfg": runs.resumed_config(run_dir, TrainConfig, saved["train"], train_settings, "train settings",
                                             runs.RESUME_OVERRIDES),
            "train": runs.resumed_source(run_dir, TaskSource, saved_data["train"], train_source, "data"),
            "valid": runs.resumed_source(run_dir, TaskSource, saved_data["valid"], valid_source, "validation data"),
            "pretrained": saved.get("init", {}).get("pretrained"), "from_scratch": saved.get("init", {}).get("from_scratch")}


def _examples(task: str, train: TaskSource, valid: TaskSource | None, on_bad_line) -> tuple[list, list]:
    """The training and validation examples; without validation data, the last 5% of the training examples."""
    train_examples = train.examples(task, on_bad_line)
    if valid is not None:
        return train_examples, valid.examples(task, on_bad_line)
    cut = max(1, len(train_examples) // 20)
    log.info("no validation data given: the last %d training examples are held out", cut)
    return train_examples[:-cut], train_examples[-cut:]


def _classify_data(s: dict[str, Any], tok: Tokenizer, max_len: int, on_bad_line, progress):
    """Classification data: the training texts prepared once (tokenized into memory-mapped files, reused by
    later runs and resumes: `nmtkit.data.prepared`), so a file of millions of rows takes a few bytes a row;
    validation data (a file, or the last 5% of the training rows) in memory. Returns (training data,
    validation data, label names)."""
    from nmtkit.data import mapped, prepared
    from nmtkit.files import read_json

    folder = prepared.provide(s["train"], tok, kind="labelled", on_bad_line=on_bad_line, progress=progress)
    rows = read_json(folder / prepared.META)["pairs"]
    cut = 0 if s["valid"] is not None else max(1, rows // 20)
    if cut:
        log.info("no validation data given: the last %d training examples are held out", cut)
    labels = s["labels"]
    if labels is None:  # a new classifier's label names, from its training rows
        labels = sorted_labels(mapped.labels_present(folder, (0, rows - cut)))
        if len(labels) < 2:
            raise DataError(f"the training data has one label only ({labels[0]!r}); a classifier needs two or more")
    train_data = mapped.PreparedTexts(folder, max_len, labels, (0, rows - cut), eos=tok.eos_id)
    if s["valid"] is not None:
        valid_examples = s["valid"].examples("classify", on_bad_line)
        return train_data, TaskData("classify", valid_examples, tok, max_len, 0, labels, "validation data"), labels
    held_out = mapped.PreparedTexts(folder, max_len, labels, (rows - cut, rows), "validation data", tok.eos_id)
    return train_data, TaskData.encoded([held_out.seq(i) for i in range(len(held_out))], held_out.labels.tolist()), labels


def _write_config(run_dir: Path, resume: bool, task: str, model_cfg, labels, train_cfg, s: dict[str, Any],
                  data: dict[str, Any], command, device, prepared_folder: Path | None = None) -> None:
    """config.json and run.json of a new run (prepared training data recorded as it was prepared:
    `prepared_folder`); a resumed run's config.json gets its new training limits."""
    if resume:
        checkpoint.update_config(run_dir, train=to_dict(train_cfg))
        return
    train, valid = s["train"], s["valid"]
    checkpoint.write_config(run_dir, "finetune", task=task, model=to_dict(model_cfg), labels=labels,
                            train=to_dict(train_cfg), init={"pretrained": s["pretrained"], "from_scratch": s["from_scratch"]},
                            data={"train": to_dict(train), "valid": to_dict(valid) if valid else None, **data})
    from nmtkit.data.prepared import trained_on

    trained = trained_on(prepared_folder) if prepared_folder else describe_files(train.files())
    runs.start_record(run_dir, command, train_cfg.seed, device,
                      {"files": trained + (describe_files(valid.files()) if valid else [])})


def _task_model(task: str, model_cfg, labels, pretrained, new_weights: bool, data: dict[str, Any]):
    """The task's model: a head on the pretrained body (its weights loaded unless `new_weights`; always under
    LoRA adapters, which a run saves without the body), the body frozen with `freeze`."""
    model = build_task_model(task, model_cfg, labels)
    body = model if task == "generate" else model.body
    rank = data.get("lora_rank", 0)
    if pretrained and (not new_weights or rank):
        base = runs.open_run(pretrained, ("gpt",))
        checkpoint.load_state(body, runs.run_weights(base, body), base.path)
    if data["freeze"]:
        body.requires_grad_(False)
    if rank:
        from nmtkit.models.lora import add_adapters

        total = sum(p.numel() for p in model.parameters())
        trainable = add_adapters(model, rank, data["lora_alpha"], data["lora_targets"])
        log.info("LoRA rank %d on %s: %s trainable parameters of %s (%.2f%%)", rank, data["lora_targets"],
                 f"{trainable:,}", f"{total + trainable:,}", 100 * trainable / (total + trainable))
    return model


# ---------------------------------------------------------------------------------------------------------
# classify, answer, evaluate


class FineTuned:
    """A fine-tuned classify or qa run folder loaded for inference."""

    def __init__(self, run_dir: str | Path, device: str = "auto", tasks: tuple[str, ...] = ("classify", "qa")):
        from nmtkit.models.gpt import GPTConfig
        from nmtkit.runtime import pick_device

        run = runs.open_run(run_dir, ("finetune",))
        self.run_dir, self.config, self.task = run.path, run.config, run.task
        if self.task not in tasks:
            raise CheckpointError(f"{self.run_dir}: a --task {self.task} run; this command needs a {' or '.join(tasks)} run")
        self.labels = self.config.get("labels")
        self.max_len, self.stride = self.config["data"]["max_len"], self.config["data"]["stride"]
        model_cfg = from_dict(GPTConfig, self.config["model"], str(self.run_dir / checkpoint.CONFIG))
        self.tok = runs.run_tokenizer(run, model_cfg.vocab_size)
        self.device = pick_device(device)
        self.model = runs.load_weights_for_inference(lambda: build_task_model(self.task, model_cfg, self.labels), run,
                                                     self.device)


def classify(ft: FineTuned, lines: Iterable[str | None], batch_size: int = 64, buffer_lines: int = 1024,
             wait: float | None = None) -> Iterator[list[dict[str, Any] | None]]:
    """One result per input line, {"label", "probs": {label: p}} (None for an empty line), given in blocks in
    input order: after each batch, the results whose every earlier line is done. Read in buffers as
    `translation.translate_blocks` reads; within a buffer, texts of similar length are batched together. A text
    longer than the model reads keeps its first pieces, with a warning naming its file:line."""
    from nmtkit.data import datasets
    from nmtkit.data.batching import example_batches
    from nmtkit.data.sources import InOrder, line_chunks, line_names

    where = line_names(lines)
    lineno = 0
    for chunk in line_chunks(lines, buffer_lines, wait):
        texts = [line or "" for line in chunk]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        seqs = datasets.encode_texts(ft.tok, [texts[i] for i in todo], ft.max_len, lambda k, n: log.warning(
            "%s: %d pieces, truncated to %d", where(lineno + todo[k] + 1), n, ft.max_len - 1))
        ordered = InOrder(len(chunk), set(range(len(chunk))) - set(todo))
        for index in list(example_batches([len(s) for s in seqs], batch_size, shuffle=False)) or [[]]:
            done = []
            if len(index):
                probs = predict_classes(ft.model, ft.device, [seqs[j] for j in index], batch_size)
                done = [(todo[j], {"label": ft.labels[max(range(len(p)), key=p.__getitem__)],
                                   "probs": {name: round(x, 4) for name, x in zip(ft.labels, p)}})
                        for j, p in zip(index, probs.tolist())]
            if ready := ordered.add(done):
                yield [result for _, result in ready]
        lineno += len(chunk)


def answer(ft: FineTuned, questions: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Answers to (id, context, question) triples: text, character offsets in the context, score."""
    from nmtkit.data.datasets import qa_features
    from nmtkit.decoding import best_spans

    for qid, context, question in questions:
        if not context.strip() or not question.strip():
            raise DataError(f"question {qid}: the {'context' if not context.strip() else 'question'} is empty")
    examples = [corpora.QAExample(qid, "", context, question, ()) for qid, context, question in questions]
    features = qa_features(ft.tok, examples, ft.max_len, ft.stride)
    return best_spans(features, examples, span_logits(ft.model, ft.device, features))


def evaluate_finetuned(run_dir: str | Path, source: TaskSource, device: str = "auto", record: bool = True) -> dict[str, Any]:
    """Score a fine-tuned run on a data set with its task's metric; recorded in run.json. The columns of a
    classify run's training data are used unless the source names others."""
    import dataclasses

    run = runs.open_run(run_dir, ("finetune",))
    task, data = run.task, run.config["data"]
    columns = {k: v for k, v in (data.get("train") or {}).items() if k.endswith("_column")}
    source = dataclasses.replace(source, **{k: v for k, v in columns.items()
                                            if getattr(source, k) == getattr(TaskSource, k)})
    examples = source.examples(task)
    if task == "generate":
        from nmtkit.runtime import pick_device

        result = generation_scores(Path(run_dir), examples, pick_device(device), data.get("max_new_tokens", 128))
    else:
        ft = FineTuned(run_dir, device)
        task_data = TaskData(task, examples, ft.tok, ft.max_len, ft.stride, ft.labels, source.file or source.dataset)
        result = task_scores(ft.model, ft.device, task_data, ft.labels)
    result = {"task": task, "data": to_dict(source), **result}
    if record:
        runs.append_record(run_dir, "evaluations", result)
    return result
