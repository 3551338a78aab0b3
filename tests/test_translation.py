"""Translators end to end on a tiny corpus: learning, search, resume, DDP, and the commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmtkit.data.sources import ParallelSource
from nmtkit.workflows import translation
from nmtkit.cli import app
from nmtkit.config import TokenizerConfig
from nmtkit.decoding import beam_search, greedy
from nmtkit.tokenization import BOS_ID, EOS_ID

from conftest import DEMO, line_reader, write

ARCH_SETTINGS = {
    "transformer": {"d_model": 64, "heads": 4, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 128, "dropout": 0.0},
    "rnn": {"embed_dim": 32, "hidden_dim": 64, "dropout": 0.0},
    "attention": {"embed_dim": 32, "hidden_dim": 64, "dropout": 0.0},
}
FAST = {"max_steps": 200, "lr": 3e-3, "warmup_steps": 10, "max_tokens": 1000, "eval_every": 50,
        "label_smoothing": 0.0, "schedule": "constant", "log_every": 10}
N_PAIRS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    return {"src": write(folder / "tiny.en", "\n".join(en) + "\n"), "tgt": write(folder / "tiny.ko", "\n".join(ko) + "\n"),
            "en": en, "ko": ko, "folder": folder}


def train(tiny, arch, run_dir, **overrides):
    spec = ParallelSource(src=str(tiny["src"]), tgt=str(tiny["tgt"]), src_lang="en", tgt_lang="ko")
    return translation.train_translator(
        run_dir=run_dir, arch=arch, train_source=spec, valid_source=spec, model_settings=ARCH_SETTINGS[arch],
        train_settings={**FAST, **overrides}, tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=400),
        device="cpu",
    )


@pytest.fixture(scope="module")
def runs(tiny):
    return {arch: (train(tiny, arch, tiny["folder"] / arch), tiny["folder"] / arch) for arch in ARCH_SETTINGS}


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_each_architecture_learns_a_tiny_corpus_exactly(runs, tiny, arch):
    summary, run_dir = runs[arch]
    translator = translation.Translator(run_dir, "cpu")
    assert list(translation.translate(translator, tiny["en"], beam=1)) == tiny["ko"]
    assert summary["best"]["bleu"] == 100.0
    history = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "train"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10  # the loss really drops


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_greedy_equals_beam_one_and_cache_equals_no_cache(runs, tiny, arch):
    translator = translation.Translator(runs[arch][1], "cpu")
    model = translator.model
    src_ids = [ids + [EOS_ID] for ids in translator.tok.encode(tiny["en"][:8] + ["I like tea.", "They are farmers."])]
    from nmtkit.data.batching import pad

    x = pad(src_ids)
    mask = x != 0
    limit = torch.full((x.size(0),), 40)
    g = greedy(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit)
    b = beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=1)
    assert g == [h[0].tokens for h in b]
    # without a cache: re-run the decoder over the whole prefix at every step
    with torch.inference_mode():
        memory = model.encode(x, mask)
        prefix = torch.full((x.size(0), 1), BOS_ID)
        for _ in range(40):
            nxt = model.decode(prefix, memory)[:, -1].argmax(-1, keepdim=True)
            prefix = torch.cat([prefix, nxt], 1)
    nocache = [row[1:][: row[1:].index(EOS_ID)] if EOS_ID in row[1:] else row[1:] for row in prefix.tolist()]
    assert g == nocache


def sequence_logprob(model, x, mask, ids):
    """log P(ids </s> | source) under forced decoding, for one sentence."""
    tgt_in = torch.tensor([[BOS_ID] + ids])
    tgt_out = torch.tensor([ids + [EOS_ID]])
    with torch.inference_mode():
        logp = model(x, mask, tgt_in).log_softmax(-1)
    return logp.gather(-1, tgt_out[..., None]).sum().item()


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_beam_search_scores_are_model_scores_and_never_below_greedy(runs, tiny, arch):
    translator = translation.Translator(runs[arch][1], "cpu")
    model = translator.model
    for sentence in tiny["en"][:12] + ["My friend likes tea very much.", "We went to school yesterday."]:
        x = torch.tensor([translator.tok.encode([sentence])[0] + [EOS_ID]])
        mask = x != 0
        limit = torch.tensor([50])
        (g,) = greedy(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit)
        (hyps,) = beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=4, n_best=4)
        for h in hyps:
            assert h.logprob == pytest.approx(sequence_logprob(model, x, mask, h.tokens), abs=1e-4)
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1), abs=1e-6)
        assert hyps[0].score >= sequence_logprob(model, x, mask, g) / (len(g) + 1) - 1e-5


def test_beam_search_n_best_is_sorted_and_distinct(runs, tiny):
    translator = translation.Translator(runs["transformer"][1], "cpu")
    (line,) = translation.translate(translator, ["I am a student."], beam=5, n_best=3)
    hyps = json.loads(line)["hypotheses"]
    assert len(hyps) == 3 and hyps[0]["text"] == "저는 학생입니다."
    assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
    assert len({h["text"] for h in hyps}) == 3


def test_ctrl_c_saves_and_resume_continues_exactly(tiny, tmp_path, monkeypatch):
    import os
    import signal

    from nmtkit.errors import Interrupted

    settings = {**FAST, "max_steps": 30, "eval_every": 10, "log_every": 1}
    train(tiny, "transformer", tmp_path / "straight", **settings)

    from nmtkit import objectives

    real = objectives.seq2seq_loss
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        inner = real(*args, **kwargs)

        def objective(model, batch):
            calls["n"] += 1
            if calls["n"] == 18:  # Ctrl-C in the middle of step 18: the step finishes, is saved, training stops
                os.kill(os.getpid(), signal.SIGINT)
            return inner(model, batch)

        return objective

    monkeypatch.setattr(objectives, "seq2seq_loss", interrupting)
    before = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN in a job started in the background
    with pytest.raises(Interrupted) as stopped:
        train(tiny, "transformer", tmp_path / "broken", **settings)
    assert (stopped.value.step, stopped.value.signum) == (18, signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    monkeypatch.setattr(objectives, "seq2seq_loss", real)
    state = torch.load(tmp_path / "broken" / "train_state.pt", weights_only=True)
    assert state["loop"]["step"] == 18
    translation.train_translator(run_dir=tmp_path / "broken", resume=True, device="cpu")

    def records(run):
        return [(m["kind"], m["step"], m.get("train_loss"), m.get("bleu"))
                for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert records(tmp_path / "broken") == records(tmp_path / "straight")  # every step logged once, same numbers
    from nmtkit.checkpoint import load_weights

    a, b = load_weights(tmp_path / "straight" / "steps" / "step-00000030.safetensors"), load_weights(
        tmp_path / "broken" / "steps" / "step-00000030.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedules():
    from nmtkit.training import TrainConfig, learning_rate

    cfg = TrainConfig(lr=1.0, warmup_steps=4, schedule="inverse-sqrt", max_steps=20)
    assert [learning_rate(s, cfg) for s in (1, 2, 4, 16)] == [0.25, 0.5, 1.0, 0.5]
    cos = TrainConfig(lr=1.0, warmup_steps=0, schedule="cosine", max_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, cos) == pytest.approx(1.0)
    assert learning_rate(5, cos) == pytest.approx(0.55)
    assert learning_rate(10, cos) == pytest.approx(0.1)


def test_token_batches_are_bounded_complete_and_deterministic():
    from nmtkit.data.batching import token_batches

    lengths = [(i * 7919) % 50 + 1 for i in range(500)]
    as_lists = lambda batches: [b.tolist() for b in batches]  # noqa: E731
    a = as_lists(token_batches(lengths, 200, shuffle=True, seed=3, epoch=1))
    assert sorted(i for b in a for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in a)
    assert a == as_lists(token_batches(lengths, 200, shuffle=True, seed=3, epoch=1))
    assert a != as_lists(token_batches(lengths, 200, shuffle=True, seed=3, epoch=2))


def test_ddp_on_two_cpu_processes_matches_one_process(tiny, tmp_path):
    """Two gloo processes with one micro-batch each = one process accumulating the same two micro-batches."""
    common = ["--src", tiny["src"], "--tgt", tiny["tgt"], "--arch", "transformer", "--tokenizer-type", "unigram",
              "--vocab-size", "150", "--d-model", "32", "--heads", "2", "--layers", "1", "--ff-dim", "64",
              "--dropout", "0", "--max-tokens", "150", "--max-steps", "6", "--eval-every", "100", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    single = subprocess.run([sys.executable, "-m", "nmtkit", "train-translator", *map(str, common), "--accumulate", "2",
                             "-o", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
                             "-m", "nmtkit", "train-translator", *map(str, common), "--accumulate", "1",
                             "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert double.returncode == 0, double.stderr[-3000:]
    from nmtkit.checkpoint import load_weights

    a, b = load_weights(tmp_path / "one" / "model.safetensors"), load_weights(tmp_path / "two" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


# -- the commands ---------------------------------------------------------------------------------------------

runner = CliRunner()


def test_translate_keeps_one_line_per_input_line(runs, tmp_path):
    run_dir = runs["transformer"][1]
    long_line = "I am a student. " * 400
    data = write(tmp_path / "in.txt", b"I am a student.\n\n\xff\xfe broken\n" + long_line.encode() + b"\nWe like tea.")
    result = runner.invoke(app, ["translate", "-m", str(run_dir), "--on-bad-line", "skip", "--beam", "2", str(data)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 5
    assert lines[0] == "저는 학생입니다." and lines[1] == "" and lines[2] == ""
    assert "in.txt:4:" in result.stderr and "truncated" in result.stderr
    assert "skipped 1 line(s) with invalid UTF-8" in result.stderr
    result = runner.invoke(app, ["translate", "-m", str(run_dir), str(data)])
    assert result.exit_code == 1 and "in.txt:3: invalid UTF-8" in result.stderr


def test_translate_stdin_output_file_and_scores(runs, tmp_path):
    run_dir = runs["rnn"][1]
    out = tmp_path / "out.ko"
    result = runner.invoke(app, ["translate", "-m", str(run_dir), "-o", str(out), "--scores"], input="I am a student.\n")
    assert result.exit_code == 0 and result.stdout == ""
    text, score = out.read_text().rstrip("\n").split("\t")
    assert text == "저는 학생입니다." and float(score) < 0
    greedy = runner.invoke(app, ["translate", "-m", str(run_dir), "--beam", "1", "--scores"], input="I am a student.\n")
    assert greedy.stdout.split("\t")[0] == text and float(greedy.stdout.split("\t")[1]) < 0  # a real score


def test_score_agrees_with_sacrebleu(tmp_path):
    import sacrebleu

    hyp = write(tmp_path / "hyp.de", "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    ref = write(tmp_path / "ref.de", "Ein Mann fährt ein Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    result = runner.invoke(app, ["score", "--ref", str(ref), "--input", str(hyp), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    hyps, refs = hyp.read_text().splitlines(), [ref.read_text().splitlines()]
    assert scores["bleu"]["score"] == round(sacrebleu.corpus_bleu(hyps, refs).score, 2)
    assert scores["chrf"]["score"] == round(sacrebleu.corpus_chrf(hyps, refs).score, 2)
    assert scores["ter"]["score"] == round(sacrebleu.corpus_ter(hyps, refs).score, 2)
    assert scores["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    lower = json.loads(runner.invoke(app, ["score", "-r", str(ref), "-i", str(hyp), "--lowercase", "--json",
                                           "--tokenize", "intl", "--metrics", "bleu"]).stdout)
    assert "case:lc" in lower["bleu"]["signature"] and "tok:intl" in lower["bleu"]["signature"]
    plain = runner.invoke(app, ["score", "-r", str(ref)], input=hyp.read_text())
    assert plain.stdout.startswith("BLEU ") and "nrefs:1" in plain.stdout


def test_score_known_answers(tmp_path):
    from nmtkit.evaluation import score

    assert score(["a b c d"], [["a b c d"]], ["bleu"])["bleu"]["score"] == 100.0
    assert score(["x y z w"], [["a b c d"]], ["bleu"])["bleu"]["score"] == 0.0
    assert score([""], [["a b c d"]], ["bleu"])["bleu"]["score"] == 0.0
    two_refs = score(["the cat sat on the mat"], [["the cat sat on a mat"], ["the cat sat on the mat"]], ["bleu"])
    assert two_refs["bleu"]["score"] == 100.0 and "nrefs:2" in two_refs["bleu"]["signature"]


def test_score_mismatched_lines(tmp_path):
    hyp = write(tmp_path / "hyp.txt", "a\nb\n")
    ref = write(tmp_path / "ref.txt", "a\n")
    result = runner.invoke(app, ["score", "--ref", str(ref), "--input", str(hyp)])
    assert result.exit_code == 1
    assert "ref.txt has 1 lines but" in result.stderr and "hyp.txt has 2" in result.stderr


def test_evaluate_records_in_run_folder(runs, tiny):
    run_dir = runs["attention"][1]
    result = runner.invoke(app, ["evaluate", "-m", str(run_dir), "--src", str(tiny["src"]), "--ref", str(tiny["tgt"]), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]
    assert scores["bleu"]["score"] == 100.0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["evaluations"][-1]["scores"]["bleu"]["score"] == 100.0
    assert run["evaluations"][-1]["sha256"]["ref"]


def test_average_and_info(runs, tmp_path):
    run_dir = runs["transformer"][1]
    result = runner.invoke(app, ["average", "-m", str(run_dir), "--last", "3", "-o", str(tmp_path / "avg")])
    assert result.exit_code == 0, result.output
    from nmtkit.checkpoint import load_weights

    steps = sorted((run_dir / "steps").glob("*.safetensors"))[-3:]
    expected = sum(load_weights(s)["out.weight"] for s in steps) / 3
    torch.testing.assert_close(load_weights(tmp_path / "avg" / "model.safetensors")["out.weight"], expected)
    translator = translation.Translator(tmp_path / "avg", "cpu")
    assert translator.arch == "transformer"
    info = json.loads(runner.invoke(app, ["info", str(run_dir), "--json"]).stdout)
    assert info["kind"] == "translator" and info["config"]["arch"] == "transformer"
    assert info["parameters"] == sum(p.numel() for p in translator.model.parameters())


@pytest.mark.parametrize("args, message", [
    (["translate", "-m", "{tmp}/nothing"], "no such run folder"),
    (["train-translator", "--src", "{tmp}/a.en", "-o", "{tmp}/r"], "--src and --tgt go together"),
    (["train-translator", "--src", "{tmp}/a.en", "--tgt", "{tmp}/a.en", "--valid-src", "{tmp}/a.en", "-o", "{tmp}/r"],
     "--valid-src and --valid-tgt go together"),
    (["train-translator", "--corpus", "demo", "-o", "{tmp}/r"], "--corpus needs --src-lang and --tgt-lang"),
    (["train-translator", "--corpus", "demo", "--src-lang", "en", "--tgt-lang", "ja", "-o", "{tmp}/r"], "has no language 'ja'"),
    (["train-translator", "--src", "{tmp}/a.en", "--tgt", "{tmp}/b.de", "-o", "{tmp}/r"], r"b\.de:3: file ends after 2 lines"),
    (["train-translator", "--resume", "-o", "{tmp}/nothing"], "no training data"),  # nothing saved: starts afresh
    (["average", "-m", "{tmp}/nothing"], "no such run folder"),
])
def test_translator_commands_fail_with_one_line(tmp_path, args, message):
    write(tmp_path / "a.en", "one\ntwo\nthree\n")
    write(tmp_path / "b.de", "eins\nzwei\n")
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message.replace("\\", "") in lines[-1].replace("\\", "") or \
        __import__("re").search(message, lines[-1]), result.stderr
    assert "Traceback" not in result.output


def test_hugging_face_dataset_settings_file_teacher_forcing_and_early_stopping(tiny, tmp_path):
    """The data and settings paths of train-translator, with the RNN's teacher-forcing ratio below 1."""
    records = [{"translation": {"en": e, "ko": k}} for e, k in zip(tiny["en"], tiny["ko"])]
    data = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    settings = write(tmp_path / "rnn.toml", 'arch = "rnn"\n[model]\nembed_dim = 16\nhidden_dim = 32\ncell = "lstm"\n'
                                            '[train]\nmax_steps = 400\nteacher_forcing = 0.5\nlr = 0.003\nwarmup_steps = 5\n')
    result = runner.invoke(app, [
        "train-translator", "--dataset", "json", "--data-files", str(data), "--src-lang", "en", "--tgt-lang", "ko",
        "--valid-split", "train", "--settings", str(settings), "--max-tokens", "1000", "--eval-every", "5",
        "--patience", "2", "--lr", "1e-6", "--vocab-size", "150", "--tokenizer-type", "bpe", "-o", str(tmp_path / "run"),
    ])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["arch"] == "rnn" and config["model"]["cell"] == "lstm" and config["model"]["hidden_dim"] == 32
    assert config["train"]["teacher_forcing"] == 0.5 and config["train"]["lr"] == 1e-6  # the flag overrides the file
    evals = [m for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "eval"]
    assert len(evals) == 3 and evals[-1]["step"] == 15  # lr 1e-6 learns nothing: stopped after 2 evaluations without gain
    assert "early stopping" in result.stderr


