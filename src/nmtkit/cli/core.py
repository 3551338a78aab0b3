"""The Typer app and what every command module shares: error handling, options, output, the progress display.

`command` registers a command whose errors become one line on stderr and an exit code; `config_options` gives a
command one flag per field of a config dataclass (name, default and help from the dataclass alone).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import itertools
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from nmtkit import __version__
from nmtkit.errors import Interrupted, NmtkitError

app = typer.Typer(
    help="nmtkit: tokenizers, translators and language models for the neural text pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)
log = logging.getLogger("nmtkit")


class _Stderr(logging.StreamHandler):
    """A plain log handler writing to whatever `sys.stderr` is when a record comes (as rich's console does)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool = False) -> None:
    """Logs on stderr: rich's aligned, wrapped lines on a terminal; elsewhere (`2> train.log`, a pipe) one plain
    record per line, `LEVEL message`, never padded or wrapped, so grep finds every line whole."""
    if not log.handlers:
        if err.is_terminal:
            handler: logging.Handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = _Stderr()
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose errors become one line on stderr and an exit code."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            _setup_logging()
            try:
                return fn(*args, **kw)
            except Interrupted as exc:
                err.print(f"{exc}; continue with: nmtkit {name} --output {exc.run_dir} --resume", highlight=False,
                          markup=False, soft_wrap=True)
                raise typer.Exit(128 + exc.signum) from None
            except NmtkitError as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt as exc:  # Ctrl-C, or a second signal (`Stopped` says which)
                err.print("interrupted")
                raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
            except BrokenPipeError:
                # the reader of stdout went away (| head): stop quietly, and keep Python from complaining at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(0) from None
            except OSError as exc:  # disk full, permission denied...
                where = f"{exc.filename}: " if exc.filename else ""
                err.print(f"[bold red]error:[/] {escape(where + str(exc.strerror or exc))}", markup=True, highlight=False,
                          soft_wrap=True)
                raise typer.Exit(1) from None

        return app.command(name, **kwargs)(wrapper)

    return register


def config_options(cls: type, into: str, *, defaults: dict[str, Any] | None = None,
                   exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per field of the config dataclass `cls` (but `exclude`): `--field-name` and the
    field's own extra flags, its help, its range, and the default this command uses (`defaults`, else the
    field's) shown in the help. The command receives the flags that were given as one dict, in its parameter
    `into` (with those of any other `config_options` for the same `into`)."""
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_option_type(hints[f.name]),
                                   default=_option(f, hints[f.name], defaults.get(f.name, f.default)))
                 for f in fields]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields}
            given = {k: v for k, v in values.items() if v is not None and v != [] and v != ()}
            kwargs[into] = {**kwargs.get(into, {}), **given}
            return fn(**kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in signature.parameters.values() if p.name != into] + added)
        return wrapper

    return decorate


def _option_type(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return Optional[str]
    if origin is tuple:
        return Optional[List[str]]
    return Optional[hint]


def _option(field: dataclasses.Field, hint: Any, default: Any) -> Any:
    flags = [f"--{field.name.replace('_', '-')}", *field.metadata.get("flags", ())]
    if hint is bool:  # --name/--no-name, unless the field names its own pair ("--bidirectional/--unidirectional")
        pairs = [flag for flag in flags if "/" in flag]
        flags = pairs or [f"{flag}/--no-{flag[2:]}" for flag in flags]
    bounds = {k: field.metadata.get(k) for k in ("min", "max") if field.metadata.get(k) is not None}
    if typing.get_origin(hint) is typing.Literal:
        bounds.update(choice(*typing.get_args(hint)))
    return typer.Option(None, *flags, help=f"{field.metadata['help']} (default {_shown(default)})", show_default=False,
                        **bounds)


def choice(*choices: str, many: bool = False) -> dict[str, Any]:
    """An option's `callback` and `metavar` for a value that must be one of `choices` (with `many`, a comma-separated
    list of them): another value is a usage error naming the flag, exit 2, as click's own choices are."""

    def check(value: Any) -> Any:
        if value is not None:
            for item in (value.split(",") if many else [value]):
                if item.strip() not in choices and (item.strip() or not many):
                    raise typer.BadParameter(f"{item.strip()!r} is not one of {', '.join(choices)}")
        return value

    return {"callback": check, "metavar": ("[" + "|".join(choices) + "]") + (",..." if many else "")}


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return ", ".join(default) or "none"
    return str(default).lower() if isinstance(default, bool) else str(default)


def _plain_metavars(group) -> None:
    """Help pages name values as click does (TEXT, INTEGER, FLOAT, PATH), not by Python type (<list[str]>): from
    each command function's own annotations (public `inspect`, nothing of typer's internals)."""
    names = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}
    for command in group.commands.values():
        hints = {name: p.annotation for name, p in inspect.signature(command.callback, eval_str=True).parameters.items()}
        for param in command.params:
            if getattr(param, "param_type_name", "") == "argument":  # its name says what it is: files, prompts...
                param.display_type_rich = lambda ctx: ""
            elif param.metavar is None:
                param.metavar = names.get(_base_type(hints.get(param.name)))


