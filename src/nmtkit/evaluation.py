"""Scores: BLEU, chrF and TER through sacrebleu, each with its signature (so every number says how it was
made). What is *not* here: producing the hypotheses (`nmtkit.decoding`)."""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

from nmtkit.errors import ConfigError

METRICS = ("bleu", "chrf", "ter")
TOKENIZERS = ("13a", "intl", "zh", "char", "none", "ja-mecab", "ko-mecab", "flores101", "flores200")


def default_tokenizer(target_lang: str | None) -> str:
    """sacrebleu's tokenizer for a target language: zh for Chinese, the MeCab ones for Japanese and Korean
    when installed (`pip install sacrebleu[ja]` / `sacrebleu[ko]`), else 13a (sacrebleu's default)."""
    lang = (target_lang or "").lower()
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("ja") and importlib.util.find_spec("MeCab") is not None:
        return "ja-mecab"
    if lang.startswith("ko") and importlib.util.find_spec("mecab_ko") is not None:
        return "ko-mecab"
    return "13a"


def score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = METRICS,
    *,
    tokenize: str | None = None,
    lowercase: bool = False,
    target_lang: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Corpus-level scores. `references` is a list of reference streams, each as long as `hypotheses`.

    Returns {"bleu": {"score": 34.1, "signature": "nrefs:1|case:mixed|...", ...}, "chrf": {...}, ...}.
    """
    from sacrebleu.metrics import BLEU, CHRF, TER

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    tokenize = tokenize or default_tokenizer(target_lang)
    if tokenize not in TOKENIZERS:
        raise ConfigError(f"--tokenize {tokenize!r} is not valid; choose one of {', '.join(TOKENIZERS)}")
    hyps, refs = list(hypotheses), [list(r) for r in references]
    results: dict[str, dict[str, Any]] = {}
    for name in metrics:
        if name == "bleu":
            try:
                metric = BLEU(tokenize=tokenize, lowercase=lowercase)
            except (ImportError, RuntimeError) as exc:
                raise ConfigError(f"--tokenize {tokenize}: {exc}") from None
        elif name == "chrf":
            metric = CHRF(lowercase=lowercase)
        else:
            metric = TER(case_sensitive=not lowercase)
        result = metric.corpus_score(hyps, refs)
        entry: dict[str, Any] = {"score": round(result.score, 2), "signature": str(metric.get_signature())}
        if name == "bleu":
            entry.update(precisions=[round(p, 1) for p in result.precisions], bp=round(result.bp, 3),
                         sys_len=result.sys_len, ref_len=result.ref_len)
        results[name] = entry
    return results
