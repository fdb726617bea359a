"""Many students from one cache (issue 13): designs and objectives as configuration, init that says what it copied,
narrower students of wider teachers, exports that load, resume that refuses a changed design, compare-runs."""

import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import ExtractConfig, extract_features, load_teacher
from store import open_cache
from tests.conftest import build_corpus
from train.compare import main as compare_cli
from train.config import ConfigError, TrainConfig
from train.data import CachedCrops, collate
from train.design import PRESETS, DesignError, resolve
from train.loop import train
from train.model import Student, count_parameters, init_from_teacher, student_config, weight_groups

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _quick(cache, out, **kw):
    return TrainConfig(**{"cache": cache, "out": str(out), "steps": 2, "batch_size": 2, "max_crop_samples": 16000, "num_workers": 0,
                          "valid_fraction": 0.25, "progress": False, **kw})


def test_each_presets_parameter_count_is_the_documented_one():
    from transformers import HubertConfig

    documented = {m[0]: (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) for m in
                  re.findall(r"\| `([\w-]+)` \|[^|]*\|[^|]*\| ([\d,]+) \| ([\d,]+) \|", open(os.path.join(ROOT, "docs/cli.md")).read())}
    base = HubertConfig().to_dict()  # HuBERT-base's shape
    for name in PRESETS:
        d = resolve(name, 0, 0, 0, 0, "", base)
        s = Student(student_config(base, 0.1, d), 3, target_dim=768)
        assert (count_parameters(s.encoder), count_parameters(s.heads)) == documented[name], name
    assert documented["distilhubert"] == (23_491_200, 3_543_552)  # REFERENCE.md, the published model


def test_bad_designs_are_one_line():
    base = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    with pytest.raises(DesignError, match="--student-width 30 is not divisible by 4"):
        resolve("distilhubert", 0, 30, 4, 0, "", base)
    with pytest.raises(DesignError, match="--match names student layer 3, but the student has 2"):
        resolve("distilhubert", 0, 0, 0, 0, "1:1,3:2", base)
    with pytest.raises(DesignError, match="--match 1:4,1:8: each student layer"):
        resolve("distilhubert", 0, 0, 0, 0, "1:4,1:8", base)
    with pytest.raises(DesignError, match="--match 1-4"):
        resolve("distilhubert", 0, 0, 0, 0, "1-4", base)
    with pytest.raises(ConfigError, match="--layers says 1,3"):
        TrainConfig(cache="x", match="1:1,2:2", layers=(1, 3))


@pytest.fixture(scope="module")
def plain_teacher(tmp_path_factory):
    """A tiny teacher a student can copy whole: the student has no LayerNorm before its feature projection."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    d = str(tmp_path_factory.mktemp("plain"))
    torch.manual_seed(1)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_proj_layer_norm=False)
    HubertModel(cfg).save_pretrained(d)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(d)
    root = tmp_path_factory.mktemp("plain-cache")
    s = extract_features(ExtractConfig(d, build_corpus(str(root / "c"), n=6, seed=5), layers=(1, 2, 3), cache_dir=str(root / "k"),
                                       storage_dtype="float32", progress=False))
    return {"teacher": d, "cache": s.path}


def test_layer_to_layer_targets_line_up_frame_for_frame(plain_teacher):
    """A 3-layer student copied from the teacher, with identity projections: its prediction for each matched pair is
    the cached teacher layer, frame for frame, in the targets' order, whatever order --match lists them in."""
    cache = open_cache(plain_teacher["cache"])
    teacher = load_teacher(plain_teacher["teacher"], device="cpu")
    d = resolve("distilhubert", 3, 0, 0, 0, "3:3,1:1,2:2", teacher.config.to_dict())
    student = Student(student_config(teacher.config.to_dict(), 0.0, d), 3, target_dim=32, match=d.match).eval()
    copied, fresh, _ = init_from_teacher(student, teacher.model)
    assert fresh == [] and copied[-1] == "layer 3"
    for p in student.heads.proj:
        torch.nn.init.eye_(p.weight)
        torch.nn.init.zeros_(p.bias)
    crops = CachedCrops(cache, cache.utterance_ids, [1, 2, 3], 48000, 0, random_crop=False)  # whole utterances, as the teacher heard them
    batch = collate([crops[(0, i)] for i in range(4)])
    with torch.no_grad():
        pred = student(batch["wave"], batch["lengths"])
    for b, n in enumerate(batch["frames"].tolist()):
        assert np.abs(pred[b, :, :n].numpy() - batch["targets"][b, :, :n].numpy()).max() < 1e-4
    swapped = resolve("distilhubert", 3, 0, 0, 0, "1:2,2:1,3:3", teacher.config.to_dict())
    wrong = Student(student_config(teacher.config.to_dict(), 0.0, swapped), 3, target_dim=32, match=swapped.match).eval()
    init_from_teacher(wrong, teacher.model)
    wrong.heads.load_state_dict(student.heads.state_dict())
    with torch.no_grad():
        assert (wrong(batch["wave"], batch["lengths"])[:, :2] - batch["targets"][:, :2]).abs().max() > 1e-2  # a swap shows


