"""nmtkit: the neural text pipeline as command-line tools.

Tokenizers, data readers, run folders, translators (RNN, attention, Transformer) and scoring.
The command line lives in `nmtkit.cli`; every command is a thin wrapper over a plain function in
`nmtkit.workflows`, so everything the CLI does can also be called from Python.
"""

__version__ = "0.1.0"
