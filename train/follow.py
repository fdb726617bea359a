"""`--follow`: train while the cache is still being extracted, picking up newly committed parts between epochs.

The training ids form a list that only grows: newly committed utterances are appended (sorted) when an epoch
starts, and epoch e trains on the first sizes[e] of them. An index therefore names the same utterance in
every epoch, and the list and the sizes go into the checkpoint, so `--resume` rebuilds exactly the epochs
already begun (later epochs pick up whatever is committed by then). The held-out split stays the one taken
at the start (the recording-hash split keeps new utterances of held-out recordings out of training).
"""

from __future__ import annotations

from collections.abc import Iterator

from store import Cache, SpecMismatchError
from train.data import BucketBatches, CachedCrops, split_ids


class Follower:
    def __init__(self, cache: Cache, train_ids: list[str], make_crops, valid_fraction: float, subset=None,
                 saved: dict | None = None, held_out: list[str] = ()):
        """`make_crops(ids)` builds the dataset of an epoch; `subset()` re-reads the ids to train from (a --corpus subset,
        or the one corpus the cache held at the start); `held_out`: the run's held-out ids, whose recordings never join."""
        self.cache, self.make_crops, self.valid_fraction, self.subset = cache, make_crops, valid_fraction, subset
        self.held_out = {cache.recording(u) for u in held_out}
        self.ids: list[str] = list(saved["ids"]) if saved else list(train_ids)
        self.sizes: list[int] = list(saved["sizes"]) if saved else []
        missing = [u for u in self.ids if u not in cache]
        if missing:
            raise SpecMismatchError(f"{cache.path}: '{missing[0]}' (and {len(missing) - 1} more) of this run's training utterances "
                                    "are no longer committed (re-extracted?); --resume cannot rebuild its epochs, start a new --out")
        self.new_in_last: int = 0

    def state(self) -> dict:
        return {"ids": self.ids, "sizes": self.sizes}

    def _pick_up(self) -> int:
        self.cache.refresh()
        ids = self.subset() if self.subset else self.cache.utterance_ids
        train, _ = split_ids(ids, self.valid_fraction, self.cache.recording if self.cache.has_recordings else None, fallback=False)
        known = set(self.ids)
        new = sorted(u for u in train if u not in known and self.cache.recording(u) not in self.held_out)
        self.ids += new
        return len(new)

    def size(self, epoch: int) -> int:
        """Utterances of epoch `epoch` (an epoch not begun yet first picks up what has been committed since)."""
        while len(self.sizes) <= epoch:
            self.new_in_last = self._pick_up() if self.sizes else 0
            self.sizes.append(len(self.ids))
        return self.sizes[epoch]

    def epochs_from(self, step: int, lengths_of, batch_size: int, seed: int) -> Iterator[tuple[int, CachedCrops, list]]:
        """(epoch, its dataset, its batches from `step` on) for the epochs from the one holding `step`."""
        e, offset = 0, step
        while True:
            n = self.size(e)
            crops = self.make_crops(self.ids[:n])
            batches = BucketBatches(lengths_of(crops), batch_size, seed)
            if offset >= batches.epoch_length(e):
                offset -= batches.epoch_length(e)
            else:
                yield e, crops, batches.epoch(e)[offset:]
                offset = 0
            e += 1
