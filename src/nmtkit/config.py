"""Typed, frozen configurations and the one way to build them from dicts, TOML or YAML.

Every config is a frozen dataclass with commented defaults. `from_dict` rejects unknown keys and values
outside a `Literal` and lists the valid choices in its error (JoeyNMT's habit). Model configs live next to
their models; this module holds the machinery and the configs shared by several commands.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from nmtkit.errors import ConfigError

T = TypeVar("T")


def _check_value(name: str, value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_value(name, value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {name} must be a list, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass `cls` from `data`, checking keys, types and `Literal` choices."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(names)}")
    values = {k: _check_value(k, v, hints[k], where) for k, v in data.items()}
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
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

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

    model_type: Literal["bpe", "unigram", "char", "word"] = "unigram"
    vocab_size: int = 8000  # ignored by "char", which keeps every character it sees
    character_coverage: float = 1.0  # 0.9995 is usual for languages with large character sets
    max_sentences: int = 0  # 0: train on every sentence; else a random sample of this many
    user_defined_symbols: tuple[str, ...] = ()  # pieces never split, e.g. ("<sep>", "<cls>")
    seed: int = 0
    byte_fallback: bool = False  # unknown characters become byte pieces instead of <unk>

    def validate(self, where: str) -> None:
        if self.vocab_size < 8:
            raise ConfigError(f"{where}: vocab_size must be at least 8, got {self.vocab_size}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"{where}: character_coverage must be in (0, 1], got {self.character_coverage}")
        if self.max_sentences < 0:
            raise ConfigError(f"{where}: max_sentences must be 0 (all) or positive, got {self.max_sentences}")