def test_init_copies_exactly_the_parts_it_names_and_says_so(cached, capsys):
    teacher = load_teacher(cached["teacher"], device="cpu")
    t = teacher.model.state_dict()
    same = Student(student_config(teacher.config.to_dict()), 2)
    assert init_from_teacher(same, teacher.model) == (["CNN", "feature projection", "positional conv", "layer 1", "layer 2"], [], {})
    narrow = Student(student_config(teacher.config.to_dict(), 0.1, resolve("distilhubert", 0, 16, 0, 0, "", teacher.config.to_dict())), 2)
    before = {k: v.clone() for k, v in narrow.encoder.state_dict().items()}
    copied, fresh, why = init_from_teacher(narrow, teacher.model)
    assert set(why) == set(fresh)
    assert copied == ["CNN"] and fresh == ["feature projection", "positional conv", "layer 1", "layer 2"]
    groups, s = weight_groups(narrow.encoder), narrow.encoder.state_dict()
    assert all(torch.equal(s[n], t[n]) for n in groups["CNN"])
    assert all(torch.equal(s[n], before[n]) for g in fresh for n in groups[g])  # random parts untouched, never half-copied
    assert "encoder.layer_norm.weight" not in sum(groups.values(), [])  # REFERENCE.md: not copied
    run = train(_quick(cached["path"], cached["root"] / "narrow", student_width=16))
    err = capsys.readouterr().err
    assert "student 2 x 16 (heads): copied from the teacher: CNN; random: feature projection, positional conv, layers 1-2 " \
           "(shapes differ from the teacher's)" in err
    design = json.load(open(cached["root"] / "narrow/design.json"))
    assert design["init"] == {"copied": ["CNN"], "random": fresh, "why_random": why} and design["width"] == 16 and run["student"]


DESIGNS = [({"preset": p}, (1, 3)) for p in PRESETS] + [({"match": "1:1,2:3"}, (1, 3)), ({"preset": "small", "match": "2:3"}, (3,))]


@pytest.mark.parametrize(("design", "layers"), DESIGNS, ids=[*PRESETS, "match", "small-match"])
def test_every_design_trains_and_exports_a_student_transformers_loads(cached, design, layers, tmp_path):
    from transformers import HubertModel

    run = train(_quick(cached["path"], tmp_path / "run", **design))
    student = HubertModel.from_pretrained(run["student"])
    d = json.load(open(tmp_path / "run/design.json"))
    assert student.config.num_hidden_layers == d["layers"] and student.config.hidden_size == d["width"]
    assert d["target_layers"] == list(layers) and count_parameters(student) == d["parameters"]
    heads = json.load(open(tmp_path / "run/heads.json"))
    assert heads["objective"] == ("layer-to-layer" if "match" in design else "heads")


