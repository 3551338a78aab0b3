"""The exceptions nmtkit raises. Libraries raise them; only `nmtkit.cli` turns them into a one-line
message and exit code 1. Each message is complete on its own: it names the file, the line where there is
one, and what is wrong."""


class NmtkitError(Exception):
    """Base class: a problem the user can fix (bad input, bad settings, a broken run folder)."""


class DataError(NmtkitError):
    """Input data that cannot be read: missing file, invalid UTF-8, malformed JSON, misaligned files..."""


class ConfigError(NmtkitError):
    """Settings that are unknown, of the wrong type or out of range."""


class CheckpointError(NmtkitError):
    """A run or tokenizer folder that is missing, incomplete, of an unknown version or unsafe to load."""


class WriteError(NmtkitError):
    """A file that cannot be written (disk full, permission denied); the version on disk, if any, is unchanged."""


class OutOfMemory(NmtkitError):
    """The device ran out of memory; the message names the batch size in use and what to lower."""


class Interrupted(NmtkitError):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint it can resume from."""

    def __init__(self, run_dir: object, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; saved in {run_dir}")
        self.run_dir, self.step, self.signum = run_dir, step, signum


class Stopped(KeyboardInterrupt):
    """A second SIGINT or SIGTERM (or one where nothing can be saved first): stop at once. The command exits
    with 128 + the signal's number, as a shell expects (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
