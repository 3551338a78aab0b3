"""Typed, frozen configurations and the one way to build them from dicts, TOML or YAML.

Every config is a frozen dataclass with commented defaults. `from_dict` rejects unknown keys and values
outside a `Literal` and lists the valid choices in its error (JoeyNMT's habit). Model configs live next to
their models; this module holds the machinery and the configs shared by several commands: the tokenizer's,
training's and word2vec training's. Their fields are declared with `option`, which gives each its help text
(and any extra flag names): the command line makes one flag per field from it (Hugging Face's argument
dataclasses), so a flag's name, default and help live here alone, and a settings file takes the same names.
No torch here: the command line reads these classes to build its help.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from nmtkit.errors import ConfigError

T = TypeVar("T")
MAX_VOCAB = 1 << 24  # the largest vocabulary any config accepts


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, cut to `limit` characters (a settings file may hold a huge
    one)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_value(name: str, value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {name}={shown(value)} is not valid; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_value(name, value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings, got {shown(value)}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, got {shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a finite number, got {shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, got {shown(value)}")
        return value
    return value


def option(default: Any, help: str, *flags: str, min: float | None = None, max: float | None = None) -> Any:
    """A config field with its command-line help; `flags` are extra names for it (`--warmup` for
    `warmup_steps`), accepted on the command line and, without the dashes, in settings files; `min` and `max`
    bound its value wherever it comes from (a flag, a settings file, a run's config.json)."""
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, "min": min, "max": max})


