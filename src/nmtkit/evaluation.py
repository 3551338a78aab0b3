"""Scores: BLEU, chrF and TER through sacrebleu, each with its signature (so every number says how it was
made); accuracy, macro-F1 and the confusion matrix; SQuAD's exact match and F1. What is *not* here: producing
the hypotheses (`nmtkit.decoding`)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Sequence

from nmtkit.errors import ConfigError

log = logging.getLogger("nmtkit")

METRICS = ("bleu", "chrf", "ter")
LOWER_IS_BETTER = ("loss", "ppl", "bits_per_char", "ter")  # in a metric's name; every other metric: higher is better


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` is better (losses, perplexity, bits per character, TER)."""
    return any(part in metric for part in LOWER_IS_BETTER)


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` beats `old` (None: nothing yet) on `metric`."""
    return old is None or (new < old if lower_is_better(metric) else new > old)
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


TER_WORDS = 200  # past this many words in a line, sacrebleu's TER takes seconds a line (its shift search)


def score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] | None = None,
    *,
    tokenize: str | None = None,
    lowercase: bool = False,
    target_lang: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Corpus-level scores. `references` is a list of reference streams, each as long as `hypotheses`.
    `metrics` None: BLEU, chrF and TER, but TER is left out (with a warning) when a line has more than TER_WORDS
    words: sacrebleu's TER searches word shifts in time that grows with the line's length (on 2 cores: 0.5 s at
    100 words, 5 s at 200, 17 s at 800; a 100 KB line takes minutes and GBs). Asked for by name, TER runs, with
    a warning.

    Returns {"bleu": {"score": 34.1, "signature": "nrefs:1|case:mixed|...", ...}, "chrf": {...}, ...}.
    """
    hyps, refs = list(hypotheses), [list(r) for r in references]
    longest = max((len(line.split()) for line in [*hyps, *(x for r in refs for x in r)]), default=0)
    if longest > TER_WORDS and (metrics is None or "ter" in metrics):
        if metrics is None:
            log.warning("TER left out: a line has %d words, and sacrebleu's TER takes seconds to minutes on lines over "
                        "%d words (its shift search); ask for it with --metrics bleu,chrf,ter", longest, TER_WORDS)
            metrics = [m for m in METRICS if m != "ter"]
        else:
            log.warning("TER on a line of %d words: sacrebleu's shift search takes seconds to minutes on lines over %d "
                        "words", longest, TER_WORDS)
    results: dict[str, dict[str, Any]] = {}
    for name, metric in _metrics(METRICS if metrics is None else metrics, tokenize, lowercase, target_lang).items():
        result = metric.corpus_score(hyps, refs)
        entry: dict[str, Any] = {"score": round(result.score, 2), "signature": str(metric.get_signature())}
        if name == "bleu":
            entry.update(precisions=[round(p, 1) for p in result.precisions], bp=round(result.bp, 3),
                         sys_len=result.sys_len, ref_len=result.ref_len)
        results[name] = entry
    return results


def _metrics(names: Sequence[str], tokenize: str | None, lowercase: bool, target_lang: str | None) -> dict[str, Any]:
    """sacrebleu's metric objects by name, with sacrebleu's defaults but for the tokenizer and lowercasing."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    tokenize = tokenize or default_tokenizer(target_lang)
    if tokenize not in TOKENIZERS:
        raise ConfigError(f"--tokenize {tokenize!r} is not valid; choose one of {', '.join(TOKENIZERS)}")
    metrics: dict[str, Any] = {}
    for name in names:
        if name == "bleu":
            try:
                metrics[name] = BLEU(tokenize=tokenize, lowercase=lowercase)
            except (ImportError, RuntimeError) as exc:
                raise ConfigError(f"--tokenize {tokenize}: {exc}") from None
        else:  # TER: sacrebleu's default (case-insensitive), so the numbers match its users'
            metrics[name] = CHRF(lowercase=lowercase) if name == "chrf" else TER()
    return metrics


def paired_test(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[Sequence[str]],
                metrics: Sequence[str] | None = None, *, test: str = "bs", samples: int = 0,
                tokenize: str | None = None, lowercase: bool = False, target_lang: str | None = None) -> dict[str, Any]:
    """sacrebleu's significance test of every system against the first (the baseline): paired bootstrap
    resampling (`bs`, Koehn 2004) or approximate randomization (`ar`, Riezler and Maxwell 2005). Returns each
    system's score, mean and 95% confidence interval, and p-value against the baseline, per metric, with the
    signatures."""
    from sacrebleu.significance import PairedTest

    metrics = METRICS if metrics is None else metrics
    if len(systems) < 2:
        raise ConfigError("a paired test needs two systems or more: give -i once per system (the first is the baseline)")
    objects = _metrics(metrics, tokenize, lowercase, target_lang)
    test_ = PairedTest([(n, list(h)) for n, h in systems], {k: v for k, v in objects.items()},
                       [list(r) for r in references], test_type=test, n_samples=samples,
                       n_ar_confidence=0 if test == "ar" else -1)
    signatures, table = test_()
    theirs = [k for k in table if k != "System"]  # sacrebleu's names (BLEU, chrF2, TER), in our metrics' order
    rows = [{"system": name, "scores": {}} for name, _ in systems]
    for metric, key in zip(objects, theirs):
        for row, result in zip(rows, table[key]):
            row["scores"][metric] = {"score": round(result.score, 2), "mean": _rounded(result.mean),
                                     "ci": _rounded(result.ci), "p_value": _rounded(result.p_value, 4)}
    return {"test": "paired bootstrap" if test == "bs" else "approximate randomization",
            "signatures": {metric: str(signatures[key]) for metric, key in zip(objects, theirs)}, "systems": rows}


def _rounded(value: Any, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------------------------------------------------
# Classification: accuracy, macro-F1, confusion matrix


def classification_scores(predicted: Sequence[int], gold: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (the mean of each class's F1; a class never predicted nor present is left out) and the
    confusion matrix (rows: gold label, columns: predicted label), in percent where a rate."""
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for p, g in zip(predicted, gold):
        confusion[g][p] += 1
    f1s = []
    for c in range(n):
        tp = confusion[c][c]
        predicted_c = sum(confusion[r][c] for r in range(n))
        gold_c = sum(confusion[c])
        if predicted_c + gold_c:
            f1s.append(2 * tp / (predicted_c + gold_c))
    correct = sum(confusion[c][c] for c in range(n))
    return {"accuracy": round(100 * correct / max(len(gold), 1), 2), "macro_f1": round(100 * sum(f1s) / max(len(f1s), 1), 2),
            "examples": len(gold), "labels": list(labels), "confusion": confusion}


# ---------------------------------------------------------------------------------------------------------
# Extractive QA: the official SQuAD v1.1 evaluation (exact match and token F1 after normalisation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    from collections import Counter

    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Exact match and F1 in percent, each the best over a question's reference answers (as the official script)."""
    em = f1 = 0.0
    for prediction, truths in zip(predictions, answers):
        em += max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
        f1 += max(squad_f1(prediction, t) for t in truths)
    n = max(len(predictions), 1)
    return {"exact_match": round(100 * em / n, 2), "f1": round(100 * f1 / n, 2), "questions": len(predictions)}