def _base_type(hint: Any) -> Any:
    """X of X, Optional[X], List[X] and Optional[List[X]]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _base_type(args[0]) if args else hint


def _version(value: bool) -> None:
    if value:
        print(f"nmtkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """nmtkit: tokenizers, translators and language models for the neural text pipeline."""


def main() -> None:
    """Entry point: like `app()`, but a command line that does not parse also gets one line (and exit 2)."""
    # typer may vendor its own click: find its UsageError through a class it exports
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    command = typer.main.get_command(app)
    _plain_metavars(command)
    try:
        rc = command.main(standalone_mode=False, prog_name="nmtkit")
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `nmtkit`: show the help
            print(exc.ctx.get_help() if exc.ctx else exc)
            sys.exit(0)
        where = f"; see {exc.ctx.command_path} --help" if exc.ctx else ""
        err.print(f"error: {exc.format_message().rstrip('.')}{where}", markup=False, highlight=False, soft_wrap=True)
        rc = 2
    except typer.Abort:
        err.print("interrupted")
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)


# ---------------------------------------------------------------------------------------------------------
# Options several commands share


ON_BAD_LINE = typer.Option("error", "--on-bad-line", help="What to do with invalid UTF-8: error, skip the line (an empty output line in line-by-line commands) or replace the bad bytes with U+FFFD; skips and replacements are counted on stderr.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
COMPUTE_TYPE = typer.Option("default", "--compute-type", help="CTranslate2 exports: int8, int8_float32, float16, float32... (default: as exported).")
SETTINGS = typer.Option(None, "--settings", help="TOML/YAML with [data], [model] and [train] tables, keys named like the flags; flags override it.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --output exactly where it stopped (settings given again must be the same, but for the training limits).")
AS_JSON = typer.Option(False, "--json", help="Print JSON.")
OVERWRITE = typer.Option(False, "--overwrite", help="Write into an --output folder that holds other files (nmtkit never deletes what it did not create).")


def tokenizer_options() -> tuple[Any, Any]:
    """--vocab-size and --tokenizer-type of the tokenizer a training command trains on the fly."""
    from nmtkit.config import TokenizerConfig

    return (typer.Option(None, "--vocab-size", help=f"Pieces of the tokenizer trained on the fly (default {TokenizerConfig.vocab_size})."),
            typer.Option(None, "--tokenizer-type", help=f"bpe, unigram or char, for the tokenizer trained on the fly (default {TokenizerConfig.model_type})."))


def tokenizer_config(vocab_size: Optional[int], tokenizer_type: Optional[str]):
    from nmtkit.config import TokenizerConfig, from_dict

    return from_dict(TokenizerConfig, {k: v for k, v in {"vocab_size": vocab_size, "model_type": tokenizer_type}.items()
                                       if v is not None}, "tokenizer")


def check_on_bad_line(value: str) -> str:
    from nmtkit.data.corpora import ON_BAD_LINE_CHOICES

    if value not in ON_BAD_LINE_CHOICES:
        raise NmtkitError(f"--on-bad-line {value!r} is not valid; choose {', '.join(ON_BAD_LINE_CHOICES)}")
    return value


def settings_tables(settings_file: Optional[Path], tables: tuple[str, ...]) -> dict[str, Any]:
    """A run's settings file: only the given top-level tables (and keys) are allowed."""
    from nmtkit.config import load_settings_file

    settings = load_settings_file(settings_file) if settings_file else {}
    unknown = sorted(set(settings) - set(tables))
    if unknown:
        raise NmtkitError(f"{settings_file}: unknown table(s) {', '.join(unknown)}; valid: {', '.join(tables)}")
    for name, value in settings.items():
        if name != "arch" and not isinstance(value, dict):
            raise NmtkitError(f"{settings_file}: {name} must be a table of settings ([{name}]), got {value!r}"[:200])
    return settings