def _check_range(field: dataclasses.Field, value: Any, where: str) -> None:
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{where}: {field.name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: {field.name} must be at most {high}, got {value}")


def _field_names(classes: tuple[type, ...]) -> dict[str, str]:
    """Every spelling of the fields of `classes` (`-` or `_` alike, flag names too) -> the field's name."""
    names = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            for name in (f.name, *(flag.split("/")[0].lstrip("-") for flag in f.metadata.get("flags", ()))):
                names[name.replace("-", "_")] = f.name
    return names


def canonical_keys(cls: type, data: dict[str, Any], where: str = "settings") -> dict[str, Any]:
    """`data` with each key as the field name of `cls` it stands for: `-` or `_` alike, flag names too. Two keys
    for one field (`max_steps` and `max-steps`, `warmup` and `warmup_steps`) are refused, naming both."""
    names = _field_names((cls,))
    return one_key_each({k: names.get(str(k).replace("-", "_"), k) for k in data}, data, where)


def with_flags(table: dict[str, Any], flags: dict[str, Any], classes: tuple[type, ...], where: str) -> dict[str, Any]:
    """A settings file's table with the command line's flags (field names) over it: the table's keys as the field
    names of `classes` they stand for (two of its keys for one setting refused), the flags winning."""
    names = _field_names(classes)
    return {**one_key_each({k: names.get(str(k).replace("-", "_"), k) for k in table}, table, where), **flags}


def one_key_each(canonical: dict[Any, Any], data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` under the keys `canonical` maps its keys to, refusing two keys that name one setting."""
    out: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for key, value in data.items():
        name = canonical[key]
        if name in out:
            raise ConfigError(f"{where}: {given[name]} and {key} are the same setting; give it once")
        out[name], given[name] = value, key
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass `cls` from `data`, checking keys, types and `Literal` choices. Keys may be written
    with `-` or `_`, or as a field's flag name (`warmup` for `warmup_steps`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table of settings, got {type(data).__name__} {data!r}"[:200])
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = canonical_keys(cls, data, where)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(fields)}")
    values = {k: _check_value(k, v, hints[k], where) for k, v in data.items()}
    for name, value in values.items():
        if value is not None:
            _check_range(fields[name], value, where)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def replace(cfg: T, where: str = "config", **changes: Any) -> T:
    """`dataclasses.replace` with the checks of `from_dict`; `None` values mean 'keep'."""
    data = dataclasses.asdict(cfg)
    data.update({k: v for k, v in changes.items() if v is not None})
    return from_dict(type(cfg), data, where)


def load_settings_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) settings file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: settings file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark at the start is accepted
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start + 1} is not UTF-8)") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise ConfigError(f"{path}: YAML aliases (*name) are not accepted in settings files; write the "
                                  "values out")  # an alias can stand for an exponentially large value
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: settings files must end in .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # the parsers' own exceptions carry line numbers
        raise ConfigError(f"{path}: cannot parse settings: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: settings must be a table of key = value pairs")
    return data


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """How a SentencePiece tokenizer is trained."""

    model_type: Literal["bpe", "unigram", "char", "word"] = option("unigram", "bpe, unigram, char or word.")
    vocab_size: int = option(8000, "Number of pieces, special ones included (char: every character seen).",
                             min=8, max=MAX_VOCAB)
    character_coverage: float = option(1.0, "Share of characters covered (0.9995 is usual for CJK).", min=0.0, max=1.0)
    max_sentences: int = option(0, "Train on a random sample of this many sentences (0: all).", min=0)
    user_defined_symbols: tuple[str, ...] = option((), "A piece never split, e.g. <sep> (repeatable).", "--user-symbol")
    seed: int = option(0, "Random seed of the sample.")
    byte_fallback: bool = option(False, "Unknown characters become byte pieces instead of <unk>.")

    def validate(self, where: str) -> None:
        if self.vocab_size < 8:
            raise ConfigError(f"{where}: vocab_size must be at least 8, got {self.vocab_size}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"{where}: character_coverage must be in (0, 1], got {self.character_coverage}")
        if self.max_sentences < 0:
            raise ConfigError(f"{where}: max_sentences must be 0 (all) or positive, got {self.max_sentences}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How `nmtkit.training.train` trains any model; each task's workflow has its own defaults on top."""

    max_steps: int = option(10_000, "Optimizer steps.", min=1)
    max_epochs: int = option(0, "Stop after this many epochs (0: no limit).", min=0)
    max_minutes: float = option(0.0, "Stop, after a last evaluation, once training ran this long (0: no limit).",
                                min=0.0)
    max_tokens: int = option(4096, "Batch size in padded tokens per micro-batch (sentences x longest sentence).", min=1)
    accumulate: int = option(1, "Micro-batches per optimizer step (per process).", min=1)
    lr: float = option(5e-4, "Peak learning rate.", min=0.0)
    schedule: Literal["inverse-sqrt", "cosine", "constant"] = option(
        "inverse-sqrt", "inverse-sqrt, cosine or constant, after the warmup.")
    warmup_steps: int = option(1000, "Linear warmup steps from 0.", "--warmup", min=0)
    min_lr_ratio: float = option(0.0, "cosine: the floor, as a share of --lr.", min=0.0, max=1.0)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices.", min=0.0)
    beta1: float = option(0.9, "AdamW beta1.", min=0.0, max=1.0)
    beta2: float = option(0.98, "AdamW beta2.", min=0.0, max=1.0)
    clip_norm: float = option(1.0, "Gradient clipping norm (0: off).", min=0.0)
    label_smoothing: float = option(0.1, "Label smoothing.", min=0.0, max=1.0)
    teacher_forcing: float = option(1.0, "RNNs: share of steps fed the reference token (the rest: their own "
                                    "prediction).", min=0.0, max=1.0)
    eval_every: int = option(500, "Steps between validations and checkpoints.", min=1)
    patience: int = option(0, "Stop after this many validations without improvement (0: never).", min=0)
    best_metric: str = option("bleu", "The validation metric that picks the best checkpoint (bleu, chrf, accuracy, "
                                      "f1: higher; valid_loss: lower).")
    keep_checkpoints: int = option(5, "Step checkpoints kept (for --resume and nmtkit average).", min=1)
    log_every: int = option(50, "Steps between training-loss lines in metrics.jsonl.", min=1)
    seed: int = option(1, "Random seed.")
    bf16: bool = option(True, "bf16 autocast on GPUs that support it (never on CPU).")
    compile: bool = option(False, "torch.compile the model.")
    max_len: int = option(256, "Leave out training pairs longer than this (pieces); they are counted and reported.",
                          min=1)

    def validate(self, where: str) -> None:
        for name in ("max_steps", "max_tokens", "accumulate", "eval_every", "log_every", "max_len", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ConfigError(f"{where}: teacher_forcing must be between 0 and 1, got {self.teacher_forcing}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise ConfigError(f"{where}: lr must be positive, got {self.lr}")


NOISE_GROUP = 8  # word2vec examples that share their noise words (see nmtkit.models.embeddings)


@dataclasses.dataclass(frozen=True)
class Word2VecTrainConfig:
    """How word vectors train: word2vec's own plain SGD with a linearly decaying rate."""

    epochs: int = option(5, "Passes over the corpus.", min=1)
    window: int = option(5, "Context words on each side (each centre draws its own window from 1..window).", min=1)
    negative: int = option(5, "Noise words per true word, drawn from unigram counts ** 0.75.", min=1)
    sample: float = option(1e-3, "Subsampling threshold of frequent words (0: off).", min=0.0)
    lr: float = option(0.025, "Initial learning rate, decaying linearly to --min-lr over the run.", min=0.0)
    min_lr: float = option(0.0001, "The learning rate at the end of the run.", min=0.0)
    batch_size: int = option(0, f"Examples per update, a multiple of {NOISE_GROUP} (0: 2048 for skipgram, 512 for "
                                "cbow, the best trade-offs measured).", min=0)
    seed: int = option(1, "Random seed.")

    def validate(self, where: str) -> None:
        for name in ("epochs", "window", "negative"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 0 or self.batch_size % NOISE_GROUP:
            raise ConfigError(f"{where}: batch_size must be a multiple of {NOISE_GROUP}, got {self.batch_size}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError(f"{where}: lr must be positive and min_lr not negative")
