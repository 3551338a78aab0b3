"""GPU checks, run on a machine with CUDA: `pytest -m gpu`."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_training_on_cuda_learns_and_decodes_like_cpu(tmp_path):
    from test_translation import ARCH_SETTINGS, FAST
    from nmtkit.data.sources import ParallelSource
    from nmtkit.workflows import translation
    from nmtkit.config import TokenizerConfig

    from conftest import DEMO, write

    en = (DEMO / "train.en").read_text(encoding="utf-8").splitlines()[:24]
    ko = (DEMO / "train.ko").read_text(encoding="utf-8").splitlines()[:24]
    src, tgt = write(tmp_path / "t.en", "\n".join(en) + "\n"), write(tmp_path / "t.ko", "\n".join(ko) + "\n")
    spec = ParallelSource(src=str(src), tgt=str(tgt), src_lang="en", tgt_lang="ko")
    for arch in ARCH_SETTINGS:
        run = tmp_path / arch
        summary = translation.train_translator(
            run_dir=run, arch=arch, train_source=spec, valid_source=spec, model_settings=ARCH_SETTINGS[arch],
            train_settings={**FAST, "max_steps": 300}, tokenizer_cfg=TokenizerConfig(model_type="char", vocab_size=400),
            device="cuda")
        assert summary["best"]["bleu"] > 90, (arch, summary)
        gpu = list(translation.translate(translation.Translator(run, "cuda"), en, beam=1))
        cpu = list(translation.translate(translation.Translator(run, "cpu"), en, beam=1))
        assert sum(a == b for a, b in zip(gpu, cpu)) >= 22, arch  # bf16 vs fp32 may flip a near-tie


def test_incremental_decoding_on_cuda():
    from test_models import VARIANTS, batch, make, step_by_step

    for arch, settings in VARIANTS:
        model = make(arch, settings).cuda()
        src, mask, tgt = (t.cuda() for t in batch())
        torch.testing.assert_close(step_by_step(model, src, mask, tgt), model(src, mask, tgt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["transformer", "rnn", "attention"])
def test_search_on_cuda_gives_what_the_host_side_search_gives(arch):
    from test_fast_path import model_and_sources, reference_beam_search

    from nmtkit import decoding
    from nmtkit.tokenization import BOS_ID, EOS_ID

    model, x, mask = model_and_sources(arch)
    model, x, mask = model.cuda(), x.cuda(), mask.cuda()
    limit = decoding.max_lengths(mask, 1.5, 3, cap=30)
    found = decoding.beam_search(model, x, mask, bos=BOS_ID, eos=EOS_ID, max_len=limit, beam=5, n_best=5)
    expected = reference_beam_search(model, x, mask, max_len=limit, beam=5)
    assert [[(h.tokens, h.score, h.logprob) for h in sent] for sent in found] == expected