# the [data] keys that are not strings (a column may be a number too)
DATA_TYPES = {"header": bool, "freeze_body": bool, "lowercase": bool, "max_len": int, "stride": int, "batch_size": int,
              "max_new_tokens": int, "vocab_size": int, "min_count": int, "max_vocab": int, "valid_fraction": float,
              "data_files": list, "inputs": list, "lora_rank": int, "lora_alpha": float}


def data_options(settings_file: Optional[Path], settings: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """A command's data options: each flag that was given, else the settings file's [data] value of the same
    name (`-` or `_`), so a whole run can live in one file; an unknown [data] key, a key given twice (`src_lang`
    and `src-lang`) or a value of the wrong type is refused, naming it."""
    from nmtkit.config import one_key_each

    raw = settings.get("data", {})
    table = one_key_each({k: str(k).replace("-", "_") for k in raw}, raw, f"{settings_file}: [data]")
    unknown = sorted(set(table) - set(flags))
    if unknown:
        raise NmtkitError(f"{settings_file}: [data] has unknown key(s) {', '.join(unknown)}; valid: {', '.join(flags)}")
    for name, value in table.items():
        table[name] = _data_value(settings_file, name, value)
    return {name: table.get(name) if value is None else value for name, value in flags.items()}


def _data_value(settings_file: Optional[Path], name: str, value: Any) -> Any:
    """A [data] value of the type its flag takes, or one line naming the key (YAML reads an unquoted no, yes, on
    or off as true or false: a language code `no` must be quoted)."""
    from nmtkit.config import shown

    kind = DATA_TYPES.get(name, str)
    if name.endswith("column") and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)  # a column by number, as on the command line
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          list: isinstance(value, list) and all(isinstance(v, str) for v in value), str: isinstance(value, str)}[kind]
    if ok:
        return value
    wanted = {bool: "true or false", int: "an integer", float: "a number", list: "a list of strings",
              str: "a string" + (" (quote it: YAML reads an unquoted no, yes, on or off as true or false)"
                                 if isinstance(value, bool) else "")}[kind]
    raise NmtkitError(f"{settings_file}: [data] {name} must be {wanted}, got {shown(value)}")


def run_folder(output: Optional[Path], resume: bool, prefix: str) -> Path:
    """The run folder: --output, or checkpoints/PREFIX-DATE-TIME for a new run."""
    if resume and output is None:
        raise NmtkitError("--resume needs --output, the run folder to continue")
    return output or Path("checkpoints") / f"{prefix}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def command_line() -> list[str]:
    return ["nmtkit", *sys.argv[1:]]


def stdin():
    """Standard input as bytes, or None when it is closed (`<&-`)."""
    return sys.stdin.buffer if sys.stdin is not None else None


# ---------------------------------------------------------------------------------------------------------
# Output


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def write_lines(lines, output: Optional[Path]) -> None:
    """Write lines as UTF-8 in blocks of 1,024 (see `write_blocks`)."""
    it = iter(lines)
    write_blocks(iter(lambda: list(itertools.islice(it, 1024)), []), output)


def write_blocks(blocks, output: Optional[Path]) -> None:
    """Write blocks of lines as UTF-8, one output line per line whatever it holds: to stdout each block flushed as
    it comes (a pipeline sees each batch's lines at once; a killed run leaves what was done); with --output, to a
    temporary file renamed into place."""
    if output is not None:
        from nmtkit.files import atomic_write

        atomic_write(output, lambda f: _copy_blocks(blocks, f, flush=False))
    else:
        _copy_blocks(blocks, sys.stdout.buffer, flush=True)


def _copy_blocks(blocks, handle, flush: bool) -> None:
    for block in blocks:
        if block:
            handle.write(("\n".join(line.replace("\n", " ") for line in block) + "\n").encode("utf-8"))
            if flush:
                handle.flush()


def input_wait(files) -> float | None:
    """How long a line-by-line command waits for more input before it works on the lines it has (see
    `nmtkit.data.sources.line_chunks`): 50 ms when a pipe, terminal or FIFO feeds it, so each line is answered
    while the input stays open; None (full buffers) when it reads regular files."""
    import stat

    try:
        if files:
            modes = [os.stat(f).st_mode for f in files if os.path.exists(f)]
        else:
            modes = [os.fstat(sys.stdin.fileno()).st_mode] if sys.stdin is not None else []
    except (OSError, ValueError):  # no real descriptor (a test's stdin): what is there is there
        return None
    return 0.05 if any(not stat.S_ISREG(m) for m in modes) else None


