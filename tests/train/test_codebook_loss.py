"""--loss codebook-ce: cross-entropy over a codebook cache's codes, held-out loss on the vectors the logits expect."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store.convert import convert_cache
from train.codebook_loss import code_predictor, codebook_ce
from train.data import CachedCrops, collate
from train.decode import DeviceDecoder


@pytest.fixture(scope="module")
def coded(cached, tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    src = extract_features(ExtractConfig(cached["teacher"], cached["corpus"], layers=(1, 3), cache_dir=str(root / "k"),
                                         storage_dtype="float32", progress=False))
    return {"float": src.path, **{mode: convert_cache(src.path, mode).path for mode in ("rvq8", "pq")}}


@pytest.mark.parametrize("mode", ["rvq8", "pq"])
def test_certain_logits_expect_what_the_decoder_decodes(coded, mode):
    """Logits certain of the stored codes expect exactly the decoded targets (rvq sums its books, pq concatenates);
    certain of other codes, they expect something else (the check could fail)."""
    from store import open_cache

    cache = open_cache(coded[mode])
    batch = collate([CachedCrops(cache, cache.utterance_ids, [1, 3], max_samples=12000, seed=0)[(0, i)] for i in range(3)])
    codes = batch["codes"]
    decoded = DeviceDecoder(cache, [1, 3], torch.device("cpu"))(codes, None)
    predictor = code_predictor(cache, [1, 3], cache.spec["dim"])
    certain = 1e4 * torch.nn.functional.one_hot(codes.long(), 256).float()
    torch.testing.assert_close(predictor.expected(certain), decoded, rtol=1e-4, atol=1e-4)
    wrong = 1e4 * torch.nn.functional.one_hot((codes.long() + 1) % 256, 256).float()
    assert (predictor.expected(wrong) - decoded).abs().max() > 1e-2


def test_cross_entropy_counts_real_frames_only():
    codes = torch.randint(0, 256, (2, 3, 5, 8))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    right = 50 * torch.nn.functional.one_hot(codes, 256).float()
    loss, per_layer = codebook_ce(right, codes, mask)
    assert loss.item() < 1e-6 and per_layer.shape == (3,)
    garbage = right.clone()
    garbage[0, :, 3:] = torch.randn(3, 2, 8, 256)  # padded frames of row 0: not counted
    assert codebook_ce(garbage, codes, mask)[0].item() < 1e-6
    uniform, _ = codebook_ce(torch.zeros(2, 3, 5, 8, 256), codes, mask)
    assert uniform.item() == pytest.approx(np.log(256), rel=1e-5)


def run_args(cache: str, out, *extra: str) -> list[str]:
    return ["--cache", cache, "--out", str(out), "--batch-size", "4", "--max-crop-samples", "8000", "--num-workers", "0",
            "--valid-fraction", "0.25", "--log-interval", "1", "--lr", "2e-3", "--seed", "0", "--quiet", *extra]


def test_a_student_learns_the_codes_and_resumes(coded, tmp_path):
    from train.cli import main

    out = tmp_path / "ce"
    r = CliRunner().invoke(main, run_args(coded["rvq8"], out, "--loss", "codebook-ce", "--steps", "40", "--stop-after", "20"))
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, run_args(coded["rvq8"], out, "--loss", "codebook-ce", "--steps", "40", "--resume"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [row for row in rows if "lr" in row]
    assert [row["step"] for row in steps] == list(range(1, 41))
    first, last = np.mean([s["loss"] for s in steps[:5]]), np.mean([s["loss"] for s in steps[-5:]])
    assert first > 0.8 * np.log(256) and last < first - 0.25, (first, last)  # cross-entropy over 256 codes, learned
    judged = json.load(open(out / "eval.json"))
    assert 0 < judged["loss"] < 10 and (out / "student" / "model.safetensors").exists()  # L1 + cos on expected vectors
    r = CliRunner().invoke(main, run_args(coded["rvq8"], out, "--steps", "50", "--resume"))
    assert r.exit_code != 0 and "loss: checkpoint has 'codebook-ce'" in r.output


@pytest.mark.parametrize("which, said", [("float", "stores its targets as float32, not as codes"),
                                         (None, "--loss codebook-ce predicts a cache's codes: give --cache")])
def test_codes_without_a_codebook_cache_is_one_line(coded, cached, tmp_path, which, said):
    from train.cli import main

    args = run_args(coded[which], tmp_path / "x", "--steps", "2", "--loss", "codebook-ce") if which else \
        ["--teacher", cached["teacher"], "--corpus", cached["corpus"], "--out", str(tmp_path / "y"), "--loss", "codebook-ce"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and said in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