def test_a_1024_wide_teachers_cache_trains_a_768_wide_student(tmp_path):
    """wav2vec2-large / WavLM-large are 1024 wide: a tiny teacher of that width (2 layers, small CNN) stands in."""
    from safetensors.torch import load_file
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    wide = str(tmp_path / "wide")
    HubertModel(HubertConfig(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=128, conv_dim=(32,) * 7,
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16)).save_pretrained(wide)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(wide)
    s = extract_features(ExtractConfig(wide, build_corpus(str(tmp_path / "c"), n=6), layers=(1, 2), cache_dir=str(tmp_path / "k"),
                                       progress=False))
    run = train(_quick(s.path, tmp_path / "run", student_width=768))
    heads = load_file(str(tmp_path / "run/heads.safetensors"))
    assert heads["heads.0.weight"].shape == (1024, 768)  # predicts the teacher's 1024-wide layers from a 768-wide student
    design = json.load(open(tmp_path / "run/design.json"))
    assert (design["width"], design["heads"], design["ffn"], design["teacher_width"]) == (768, 12, 3072, 1024)
    assert run["eval"]["loss"] > 0 and os.path.isdir(run["student"])


def test_init_copies_only_parts_that_compute_the_teachers_function(tmp_path, capsys):
    """A layer-norm, pre-LN teacher has parts of the student's shapes that compute something else (the student's CNN
    output differed by up to 2.58): they stay random, and the init line says why. Copied parts compute the teacher's."""
    from tests.conftest import build_tiny_teacher

    teacher = load_teacher(build_tiny_teacher(str(tmp_path / "ln"), norm="layer"), device="cpu")
    student = Student(student_config(teacher.config.to_dict()), 2).eval()
    copied, fresh, why = init_from_teacher(student, teacher.model)
    assert "CNN" in fresh and "layer 1" in fresh and "computes something else" in why["CNN"], (copied, why)
    x = 0.1 * torch.randn(1, 4000)
    with torch.no_grad():
        assert not torch.allclose(student.encoder.feature_extractor(x), teacher.model.feature_extractor(x), atol=1e-3)
    plain = load_teacher(build_tiny_teacher(str(tmp_path / "gn")), device="cpu")
    same = Student(student_config(plain.config.to_dict()), 2).eval()
    assert init_from_teacher(same, plain.model)[1] == []
    with torch.no_grad():
        assert torch.allclose(same.encoder.feature_extractor(x), plain.model.feature_extractor(x), atol=1e-6)
    from train.model import describe_random

    assert "CNN" in describe_random(fresh, why) and "computes something else" in describe_random(fresh, why)


@pytest.mark.parametrize("design", [{"preset": p} for p in PRESETS] + [{"student_layers": 3}, {"preset": "small", "match": "1:1,2:3"}])
def test_every_design_resumes_to_the_same_weights(cached, tmp_path, design):
    """Fresh and resumed students come from one builder (train.model.build_student): any depth resumes."""
    import torch

    train(_quick(cached["path"], tmp_path / "full", steps=3, **design))
    train(_quick(cached["path"], tmp_path / "split", steps=3, stop_after=1, **design))
    train(_quick(cached["path"], tmp_path / "split", steps=3, resume=True, **design))
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_design(cached, tmp_path):
    train(_quick(cached["path"], tmp_path / "run", stop_after=1))
    with pytest.raises(ConfigError, match="student_width"):
        train(_quick(cached["path"], tmp_path / "run", resume=True, student_width=16))
    with pytest.raises(ConfigError, match="match"):
        train(_quick(cached["path"], tmp_path / "run", resume=True, match="1:1,2:3"))


def test_compare_runs_prints_designs_side_by_side_and_draws_one_plot(cached, tmp_path):
    for name, kw in (("a", {}), ("b", {"preset": "small", "match": "1:1,2:3"})):
        train(_quick(cached["path"], tmp_path / name, **kw))
    r = CliRunner().invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "cmp.png")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert "L1 / cos layer 1" in lines[0] and "L1 / cos layer 3" in lines[0]
    assert "distilhubert: 2 x 32, 2 heads, FFN 64, heads" in lines[2] and "small: 2 x 384, 6 heads, FFN 1536, match 1:1,2:3" in lines[3]
    assert os.path.getsize(tmp_path / "cmp.png") > 1000
    bad = CliRunner().invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path)])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "no design.json" in bad.stderr
