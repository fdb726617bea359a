"""Issue 21: probes from caches. A synthetic task with a known answer (the label is the tone's pitch): the teacher's
probe beats chance by a wide margin, with shuffled labels it is at chance; CTC over a tiny vocabulary lowers its error;
layer weights sum to 1; every bad input is one line."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store.oneline import UserError
from train.probe.cli import main as probe_cli
from train.probe.features import ProbeConfig, ProbeError, probe_features

PITCH = {"low": 180.0, "mid": 420.0, "high": 900.0}


def _tone(freq: float, seconds: float, rng) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * rng.standard_normal()) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def tones(tmp_path_factory, tiny_teacher):
    """60 one-tone utterances (label: pitch class) and 40 utterances of 2-4 tones (transcript: their classes), cached
    with every layer of the tiny teacher (--layers all)."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    labels, text = [], []
    (root / "c" / "kws").mkdir(parents=True)
    (root / "c" / "asr").mkdir(parents=True)
    for i in range(60):
        name = list(PITCH)[i % 3]
        sf.write(root / "c" / "kws" / f"u{i:02d}.wav", _tone(PITCH[name], rng.uniform(0.5, 0.9), rng), 16000, subtype="PCM_16")
        labels.append(f"kws/u{i:02d}\t{name}")
    for i in range(40):
        names = [list(PITCH)[j] for j in rng.integers(0, 3, rng.integers(2, 5))]
        sf.write(root / "c" / "asr" / f"s{i:02d}.wav", np.concatenate([_tone(PITCH[n], 0.3, rng) for n in names]), 16000,
                 subtype="PCM_16")
        text.append(f"asr/s{i:02d} {' '.join(n[0] for n in names)}")  # Kaldi text: one symbol per tone
    (root / "labels.tsv").write_text("\n".join(labels) + "\n")
    (root / "text").write_text("\n".join(text) + "\n")
    s = extract_features(ExtractConfig(tiny_teacher, str(root / "c"), layers="all", cache_dir=str(root / "k"), storage_dtype="float32",
                                       progress=False))
    return {"root": root, "cache": s.path}


def _cfg(tones, out, **kw):
    return ProbeConfig(**{"cache": tones["cache"], "task": "classify", "labels": str(tones["root"] / "labels.tsv"),
                          "out": str(out), "test_fraction": 0.3, "epochs": 60, **kw})


def test_layers_all_caches_every_hidden_layer(tones):
    from store import open_cache

    assert open_cache(tones["cache"]).layers == [0, 1, 2, 3]


def test_the_teachers_probe_beats_chance_and_shuffled_labels_do_not(tones, tmp_path, capsys):
    result = probe_features(_cfg(tones, tmp_path / "real"))
    assert result["metric"] == "accuracy" and result["value"] >= result["chance"] + 0.4, result
    assert result["ci95"][0] <= result["value"] <= result["ci95"][1]
    assert abs(sum(result["layer_weights"]) - 1) < 1e-6 and len(result["layer_weights"]) == 4
    assert "in the cache without a label" in capsys.readouterr().err  # the 40 asr utterances: said, not silently dropped
    lines = (tones["root"] / "labels.tsv").read_text().splitlines()
    rng = np.random.default_rng(1)
    shuffled = [f"{a.split(chr(9))[0]}\t{b.split(chr(9))[1]}" for a, b in zip(lines, rng.permutation(lines), strict=True)]
    (tmp_path / "shuffled.tsv").write_text("\n".join(shuffled) + "\n")
    chance = probe_features(_cfg(tones, tmp_path / "shuffled", labels=str(tmp_path / "shuffled.tsv")))
    assert chance["value"] <= chance["chance"] + 0.2 < result["value"], (chance, result)
    saved = json.load(open(tmp_path / "real" / "result.json"))
    assert saved["split"]["kind"] == "hash by recording"
    assert saved["split"]["test"] + saved["split"]["dev"] + saved["split"]["train"] == 60 and saved["split"]["dev"] >= 1
    assert saved["upstream"]["parameters"] > 0 and os.path.getsize(tmp_path / "real" / "layers.png") > 1000


def test_ctc_over_a_tiny_vocabulary_lowers_its_error(tones, tmp_path):
    kw = dict(task="ctc", labels=str(tones["root"] / "text"), tokens="phone", test_fraction=0.25, dev_fraction=0.25, patience=80,
              lr=2e-2)
    early = probe_features(_cfg(tones, tmp_path / "early", epochs=1, **kw))
    late = probe_features(_cfg(tones, tmp_path / "late", epochs=80, **kw))
    assert early["metric"] == late["metric"] == "PER" and late["vocabulary"] == ["h", "l", "m"]
    # on dev, the split that chose the epoch (the tiny test split of 9 utterances of a random teacher is too noisy to judge)
    assert late["by_split"]["dev"] < early["by_split"]["dev"] - 0.2, (early["by_split"], late["by_split"])


