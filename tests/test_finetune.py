"""Downstream: heads, span mapping, SQuAD metric, the instruction loss mask, and each task learning a tiny set."""

import importlib.util
from pathlib import Path
import json

import pytest
import torch
from typer.testing import CliRunner

from nmtkit import evaluation
from nmtkit.data.sources import TaskSource, TextSource
from nmtkit.workflows import finetune, lm
from nmtkit.cli import app
from nmtkit.config import TokenizerConfig
from nmtkit.data import corpora, datasets
from nmtkit.data.batching import IGNORE, collate_instructions
from nmtkit.models.gpt import GPTConfig
from nmtkit.models.heads import GPTClassifier, GPTSpanQA
from nmtkit.tokenization import EOS_ID, train_tokenizer

from conftest import DEMO, line_reader, write

runner = CliRunner()
TINY = {"block_size": 64, "d_model": 48, "heads": 4, "layers": 2, "dropout": 0.0}
FAST = {"max_steps": 150, "eval_every": 50, "log_every": 10, "warmup_steps": 10, "lr": 3e-3}


CT2 = importlib.util.find_spec("ctranslate2") is not None


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    text = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(text + ["café über naïve — 1990s"] * 3, tmp_path_factory.mktemp("ftok") / "tok",
                           TokenizerConfig(vocab_size=480, byte_fallback=True))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    text = write(folder / "text.txt", (DEMO / "train.en").read_text(encoding="utf-8"))
    lm.pretrain(run_dir=folder / "gpt", source=TextSource(inputs=(str(text),)), model_settings=TINY, batch_size=16, device="cpu",
                       train_settings={**FAST, "max_steps": 60}, tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=60))
    return folder / "gpt"


def test_head_output_shapes():
    cfg = GPTConfig(vocab_size=50, **TINY)
    ids = torch.randint(4, 50, (3, 10))
    logits = GPTClassifier(cfg, classes=5)(ids, torch.tensor([10, 4, 1]))
    assert logits.shape == (3, 5)
    start, end = GPTSpanQA(cfg)(ids)
    assert start.shape == end.shape == (3, 10)


def test_classifier_reads_each_texts_last_token():
    """Padding after a text's last token must not change its logits (causal attention, last-token method)."""
    torch.manual_seed(0)
    model = GPTClassifier(GPTConfig(vocab_size=50, **TINY), classes=3).eval()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0]])
    assert torch.allclose(model(short, torch.tensor([3])), model(padded, torch.tensor([3])), atol=1e-5)


@pytest.mark.parametrize("context, answer", [
    ("Paris is the capital of France.", "Paris"),  # at the very start
    ("The capital of France is Paris", "Paris"),  # at the very end
    ("He   said:\t\tthe  café  über   naïve", "café  über"),  # runs of whitespace, accents
    ("Prices rose in the 1990s , sharply.", "1990s"),
    ("Ünïcödé — dashes — and émojis 🙂 here", "émojis 🙂"),  # byte-fallback pieces
])
def test_span_mapping_gives_exact_character_offsets(tok, context, answer):
    ids, starts, ends = tok.offsets(context)
    assert len(ids) == len(starts) == len(ends)
    a = context.index(answer)
    first, last = datasets.answer_pieces(starts, ends, (answer, a))
    assert context[starts[first] : ends[last]] == answer


def test_a_piece_running_past_the_answer_widens_the_span_to_piece_boundaries(tok):
    context = "Prices rose in the 1990s, sharply."
    ids, starts, ends = tok.offsets(context)
    first, last = datasets.answer_pieces(starts, ends, ("1990s", context.index("1990s")))
    span = context[starts[first] : ends[last]]
    assert span.startswith("1990s") and span in ("1990s", "1990s,")  # "s," may be one piece
    assert evaluation.squad_scores([span], [["1990s"]])["exact_match"] == 100.0
    # every piece's span lies inside one word and never inside whitespace
    for s, e in zip(starts, ends):
        assert 0 <= s <= e <= len(context) and not context[s:e].strip() != context[s:e]


def test_long_contexts_are_windowed_and_answers_split_across_windows(tok):
    words = [f"w{i}" for i in range(120)]
    context = " ".join(words)
    answer = "w50 w51 w52"
    example = corpora.QAExample("q1", "", context, "which words?", ((answer, context.index(answer)),))
    features = datasets.qa_features(tok, [example], max_len=48, stride=16)
    assert len(features) > 3
    holding = [f for f in features if f.start != f.null]
    # windows overlap by 16 pieces, so the answer lies whole in at least one window; the others point to </s>
    assert holding
    for f in holding:
        assert f.ids[f.start] in tok.encode(["w50"])[0] or f.start >= f.offset
        span = context[f.starts[f.start - f.offset] : f.ends[f.end - f.offset]]
        assert span == answer
    for f in features:
        assert len(f.ids) <= 48 and f.ids[-1] == EOS_ID
    # a window that holds only part of the answer is labelled "not here"
    partial = [f for f in features if f.start == f.null and f.starts and f.starts[0] < context.index(answer) + len(answer)
               and f.ends[-1] > context.index(answer) and not (f.starts[0] <= context.index(answer) and f.ends[-1] >= context.index(answer) + len(answer))]
    assert all(f.start == f.end == f.null for f in partial)


