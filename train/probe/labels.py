"""Labels for probes: utterance id -> label (a class, or a transcript), from what users keep.

- a TSV: `id<TAB>label` (a class) or `id<TAB>transcript`;
- a Kaldi `text` (`id transcript...`) or `utt2spk` (`id speaker`): whitespace-separated, the rest of the line is the label;
- a lhotse supervisions manifest (`*.jsonl` / `*.jsonl.gz`): `--field text` (default), `speaker`, or any key of `custom`.

Ids are the cache's utterance ids. Read back from a user's file, so every line is checked: a line without a label is
one line naming it, never skipped silently.
"""

from __future__ import annotations

import gzip
import json
import os

from store.oneline import UserError


class LabelError(UserError):
    """A label file or field that cannot be used; one line."""


def _text_lines(path: str, option: str = "--labels") -> list[tuple[int, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        what = "a TSV, Kaldi text/utt2spk or lhotse manifest" if option == "--labels" else \
            "one id per line, a Kaldi file or a lhotse manifest"
        raise LabelError(f"{option} {path}: not UTF-8 text (byte {e.start}); give {what}") from None
    except OSError as e:
        raise LabelError(f"{option} {path}: cannot read it ({e.strerror or e})") from None


def read_labels(path: str, field: str = "text") -> dict[str, str]:
    """id -> label. TSV if lines hold a tab, lhotse if the file is JSON lines, else Kaldi's `id rest-of-line`."""
    if not os.path.isfile(path):
        raise LabelError(f"--labels {path}: no such file; give a TSV (id<TAB>label), Kaldi text/utt2spk or lhotse supervisions")
    lines = _text_lines(path)
    if not lines:
        raise LabelError(f"--labels {path}: empty")
    if lines[0][1].lstrip().startswith("{"):
        return _lhotse(path, lines, field)
    tab = all("\t" in line for _, line in lines)
    labels: dict[str, str] = {}
    for n, line in lines:
        uid, _, label = line.partition("\t") if tab else line.strip().partition(" ")
        uid, label = uid.strip(), " ".join(label.split())
        if not uid or not label:
            raise LabelError(f"--labels {path} line {n}: expected 'id{'<TAB>' if tab else ' '}label', got {line[:80]!r}")
        if uid in labels:
            raise LabelError(f"--labels {path} line {n}: id '{uid}' is labelled twice")
        labels[uid] = label
    return labels


def _lhotse(path: str, lines: list[tuple[int, str]], field: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for n, line in lines:
        try:
            sup = json.loads(line)
        except ValueError:
            raise LabelError(f"--labels {path} line {n}: not a JSON supervision") from None
        if not isinstance(sup, dict) or not isinstance(sup.get("id"), str):
            raise LabelError(f"--labels {path} line {n}: a supervision needs an 'id'")
        value = sup.get(field, (sup.get("custom") or {}).get(field) if isinstance(sup.get("custom"), dict) else None)
        if not isinstance(value, (str, int)) or not str(value).strip():
            raise LabelError(f"--labels {path} line {n} ({sup['id']}): no '{field}' to use as the label; choose another --field")
        if sup["id"] in labels:
            raise LabelError(f"--labels {path} line {n}: id '{sup['id']}' is labelled twice")
        labels[sup["id"]] = " ".join(str(value).split())
    return labels


def read_ids(path: str, option: str) -> list[str]:
    """The ids of a split: a file with one id per line (or the first column of a TSV / Kaldi file), a Kaldi data dir
    (its segments, else utt2spk, text or wav.scp), or a lhotse manifest (*.jsonl[.gz]: each line's "id")."""
    if os.path.isdir(path):
        found = next((os.path.join(path, n) for n in ("segments", "utt2spk", "text", "wav.scp") if os.path.isfile(os.path.join(path, n))),
                     None)
        if found is None:
            raise LabelError(f"{option} {path}: a directory without segments, utt2spk, text or wav.scp; give a Kaldi data dir or an "
                             "id file")
        path = found
    if not os.path.isfile(path):
        raise LabelError(f"{option} {path}: no such file; give a file with one utterance id per line, a Kaldi dir or a lhotse manifest")
    lines = _text_lines(path, option)
    if lines and lines[0][1].lstrip().startswith("{"):
        ids = []
        for n, line in lines:
            try:
                ids.append(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                raise LabelError(f"{option} {path} line {n}: not a JSON manifest entry with an 'id'") from None
        return [str(u) for u in ids]
    return [line.split()[0] for _, line in lines]