def test_one_layer_gets_weight_one(tones, tmp_path):
    result = probe_features(_cfg(tones, tmp_path / "one", layers=(2,), epochs=5))
    assert result["layer_weights"] == [1.0]


def test_bad_probe_input_is_one_line(tones, tmp_path):
    root = tones["root"]
    (root / "one-class.tsv").write_text("".join(f"kws/u{i:02d}\tlow\n" for i in range(0, 60, 3)))
    (root / "ids-a").write_text("kws/u00\nkws/u01\nkws/u02\n")
    (root / "ids-b").write_text("kws/u02\nkws/u03\n")
    (root / "strangers.tsv").write_text("nobody\tlow\n")
    (root / "bad-line.tsv").write_text("kws/u00\tlow\nkws/u01\t\n")
    cases = [
        (["--labels", str(root / "one-class.tsv")], "a classifier needs at least two"),
        (["--layers", "7"], "the cache has 0,1,2,3"),
        (["--train-ids", str(root / "ids-a"), "--test-ids", str(root / "ids-b")], "must not overlap training"),
        (["--labels", str(root / "strangers.tsv")], "none of its 1 ids is an utterance"),
        (["--labels", str(root / "bad-line.tsv")], "line 2"),
        (["--labels", str(root / "missing.tsv")], "no such file"),
        (["--task", "ctc", "--labels", str(root / "text"), "--tokens", "phone", "--train-ids", str(root / "ids-a"), "--test-ids",
          str(root / "ids-b")], "none of its 3 ids is a labelled utterance"),
    ]
    for extra, says in cases:
        args = ["--cache", tones["cache"], "--task", "classify", "--labels", str(root / "labels.tsv"), "--out", str(tmp_path / "x"),
                "--epochs", "1", *extra]
        r = CliRunner().invoke(probe_cli, args)
        assert r.exit_code == 2 and "Traceback" not in r.output and says in r.output, (extra, r.output)
        assert [line for line in r.output.splitlines() if line.startswith("error:")], r.output


def test_a_test_symbol_never_seen_in_training_is_refused(tones, tmp_path):
    root = tones["root"]
    lines = (root / "text").read_text().splitlines()
    ids = [line.split()[0] for line in lines]
    (root / "text-odd").write_text("\n".join(lines[:-1] + [f"{ids[-1]} z"]) + "\n")
    (root / "train-ids").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test-ids").write_text(ids[-1] + "\n")
    with pytest.raises(ProbeError, match="symbol 'z'"):
        probe_features(_cfg(tones, tmp_path / "z", task="ctc", tokens="phone", labels=str(root / "text-odd"),
                            train_ids=str(root / "train-ids"), test_ids=str(root / "test-ids")))


def test_compare_runs_puts_probes_side_by_side_and_refuses_mixed_tasks(tones, tmp_path):
    from train.compare import main as compare_cli

    probe_features(_cfg(tones, tmp_path / "a", epochs=5))
    probe_features(_cfg(tones, tmp_path / "b", epochs=5, layers=(3,)))
    probe_features(_cfg(tones, tmp_path / "c", epochs=2, task="ctc", labels=str(tones["root"] / "text"), tokens="phone"))
    r = CliRunner().invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    head, _, a, b = r.stdout.strip().splitlines()[:4]  # then the paired comparison
    assert "paired with" in r.stdout and "upstream" in head and "params" in head and "metric ± 95% interval" in head
    assert "classify" in a and "accuracy" in a and "M |" in a and "float32" in b
    mixed = CliRunner().invoke(compare_cli, [str(tmp_path / "a"), str(tmp_path / "c")])
    assert mixed.exit_code == 2 and "different tasks" in mixed.output