def test_translate_stops_quietly_when_the_pipe_closes(runs, tmp_path):
    many = write(tmp_path / "many.txt", "I am a student.\n" * 3000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = (f"{sys.executable} -m nmtkit translate -m {runs['transformer'][1]} --beam 1 --batch-size 16 --device cpu "
           f"{many} | head -2")
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], env=env, capture_output=True, text=True)
    assert out.stdout == "저는 학생입니다.\n저는 학생입니다.\n"
    assert "Traceback" not in out.stderr and "Broken pipe" not in out.stderr
    assert out.returncode in (0, 141)


def test_known_corpus_names_work_where_files_do(runs):
    tok = runs["transformer"][1]
    result = runner.invoke(app, ["tokenize", "-t", str(tok), "demo/test.en"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 100
    result = runner.invoke(app, ["score", "--ref", "demo/test.ko", "--input", "demo/test.ko", "--metrics", "bleu"])
    assert result.exit_code == 0 and result.stdout.startswith("BLEU  100.00")


def test_resume_refuses_a_changed_setting_and_names_it(tiny, tmp_path):
    """--resume continues a run as it was started: the same command again goes on; a changed model, training or
    data option is one line naming it; the training limits may change."""
    from test_cli import assert_one_line_error

    run_dir = tmp_path / "run"
    common = ["--src", tiny["src"], "--tgt", tiny["tgt"], "-o", run_dir, "--d-model", "32", "--heads", "2",
              "--layers", "1", "--ff-dim", "64", "--vocab-size", "100", "--tokenizer-type", "char", "--eval-every", "4",
              "--device", "cpu"]
    result = CliRunner().invoke(app, ["train-translator", *map(str, common), "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    for changed, pattern in ((["--d-model", "64"], r"started with d-model 32, not 64"),
                             (["--warmup", "7"], r"started with warmup-steps 1000, not 7"),
                             (["--arch", "rnn"], r"started with arch 'transformer', not 'rnn'"),
                             (["--src", tiny["tgt"], "--tgt", tiny["tgt"]], r"started with src '.*tiny.en', not '.*tiny.ko'")):
        result = CliRunner().invoke(app, ["train-translator", *map(str, ["-o", run_dir, "--resume", *changed])])
        assert_one_line_error(result, pattern)
    result = CliRunner().invoke(app, ["train-translator", *map(str, common), "--max-steps", "8", "--resume"])
    assert result.exit_code == 0, result.output
    run = json.loads((run_dir / "run.json").read_text())
    assert [t["steps"] for t in run["training"]] == [4, 8]
    assert run["training"][-1]["best"] is not None  # the best evaluation survives the resume


def test_a_settings_file_takes_the_flag_names(tiny, tmp_path):
    settings = write(tmp_path / "run.toml", 'arch = "transformer"\n[model]\nd-model = 32\nheads = 2\nlayers = 1\n'
                                            'ff_dim = 64\n[train]\nwarmup = 3\nmax-steps = 2\neval_every = 2\n')
    result = CliRunner().invoke(app, [str(a) for a in ["train-translator", "--src", tiny["src"], "--tgt", tiny["tgt"],
                                                       "--settings", settings, "--vocab-size", "100", "--tokenizer-type",
                                                       "char", "-o", tmp_path / "run", "--device", "cpu"]])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"]["encoder_layers"], config["model"]["decoder_layers"], config["model"]["d_model"]) == (1, 1, 32)
    assert (config["train"]["warmup_steps"], config["train"]["max_steps"]) == (3, 2)


def test_translate_answers_each_line_while_the_pipe_stays_open(runs, tmp_path):
    """A pipeline that feeds a line and waits for its translation gets it before the input ends; so does a killed
    run keep what it wrote (each batch's lines are flushed)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    process = subprocess.Popen([sys.executable, "-m", "nmtkit", "translate", "-m", str(runs["transformer"][1]),
                                "--beam", "2", "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True, encoding="utf-8")
    next_line = line_reader(process.stdout)
    try:
        process.stdin.write("I am a student.\n")
        process.stdin.flush()
        assert next_line(60) == "저는 학생입니다.\n"  # stdin is still open
        process.stdin.write("\nI like tea.\n")
        process.stdin.flush()
        assert next_line(30) == "\n"
        assert next_line(30) is not None
        process.stdin.close()
        assert process.wait(30) == 0 and next_line(1) is None
    finally:
        process.kill()


def test_a_truncated_line_is_named_by_its_file_and_line(runs, tmp_path):
    first = write(tmp_path / "a.txt", "I am a student.\n")
    second = write(tmp_path / "b.txt", "I like tea.\n" + "I am a student. " * 200 + "\n")
    result = CliRunner().invoke(app, ["translate", "-m", str(runs["transformer"][1]), "--beam", "1", "--device", "cpu",
                                      str(first), str(second)])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    said = " ".join(result.stderr.split())
    assert f"{second}:2: " in said and "pieces, truncated to" in said and "line 3" not in said


def test_score_leaves_ter_out_of_its_defaults_on_a_long_line_and_says_why(tmp_path):
    long = " ".join(f"w{i % 50}" for i in range(3000))  # a 20 KB line: TER alone would take minutes
    ref = write(tmp_path / "ref.en", f"a small test\n{long}\n")
    hyp = write(tmp_path / "hyp.en", f"a small test\n{long} extra\n")
    result = CliRunner().invoke(app, ["score", str(ref), "-i", str(hyp), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"bleu", "chrf"}
    assert "TER left out: a line has 3001 words" in " ".join(result.stderr.split())
    short = write(tmp_path / "short.en", "a small test\nanother line\n")
    result = CliRunner().invoke(app, ["score", str(short), "-i", str(short), "--json"])
    assert set(json.loads(result.stdout)) == {"bleu", "chrf", "ter"}  # the defaults as before
