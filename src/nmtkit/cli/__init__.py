"""The command line: parse options, call one plain function in `nmtkit.workflows`, render the result.

The command `X` lives in the module of its group, named like its `nmtkit.workflows` module and like the user
guide's chapter (docs/guide/): `text` (train-tokenizer, tokenize, download), `translation` (train-translator,
translate, score, evaluate), `lm` (pretrain, generate), `finetune` (finetune, classify, answer), `vectors`
(build-vocab, train-embeddings, similarity, neighbors, analogy), `see` (attention, plot, compare), `runs` (info,
average, export); `core` holds the app and what they share.

This package is the only one that prints, exits, or imports typer and rich. Results go to stdout, progress and
logs to stderr, so commands compose in shell pipelines. A `NmtkitError` becomes `error: <message>` on one line
and exit code 1; Ctrl-C exits 130 (training first saves a checkpoint and says how to resume; SIGTERM: 143); a
closed pipe (`| head`) exits quietly. Line-by-line output never holds a line break inside a line.
"""

from nmtkit.cli import finetune, lm, runs, see, text, translation, vectors  # noqa: F401  (each registers its commands)
from nmtkit.cli.core import app, main

__all__ = ["app", "main"]