def test_splits_come_from_id_files_kaldi_dirs_or_lhotse_manifests(tones, tmp_path):
    ids = [f"kws/u{i:02d}" for i in range(60)]
    kaldi = tmp_path / "train"
    kaldi.mkdir()
    (kaldi / "utt2spk").write_text("".join(f"{u} s\n" for u in ids[:45]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"id": u, "start": 0}) + "\n" for u in ids[45:]))
    result = probe_features(_cfg(tones, tmp_path / "p", train_ids=str(kaldi), test_ids=str(tmp_path / "test.jsonl"), epochs=5))
    assert (result["split"]["kind"], result["split"]["train"] + result["split"]["dev"], result["split"]["test"]) == ("user", 45, 15)
    (tmp_path / "dev").write_text("\n".join(ids[40:45]) + "\n")
    result = probe_features(_cfg(tones, tmp_path / "q", train_ids=str(kaldi), test_ids=str(tmp_path / "test.jsonl"),
                                 dev_ids=str(tmp_path / "dev"), epochs=5))
    assert (result["split"]["train"], result["split"]["dev"], result["split"]["test"]) == (40, 5, 15)


def test_the_log_mel_baseline_needs_no_upstream(tones, tmp_path):
    result = probe_features(_cfg(tones, tmp_path / "mel", features="logmel", epochs=20))
    assert result["upstream"]["parameters"] == 0 and result["layer_weights"] == [1.0]
    assert result["value"] > result["chance"] + 0.3  # pitch classes are in the spectrum