def with_progress(items, what: str, files=(), lines=lambda item: 1):
    """`items` passed through, with a progress bar on stderr (count, per second, and the ETA when the input
    `files` say how many lines there are) while stderr is a terminal; nothing is shown when it is not.
    `lines(item)`: how many lines an item holds (`len` for blocks of lines)."""
    if not err.is_terminal:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:,.1f} lines/s")

    total = _count_lines(files) if files else None
    columns = [TextColumn(what), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(what, total=total)
        for item in items:
            yield item
            progress.advance(task, lines(item))


def _count_lines(files) -> int | None:
    from nmtkit.data import corpora, registry

    try:
        total = 0
        for spec in files:
            with corpora.open_binary(registry.resolve(spec)) as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    total += block.count(b"\n")
        return total
    except OSError:  # the command reports it when it reads the file
        return None


def wide_console(width: int = 100) -> Console:
    return Console(width=max(width, Console().width))


class TrainingDisplay:
    """A rich progress bar on stderr with loss, learning rate, tokens/s and ETA; evaluations as log lines. The bar
    appears with the first training step (a command that fails before it leaves no empty line). When stderr is
    not a terminal, no bar: each logged step is a log line."""

    def __init__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=err, transient=False,
        )
        self.task = self.preparing = None
        self.last: dict[str, Any] = {}  # the latest values shown: lr every step, loss and speed every logged step

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.task is not None or self.preparing is not None:
            self.progress.stop()

    def __call__(self, event: dict) -> None:
        if not err.is_terminal and event["event"] != "eval":  # a log file: logged steps as lines, no bar
            if event["event"] == "train":
                log.info("step %d%s: loss %.4f, lr %.2e, %s tokens/s%s", event["step"],
                         f"/{event['max_steps']}" if event["max_steps"] < 10**9 else "", event["train_loss"],
                         event["lr"], f"{event['tokens_per_s']:,}", f", MFU {event['mfu']:.1%}" if "mfu" in event else "")
            return
        if event["event"] == "prepare":  # tokenizing the training data, the first time
            if self.preparing is None:
                self.progress.start()
                self.preparing = self.progress.add_task("prepare", total=None, stats="")
            self.progress.update(self.preparing, completed=event["done"],
                                 stats=f"{event['what']}  {event['lines_per_s']:,.0f} lines/s")
        elif event["event"] in ("step", "train"):  # every step moves the bar; logged steps bring loss and speed
            if self.task is None:  # a time budget (compare --budget 5m) has no step total
                self.progress.start()
                total = event["max_steps"] if event["max_steps"] < 10**9 else None
                self.task = self.progress.add_task("train", total=total, completed=0, stats="")
            self.last.update(event)
            last = self.last
            stats = f"lr {last['lr']:.2e}" if "lr" in last else ""
            if "train_loss" in last:
                stats = f"loss {last['train_loss']:.3f}  {stats}  {last['tokens_per_s']:,} tok/s"
            self.progress.update(self.task, completed=event["step"],
                                 stats=stats + (f"  MFU {last['mfu']:.1%}" if "mfu" in last else ""))
        elif event["best"] is None:  # nothing to evaluate on: a checkpoint only
            log.info("checkpoint at step %d (no validation data)", event["step"])
        else:
            shown = {k: v for k, v in event.items() if k not in ("event", "epoch", "elapsed_s", "best_step")}
            log.info("eval " + "  ".join(f"{k} {v}" for k, v in shown.items()) + f" (best at step {event['best_step']})")


def log_trained(what: str, summary: dict[str, Any], metrics: tuple[str, ...], extra: str = "") -> None:
    """The closing log line of a training command: size, steps, time, the best evaluation."""
    best = summary["best"] or {}
    shown = ", ".join(f"{k} {best[k]}" for k in metrics if k in best) + extra
    kept = f"best {shown} at step {summary['best_step']}" if shown else \
        f"no validation data: model.safetensors holds the last step ({summary['steps']})"
    size = f"{summary['parameters']:,} parameters"
    if summary.get("trained_parameters", summary["parameters"]) != summary["parameters"]:
        size += f", {summary['trained_parameters']:,} trained"  # LoRA, or a frozen body
    log.info("%s (%s) for %d steps in %.0f s; %s", what, size, summary["steps"], summary["seconds"], kept)