@pytest.mark.parametrize("prediction, truths, em, f1", [
    ("Denver Broncos", ["Denver Broncos"], 100.0, 100.0),
    ("the Denver Broncos!", ["Denver Broncos"], 100.0, 100.0),  # articles and punctuation are ignored
    ("Broncos", ["Denver Broncos"], 0.0, 2 * 1.0 * 0.5 / 1.5 * 100),  # precision 1, recall 1/2
    ("Carolina Panthers", ["Denver Broncos"], 0.0, 0.0),
    ("in 1990", ["1990", "the 1990s"], 0.0, 2 * 0.5 * 1.0 / 1.5 * 100),  # the best of the references
    ("a", ["the"], 100.0, 0.0),  # both normalise to nothing: equal, but no tokens in common
])
def test_squad_metric_on_hand_worked_cases(prediction, truths, em, f1):
    scores = evaluation.squad_scores([prediction], [truths])
    assert scores["exact_match"] == em and scores["f1"] == pytest.approx(round(f1, 2))


def test_classification_scores_known_answer():
    scores = evaluation.classification_scores([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert scores["accuracy"] == 60.0
    assert scores["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]
    # F1: a = 2*1/(2+2) = 0.5, b = 2*2/(2+3) = 0.8, c never gold nor... predicted once: 0
    assert scores["macro_f1"] == round(100 * (0.5 + 0.8 + 0.0) / 3, 2)


def test_instruction_loss_mask_covers_exactly_the_response(tok):
    prompt = datasets.format_prompt("Add the numbers.", "2 and 3")
    assert "### Input:\n2 and 3" in prompt and prompt.endswith("### Response:\n")
    assert "### Input" not in datasets.format_prompt("Say hi.")
    ids, n = datasets.encode_instruction(tok, prompt, "5", max_len=200)
    response = tok.encode(["5"])[0] + [EOS_ID]
    assert ids[0] == EOS_ID and ids[n:] == response
    batch = collate_instructions([ids, ids[:n] + response[:1] + [EOS_ID]], [n, n])
    learned = [batch.targets[0][t].item() for t in range(batch.targets.shape[1]) if batch.targets[0][t] != IGNORE]
    assert learned == response  # exactly the response and its </s>, nothing of the prompt
    assert batch.target_tokens == len(response) + 2


@pytest.mark.parametrize("task", ["classify", "qa", "generate"])
def test_each_task_learns_a_tiny_data_set(pretrained, tiny_tasks, task):
    data = tiny_tasks[task]
    run_dir = tiny_tasks["folder"] / f"ft-{task}"
    summary = finetune.finetune(run_dir=run_dir, task=task, pretrained=str(pretrained), device="cpu",
                                 train_source=TaskSource(file=str(data)),
                                 valid_source=TaskSource(file=str(data)),
                                 train_settings=FAST, batch_size=8, max_new_tokens=20)
    best = summary["best"]
    if task == "classify":
        assert best["accuracy"] == 100.0 and best["macro_f1"] == 100.0
        result = run("classify", "-m", run_dir, "--probs", "--device", "cpu", write(tiny_tasks["folder"] / "in.txt",
                                                                                      "I am happy today\n\nwhat a terrible day\n"))
        lines = result.stdout.split("\n")
        assert result.exit_code == 0 and lines[0].startswith("pos\t") and lines[1] == "" and lines[2].startswith("neg\t")
        assert len(lines) == 4  # three input lines, three output lines
        if CT2:
            refused = run("export", run_dir, tiny_tasks["folder"] / "ft-classify-ct2")
            assert refused.exit_code == 1 and "a --task classify run" in refused.stderr
    elif task == "qa":
        assert best["exact_match"] == 100.0 and best["f1"] == 100.0
        context = write(tiny_tasks["folder"] / "context.txt", "The cat sat on the mat. The dog ran in the park.\n")
        result = run("answer", "-m", run_dir, "--context", context, "-q", "Who ran?", "--json", "--device", "cpu")
        found = json.loads(result.stdout)
        assert found["answer"] == "The dog" and (found["start"], found["end"]) == (24, 31)
    else:
        assert summary["generation"]["chrf"] == 100.0
        result = run("generate", "-m", run_dir, "--instruction", "Repeat the word.", "--input", "cat", "-n", "20",
                     "--temperature", "0", "--device", "cpu")
        assert result.stdout == "cat cat\n"
        if CT2:  # the instruction-tuned run exported for CTranslate2 answers the same
            exported = tiny_tasks["folder"] / "ft-generate-ct2"
            assert run("export", run_dir, exported).exit_code == 0
            result = run("generate", "-m", exported, "--instruction", "Repeat the word.", "--input", "cat", "-n", "20",
                         "--temperature", "0", "--device", "cpu")
            assert result.stdout == "cat cat\n"
    evaluated = run("evaluate", "-m", run_dir, "--data", data, "--json", "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    metric = {"classify": "accuracy", "qa": "f1", "generate": "chrf"}[task]
    assert json.loads(evaluated.stdout)[metric] == 100.0


def test_from_scratch_keeps_the_architecture_and_freeze_trains_the_head_only(pretrained, tiny_tasks):
    from nmtkit import checkpoint

    spec = TaskSource(file=str(tiny_tasks["classify"]))
    settings = {**FAST, "max_steps": 5, "eval_every": 5}
    frozen = tiny_tasks["folder"] / "frozen"
    finetune.finetune(run_dir=frozen, task="classify", pretrained=str(pretrained), freeze=True, device="cpu",
                       train_source=spec, valid_source=spec, train_settings=settings)
    before = checkpoint.load_weights(pretrained / "model.safetensors")
    after = checkpoint.load_weights(frozen / "model.safetensors")
    assert all(torch.equal(after[f"body.{k}"], v) for k, v in before.items())
    scratch = tiny_tasks["folder"] / "scratch"
    finetune.finetune(run_dir=scratch, task="classify", pretrained=str(pretrained), from_scratch=True, device="cpu",
                       train_source=spec, valid_source=spec, train_settings=settings)
    config = json.loads((scratch / "config.json").read_text())
    assert config["model"] == json.loads((pretrained / "config.json").read_text())["model"]
    assert config["labels"] == ["neg", "pos"]
    assert not torch.equal(checkpoint.load_weights(scratch / "model.safetensors")["body.embed.weight"],
                           before["embed.weight"])


@pytest.mark.parametrize("args, message", [
    (["--task", "classify"], "no training data"),
    (["--task", "generate", "--train", "x.json", "--freeze-body"], "nothing to train"),
])
def test_finetune_errors_are_one_line(pretrained, tmp_path, args, message):
    result = run("finetune", "-m", pretrained, "-o", tmp_path / "run", *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_label_in_validation_names_it(pretrained, tiny_tasks, tmp_path):
    valid = write(tmp_path / "valid.tsv", "text\tlabel\nso so\tneutral\n")
    result = run("finetune", "--task", "classify", "-m", pretrained, "--train", tiny_tasks["classify"], "--valid", valid,
                 "-o", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 1 and "label 'neutral' is not one of the run's labels (neg, pos)" in result.stderr


def test_finetune_resumes_where_it_stopped(pretrained, tiny_tasks):
    spec = TaskSource(file=str(tiny_tasks["classify"]))
    run_dir = tiny_tasks["folder"] / "resumed"
    first = finetune.finetune(run_dir=run_dir, task="classify", pretrained=str(pretrained), device="cpu",
                               train_source=spec, valid_source=spec, train_settings={**FAST, "max_steps": 10, "eval_every": 5})
    assert first["steps"] == 10
    again = finetune.finetune(run_dir=run_dir, resume=True, device="cpu", train_settings={"max_steps": 20})
    assert again["steps"] == 20 and again["arch"] == "classify"
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert steps == [5, 10, 15, 20]


def test_classify_answers_each_line_while_the_pipe_stays_open(pretrained, tiny_tasks, tmp_path):
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "ft"
    finetune.finetune(run_dir=run_dir, task="classify", pretrained=str(pretrained), device="cpu",
                      train_source=TaskSource(file=str(tiny_tasks["classify"])), train_settings={**FAST, "max_steps": 5},
                      batch_size=8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    process = subprocess.Popen([sys.executable, "-m", "nmtkit", "classify", "-m", str(run_dir), "--device", "cpu"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    next_line = line_reader(process.stdout)
    try:
        process.stdin.write("I am happy today\n")
        process.stdin.flush()
        assert next_line(60) in ("pos\n", "neg\n")  # stdin is still open
        process.stdin.close()
        assert process.wait(30) == 0 and next_line(1) is None
    finally:
        process.kill()


def test_classify_warns_of_a_truncated_text_naming_its_file_and_line(pretrained, tiny_tasks, tmp_path):
    run_dir = tmp_path / "ft"
    finetune.finetune(run_dir=run_dir, task="classify", pretrained=str(pretrained), device="cpu",
                      train_source=TaskSource(file=str(tiny_tasks["classify"])), train_settings={**FAST, "max_steps": 2},
                      batch_size=8)
    first = write(tmp_path / "a.txt", "I am happy today\n")
    second = write(tmp_path / "b.txt", "what a terrible day\n" + "this is great fun " * 40 + "\n")
    result = run("classify", "-m", run_dir, "--device", "cpu", first, second)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    said = " ".join(result.stderr.split())
    assert f"{second}:2: " in said and "pieces, truncated to 63" in said
