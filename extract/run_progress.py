"""What a long extraction shows and keeps as it goes: its progress bar, and the index consolidated every few hundred
parts (extract.run runs both beside the parts)."""

from __future__ import annotations

import sys
import threading
import time

from store.index import consolidate


class RunProgress:
    """Utterances, audio hours, real-time factor and ETA on stderr (tqdm)."""

    def __init__(self, pending: list[dict], rate: int, enabled: bool):
        from tqdm import tqdm

        total = sum(it.samples for p in pending for it in p["items"]) / rate
        self.rate, self.t0, self.utts = rate, time.time(), 0
        self.bar = tqdm(total=total, unit="s", desc="extracting", file=sys.stderr, disable=not enabled,
                        bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]")

    def __call__(self, n_utts: int, n_samples: int) -> None:
        self.utts += n_utts
        self.bar.update(min(n_samples / self.rate, self.bar.total - self.bar.n))  # float sums must not overshoot the total
        rtf = self.bar.n / max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.utts} utts, {self.bar.n / 3600:.2f} h, {rtf:.1f}x real time", refresh=False)

    def close(self) -> None:
        self.bar.close()


CONSOLIDATE_EVERY = 256  # parts: a run killed late leaves an index covering all but the last few hundred parts


class Consolidator:
    """Consolidates the index every CONSOLIDATE_EVERY committed parts, in a thread beside the extraction: without it a
    run killed before its end left every marker uncovered, and an open of an S3 cache cost one GET per part (5,754 at
    LibriSpeech scale). Runs only under the cache's lock, one consolidation at a time; the run's own final one follows."""

    def __init__(self, path: str):
        self.path, self.done, self.thread = path, 0, None

    def part_done(self) -> None:
        self.done += 1
        if self.done % CONSOLIDATE_EVERY == 0 and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(target=self._consolidate, name="consolidate", daemon=True)
            self.thread.start()

    def _consolidate(self) -> None:
        try:
            consolidate(self.path)
        except Exception as e:  # noqa: BLE001 - speed only: the markers stay the truth, the final consolidation follows
            print(f"{self.path}: could not consolidate the index mid-run ({type(e).__name__}); the end of the run will", file=sys.stderr)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
