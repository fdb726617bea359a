"""Every step that can take more than a second has a progress bar (issue 22 item 7): shown on a terminal (forced here
with DISTILCACHE_PROGRESS=1), never in logs or pipes, where one-line refusals must stay one line."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import build_corpus

_CMD = ("import sys; from extract.cli import main; from store.cli import main as fc\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n")


def _extract(args: list[str], forced: bool) -> str:
    env = {"DISTILCACHE_PROGRESS": "1"} if forced else {}
    import os

    proc = subprocess.run([sys.executable, "-c", _CMD, *args], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_the_scan_statistics_and_export_show_bars_on_a_terminal_only(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    args = ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3", "--storage", "int8", "--cache-dir", str(tmp_path / "k")]
    assert "reading audio headers" not in _extract([*args[:-1], str(tmp_path / "quiet"), "--quiet"], forced=True)  # --quiet: none
    shown = _extract(args, forced=True)
    for step in ("reading audio headers", "int8 statistics: targets of the sample", "int8 statistics: fitting"):
        assert step in shown, shown
    for f in (tmp_path / "c").rglob("*.wav"):  # changed stat, same bytes: the re-run hashes them, with a bar
        f.touch()
    assert "checking changed source files" in _extract(args, forced=True)
    quiet = _extract([*args[:-2], "--cache-dir", str(tmp_path / "k2")], forced=False)
    assert "reading audio headers" not in quiet and "statistics: fitting" not in quiet  # no terminal: no bars


def test_hdf5_export_and_import_show_bars(tmp_path, small_cache, monkeypatch, capfd):
    from store.hdf5 import export_hdf5, import_hdf5

    monkeypatch.setenv("DISTILCACHE_PROGRESS", "1")
    export_hdf5(small_cache[0].path, str(tmp_path / "x.h5"))
    import_hdf5(str(tmp_path / "x.h5"), str(tmp_path / "again"))
    err = capfd.readouterr().err
    assert "exporting to x.h5" in err and "checking x.h5" in err and "importing" in err