def test_result_json_names_the_metric_and_the_cli_prints_it_with_json(tones, tmp_path):
    r = CliRunner().invoke(probe_cli, ["--cache", tones["cache"], "--task", "classify", "--labels", str(tones["root"] / "labels.tsv"),
                                       "--out", str(tmp_path / "c"), "--epochs", "3", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout.strip().splitlines()[-1])
    assert shown["accuracy"] == shown["value"] and shown["accuracy_ci95"] == shown["ci95"]
    ctc = probe_features(_cfg(tones, tmp_path / "t", task="ctc", labels=str(tones["root"] / "text"), tokens="phone", epochs=1))
    assert ctc["error_rate"] == ctc["value"] and ctc["metric"] == "PER" and len(ctc["error_rate_ci95"]) == 2


@pytest.mark.parametrize("held", [{"ckpt.pt": "x", "metrics.jsonl": '{"step": 1, "loss": 2.0}\n'},
                                  {"metrics.jsonl": '{"step": 1, "loss": 2.0}\n'},
                                  {"result.json": '{"steps": 10}'}, {"notes.txt": "mine"}])
def test_out_that_holds_another_tools_run_is_refused_untouched(tones, tmp_path, held):
    """--out of a training run (or any dir of files a probe does not write) would lose its history: refused before
    any work, every file as it was; a probe's own dir is probed again."""
    run = tmp_path / "run"
    run.mkdir()
    for name, text in held.items():
        (run / name).write_text(text)
    with pytest.raises(ProbeError, match=f"--out {run}: "):
        probe_features(_cfg(tones, run, epochs=1))
    assert {p.name: p.read_text() for p in run.iterdir()} == held
    probe_features(_cfg(tones, tmp_path / "probe", epochs=1))
    assert probe_features(_cfg(tones, tmp_path / "probe", epochs=2))["task"] == "classify"


def test_character_errors_count_leading_and_trailing_spaces():
    """jiwer's default CER transform strips the hypothesis, which hid a probe's spaces at either end (CER biased down)."""
    from train.probe.heads import _edits

    assert _edits(list("ab c"), list(" ab c "), "char") == 2
    assert _edits(list("ab c"), list("ab  c"), "char") == 1
    assert _edits(list("ab c"), list("ab c"), "char") == 0
    assert _edits("a b".split(), "a b c".split(), "word") == 1


def test_the_epoch_is_chosen_on_dev_and_test_is_reported_there(tones, tmp_path):
    """SUPERB's protocol: train/dev/test; the checkpoint is the best dev epoch (error, then loss), test is measured there,
    and training stops once dev has not improved for --patience epochs."""
    result = probe_features(_cfg(tones, tmp_path / "p", epochs=60, patience=5))
    rows = [json.loads(line) for line in open(tmp_path / "p" / "metrics.jsonl")]
    best = min(rows, key=lambda r: (r["dev_error"], r["dev_loss"]))
    assert result["best_epoch"] == best["epoch"] and result["epochs_run"] == len(rows) == rows[-1]["epoch"]
    assert len(rows) == 60 or len(rows) == result["best_epoch"] + 5
    assert 1 - result["dev_accuracy"] == best["dev_error"] and result["test_accuracy"] == result["accuracy"]
    assert set(result["by_split"]) == {"train", "dev", "test"}
    shuffled = tmp_path / "shuffled.tsv"
    rng = np.random.default_rng(1)
    lines = open(tones["root"] / "labels.tsv").read().split("\n")[:-1]
    names = [line.split("\t")[1] for line in lines]
    rng.shuffle(names)
    shuffled.write_text("".join(f"{line.split(chr(9))[0]}\t{n}\n" for line, n in zip(lines, names, strict=True)))
    chance = probe_features(_cfg(tones, tmp_path / "s", labels=str(shuffled), epochs=200, patience=3))
    assert chance["epochs_run"] <= chance["best_epoch"] + 3 < 200  # nothing to learn: stopped early


def test_the_upstream_parameter_count_leaves_out_pretrainings_mask_vector(tones):
    """result.json counted masked_spec_embed (pretraining's mask vector, which a student has not): 23,491,968 for
    DistilHuBERT's 23,491,200."""
    from transformers import HubertConfig, HubertModel

    from store import open_cache
    from train.probe.features import upstream_parameters

    spec = open_cache(tones["cache"]).spec
    model = HubertModel(HubertConfig(**spec["teacher"]["config"]))
    assert hasattr(model, "masked_spec_embed")
    assert upstream_parameters(spec) == sum(p.numel() for p in model.parameters()) - model.masked_spec_embed.numel()


def test_dev_ids_name_their_own_option_and_say_what_they_take_from_training(tones, tmp_path, capsys):
    """A binary --dev-ids file was reported as `--labels FILE: not UTF-8`; dev ids also listed for training were silently
    removed from it (8 -> 6)."""
    ids = [f"kws/u{i:02d}" for i in range(60)]
    (tmp_path / "train").write_text("\n".join(ids[:45]) + "\n")
    (tmp_path / "test").write_text("\n".join(ids[45:]) + "\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00bin")
    with pytest.raises(UserError, match=r"^--dev-ids .*binary: not UTF-8"):
        probe_features(_cfg(tones, tmp_path / "p", train_ids=str(tmp_path / "train"), test_ids=str(tmp_path / "test"),
                            dev_ids=str(tmp_path / "binary"), epochs=1))
    (tmp_path / "dev").write_text("\n".join(ids[40:45]) + "\n")  # also in the training list
    capsys.readouterr()
    result = probe_features(_cfg(tones, tmp_path / "q", train_ids=str(tmp_path / "train"), test_ids=str(tmp_path / "test"),
                                 dev_ids=str(tmp_path / "dev"), epochs=1))
    assert (result["split"]["train"], result["split"]["dev"]) == (40, 5)
    assert "5 of its ids are also in the training split (first: kws/u40); they are used as dev only, leaving 40" in capsys.readouterr().err


def test_seeds_pool_per_clip_and_the_cap_is_said(tones, tmp_path, capsys):
    """Issue 38: one seed per cell hid a 0.1 swing; the chosen epoch was the cap's last without a word."""
    r = probe_features(_cfg(tones, tmp_path / "s", seeds=3, epochs=2, patience=2))
    assert [s["seed"] for s in r["seeds"]] == [0, 1, 2] and len(r["per_clip"]["ids"]) == r["split"]["test"]
    values = [s["value"] for s in r["seeds"]]
    assert r["value_range"] == [min(values), max(values)] and abs(r["value"] - np.mean(values)) < 1e-9  # pooled = mean
    assert r["per_clip"]["totals"] == [3.0] * r["split"]["test"]  # each clip scored once per seed
    assert r["still_improving_at_cap"] and "still improving at the cap (--epochs 2" in capsys.readouterr().err
    rows = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
    assert {row["seed"] for row in rows} == {0, 1, 2}


def test_ctc_chooses_its_epoch_by_dev_loss_unless_told(tones, tmp_path):
    def chosen(**kw):
        r = probe_features(_cfg(tones, tmp_path / str(len(os.listdir(tmp_path))), task="ctc", labels=str(tones["root"] / "text"),
                                tokens="phone", epochs=12, patience=12, **kw))
        rows = [json.loads(line) for line in open(os.path.join(r["config"]["out"], "metrics.jsonl"))]
        return r, rows

    r, rows = chosen()
    assert r["selected_by"] == "dev loss" and r["best_epoch"] == min(rows, key=lambda x: (x["dev_loss"], x["dev_error"]))["epoch"]
    r, rows = chosen(select="error")
    assert r["selected_by"] == "dev error" and r["best_epoch"] == min(rows, key=lambda x: (x["dev_error"], x["dev_loss"]))["epoch"]
    assert probe_features(_cfg(tones, tmp_path / "k", epochs=1))["selected_by"] == "dev error"  # classify: error, as before


def test_compare_runs_pairs_probes_clip_by_clip(tones, tmp_path):
    from train.compare import main as compare_cli

    a = tmp_path / "a"
    probe_features(_cfg(tones, a, epochs=30, seeds=2))
    probe_features(_cfg(tones, tmp_path / "same", epochs=30, seeds=2))  # the same probe again: equal, clip for clip
    probe_features(_cfg(tones, tmp_path / "mel", features="logmel", epochs=30, seeds=2))
    r = CliRunner().invoke(compare_cli, [str(a), str(tmp_path / "same"), str(tmp_path / "mel"), "--json"])
    assert r.exit_code == 0, r.output
    same, mel = json.loads(r.stdout)["paired"]
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["verdict"].startswith("as good as, within ±0.03")
    assert mel["clips"] == same["clips"] and mel["ci95"][0] <= mel["difference"] <= mel["ci95"][1]
    text = CliRunner().invoke(compare_cli, [str(a), str(tmp_path / "mel"), "--margin", "0.5"]).output
    assert "paired with" in text and "within ±0.5" in text or "better" in text or "worse" in text


def test_paired_verdicts_follow_the_interval():
    from train.probe.paired import verdict

    assert verdict("PER", {"ci95": [-0.05, -0.01]}, 0.02) == "better"
    assert verdict("PER", {"ci95": [-0.015, -0.01]}, 0.02) == "better (and within ±0.02)"
    assert verdict("accuracy", {"ci95": [-0.05, -0.01]}, 0.03) == "worse"
    assert verdict("PER", {"ci95": [-0.01, 0.01]}, 0.02) == "as good as, within ±0.02"
    assert verdict("PER", {"ci95": [-0.01, 0.05]}, 0.02).startswith("undecided")


def test_a_ctc_probe_too_big_for_memory_streams_and_scores_the_same(tones, tmp_path, capsys):
    """Issue 38 item 7: every layer of every utterance was kept in memory (~360 GB for a LibriSpeech-100 phone probe)."""
    kw = dict(task="ctc", labels=str(tones["root"] / "text"), tokens="phone", epochs=3, patience=3)
    held = probe_features(_cfg(tones, tmp_path / "held", **kw))
    capsys.readouterr()
    streamed = probe_features(_cfg(tones, tmp_path / "streamed", memory_gb=1e-6, **kw))
    assert "read from the cache for every batch instead" in capsys.readouterr().err
    assert streamed["per_clip"] == held["per_clip"] and streamed["value"] == held["value"]


def test_the_probe_line_says_chance_and_sizes_and_warns_of_small_tests(tones, tmp_path):
    r = CliRunner().invoke(probe_cli, ["--cache", tones["cache"], "--task", "classify", "--labels", str(tones["root"] / "labels.tsv"),
                                       "--out", str(tmp_path / "c"), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert "chance 0." in r.stdout and "train/dev/test " in r.stdout
    assert "the test split holds" in r.stderr and "under 100" in r.stderr


def test_probe_features_shows_its_epochs_unless_quiet(tones, tmp_path, monkeypatch):
    """Issue 35 item 11: a bar per seed over its epochs, with the dev scores, on stderr; --quiet silences it."""
    monkeypatch.setenv("DISTILCACHE_PROGRESS", "1")  # as on a terminal
    args = ["--cache", tones["cache"], "--task", "classify", "--labels", str(tones["root"] / "labels.tsv"), "--epochs", "3"]
    shown = CliRunner().invoke(probe_cli, [*args, "--out", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    assert '{"task"' not in shown.stderr  # a JSON summary on stderr was noise: --json prints result.json on stdout
    assert "probe seed 0:   0%|" in shown.stderr and "dev_error=" in shown.stderr and "epoch/s" in shown.stderr
    quiet = CliRunner().invoke(probe_cli, [*args, "--out", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and "dev_error=" not in quiet.stderr and "epoch/s" not in quiet.stderr
    assert json.load(open(tmp_path / "a" / "result.json"))["value"] == json.load(open(tmp_path / "b" / "result.json"))["value"]


def test_still_improving_means_the_cap_not_the_patience_ended_it():
    """A best epoch of 199 of 200 (the bench's damaged control) was not said: only the very last epoch was."""
    from train.probe.heads import still_improving

    assert still_improving(200, 200, 200, 20) and still_improving(200, 199, 200, 20) and still_improving(200, 181, 200, 20)
    assert not still_improving(200, 180, 200, 20)  # 20 epochs without a better one: the patience would have ended it
    assert not still_improving(71, 51, 200, 20)  # ended by its patience, far from the cap
