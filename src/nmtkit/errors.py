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
