"""Issue 20: training as parts you can see. Each target source, each recipe and compare-runs' new columns, partial runs
and refusals are tested on their own; the loop itself is tested end to end by the rest of tests/train."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import load_teacher
from store import CacheError, open_cache
from store.oneline import UserError
from train.checkpoint import CheckpointError
from train.compare import main as compare_cli
from train.config import ConfigError, TrainConfig
from train.data import CachedCrops, collate
from train.design import DesignError
from train.loop import train
from train.recipe import RECIPES, warmup_then_linear
from train.targets import SOURCES, make_source


def _quick(cached, out, **kw):
    return TrainConfig(**{"cache": cached["path"], "out": str(out), "steps": 4, "batch_size": 2, "max_crop_samples": 16000,
                          "num_workers": 0, "valid_fraction": 0.25, "eval_interval": 2, "log_interval": 1, "progress": False, **kw})


def _batch(cached, n=3, max_samples=16000):
    cache = open_cache(cached["path"])
    ds = CachedCrops(cache, cache.utterance_ids[:n], [1, 3], max_samples=max_samples, seed=0, random_crop=False)
    return collate([ds[(0, i)] for i in range(n)])


def test_every_source_is_registered_by_name_and_an_unknown_one_is_refused():
    assert set(SOURCES) == {"cache", "teacher", "s3prl-teacher"}
    assert all(SOURCES[name].name == name for name in SOURCES)
    with pytest.raises(ValueError, match="choose from cache, teacher, s3prl-teacher"):
        make_source("nope")


def test_the_cache_source_gives_what_the_loader_shipped(cached):
    batch = _batch(cached)
    t = make_source("cache", device=torch.device("cpu")).targets(batch)
    assert torch.equal(t.values, batch["targets"]) and torch.equal(t.frames, batch["frames"])
    assert torch.equal(t.counted_from, batch["lengths"])


def test_the_teacher_source_agrees_with_the_cache_on_whole_utterances(cached):
    batch = _batch(cached, max_samples=10**6)  # whole utterances: a crop's context differs from the cached full-utterance one
    teacher = load_teacher(cached["teacher"], device="cpu")
    t = make_source("teacher", device=torch.device("cpu"), teacher=teacher, layers=[1, 3]).targets(batch)
    assert torch.equal(t.frames, batch["frames"])
    mask = torch.arange(t.values.shape[2])[None, :] < t.frames[:, None]
    assert float((t.values - batch["targets"]).abs()[mask[:, None, :, None].expand_as(t.values)].max()) <= 1e-4


def test_the_s3prl_source_counts_every_padded_frame(cached):
    batch = _batch(cached)
    teacher = load_teacher(cached["teacher"], device="cpu")
    num_frames = teacher.num_frames
    t = make_source("s3prl-teacher", device=torch.device("cpu"), teacher=teacher, layers=[1, 3],
                    num_frames=lambda n: torch.as_tensor([num_frames(int(x)) for x in n])).targets(batch)
    padded = batch["wave"].shape[1]
    assert torch.equal(t.counted_from, torch.full_like(batch["lengths"], padded))
    assert (t.frames == num_frames(padded)).all() and t.values.shape[2] == num_frames(padded)


def test_recipes_are_data_with_their_own_optimizer_schedule_and_batches(cached):
    cfg = TrainConfig(cache="x", steps=100, warmup_fraction=0.1, lr=1e-3, batch_size=2)
    assert set(RECIPES) == {"distilcache", "s3prl"}
    assert RECIPES["distilcache"].precision("auto", torch.device("cuda")) == "bf16"
    assert RECIPES["s3prl"].precision("auto", torch.device("cuda")) == "fp16"
    assert all(r.precision("auto", torch.device("cpu")) == "fp32" for r in RECIPES.values())
    lrs = [warmup_then_linear(cfg, s) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4) and lrs[-1] < lrs[50] < lrs[10]
    from extract.corpus import scan
    from train.data import CorpusCrops

    model = torch.nn.Linear(4, 4)
    cache = open_cache(cached["path"])
    _, utts, _ = scan(cached["corpus"], 16000)
    datasets = {"distilcache": CachedCrops(cache, cache.utterance_ids, [1, 3], max_samples=16000, seed=0),
                "s3prl": CorpusCrops(utts, 16000, 320, 400, max_samples=16000, seed=0)}  # s3prl's recipe is online only
    for recipe in RECIPES.values():
        data = datasets[recipe.name]
        opt = recipe.optimizer(model, cfg)
        assert isinstance(opt, torch.optim.Optimizer) and recipe.lr_at(opt, cfg, 0) > 0
        first = next(iter(recipe.batches(data, cfg, 0, 1)))
        assert 1 <= len(first) <= cfg.batch_size


def test_user_errors_are_not_all_cache_errors():
    for cls in (ConfigError, DesignError, CheckpointError):
        assert issubclass(cls, UserError) and not issubclass(cls, CacheError)
    assert issubclass(CacheError, UserError)


def test_the_run_dir_says_what_it_holds_and_loss_png_has_the_held_out_points(cached, tmp_path):
    train(_quick(cached, tmp_path / "r"))
    record = json.load(open(tmp_path / "r" / "run.json"))
    assert record["cache"]["fingerprint"] == open_cache(cached["path"]).fingerprint and record["cache"]["storage"] == "float32"
    assert record["held_out"]["utterances"] > 0 and len(record["held_out"]["ids_sha256"]) == 16
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["eval"]["step"] for r in rows if "eval" in r] == [2, 4]  # the final evaluation is in the curve too
    assert os.path.getsize(tmp_path / "r" / "loss.png") > 1000


def test_compare_runs_shows_teacher_targets_steps_and_partial_runs_and_refuses_mismatches_with_strict(cached, tmp_path):
    train(_quick(cached, tmp_path / "a"))
    train(_quick(cached, tmp_path / "b", steps=6, stop_after=4, eval_interval=2))  # stopped: eval.json of step 4, not 6
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line the run is still writing
    runner = CliRunner()
    r = runner.invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    head, _, a, b = r.stdout.strip().splitlines()
    assert all(col in head for col in ("teacher", "targets", "steps", "held-out loss"))
    assert "float32" in a and "| 4 |" in a and "4 (unfinished, partial)" in b
    assert os.path.getsize(tmp_path / "p.png") > 1000
    j = runner.invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    assert j.exit_code == 0 and json.loads(j.stdout)["plot"] is None and not os.path.exists("compare-runs.png")
    train(_quick(cached, tmp_path / "c", layers=(3,), valid_fraction=0.5))  # other layers, another held-out set
    warned = runner.invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "c"), "--plot", str(tmp_path / "q.png")])
    assert warned.exit_code == 0 and "warning: the runs used different target layers ([1, 3], [3])" in warned.stderr
    assert "different held-out sets" in warned.stderr
    strict = runner.invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "c"), "--strict"])
    assert strict.exit_code == 2 and strict.stderr.count("\n") == 1 and "--strict" in strict.stderr
    np.testing.assert_equal(json.loads(j.stdout)["runs"][1]["status"], "unfinished")


@pytest.mark.parametrize("design", [{}, {"preset": "small", "match": "1:1,2:3"}])
def test_an_exported_student_loads_back_through_the_one_builder(cached, tmp_path, design):
    from train.design import resolve
    from train.export.student import load_student
    from train.model import build_student

    train(_quick(cached, tmp_path / "r", **design))
    loaded = load_student(str(tmp_path / "r"))
    ckpt = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)
    teacher_config = open_cache(cached["path"]).spec["teacher"]["config"]
    d = resolve(design.get("preset", "distilhubert"), 0, 0, 0, 0, design.get("match", ""), teacher_config)
    trained = build_student(d, teacher_config, 2, saved_config=ckpt["student_config"])
    trained.load_state_dict(ckpt["model"])
    wave, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        assert torch.equal(loaded(wave, lengths), trained.eval()(wave, lengths))
    assert loaded.target_layers == [1, 3]
    os.remove(tmp_path / "r" / "heads.safetensors")
    with pytest.raises(CheckpointError, match="not a loadable distilcache export"):
        load_student(str(tmp_path / "r"))


def test_compare_runs_reads_a_hostile_config_json_without_a_traceback(cached, tmp_path):
    """config.json (whose `steps` tells a --stop-after run from a finished one) is read back from disk: untrusted."""
    train(_quick(cached, tmp_path / "a"))
    for garbage in ("[1, 2]", '{"steps": "six"}'):
        (tmp_path / "a" / "config.json").write_text(garbage)
        r = CliRunner().invoke(compare_cli, [str(tmp_path / "a"), "--json"])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
