"""Training batches as ``keras.utils.PyDataset`` for ``model.fit``: random lesion-aware patches
(the ``cpu`` and ``mnv2`` recipes, with progressive patch sizes) and whole augmented images (the
``paper`` recipe).

Every batch is a pure function of ``(seed, epoch, index)``: a resumed run draws the batches a
run without a stop would have drawn, with no random-generator state to save, and a batch that
``fit``'s prefetching computes and throws away changes nothing. The training callback sets
``epoch`` before each epoch (``training.callbacks.ValidateEpoch``).
"""

from __future__ import annotations

import keras
import numpy as np

from training.augment import NO_EXPOSURE, augment


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """'128:15,192:30' -> [(128, 15), (192, 30)]: patch size until that epoch (exclusive)."""
    out = []
    for part in filter(None, (t.strip() for t in text.split(","))):
        size, until = part.split(":")
        out.append((int(size), int(until)))
    return out


def patch_for(epoch: int, schedule: list[tuple[int, int]], final: int) -> int:
    """The patch size of 0-based ``epoch``."""
    for size, until in schedule:
        if epoch < until:
            return size
    return final


def phases(
    start: int, epochs: int, schedule: list[tuple[int, int]], final: int
) -> list[tuple[int, int, int]]:
    """``(first_epoch, end_epoch, patch)`` runs of one patch size from 0-based ``start`` up to
    ``epochs``: one ``fit`` call each, since a patch size fixes the batch shape and the steps."""
    out: list[tuple[int, int, int]] = []
    for epoch in range(start, epochs):
        size = patch_for(epoch, schedule, final)
        if out and out[-1][2] == size:
            out[-1] = (out[-1][0], epoch + 1, size)
        else:
            out.append((epoch, epoch + 1, size))
    return out


def steps_for(patch: int, steps: int, final: int) -> int:
    """Smaller patches, more steps: every epoch sees about the same number of pixels."""
    return max(1, round(steps * (final / patch) ** 2))


def sample_patch(train, size, rng, lesion_fraction=0.6):
    """A random patch; ``lesion_fraction`` of the time centred (with jitter) on a hemorrhage
    pixel, otherwise anywhere mostly inside the field of view (fovea, disc, vessel crossings)."""
    ex = train[int(rng.integers(len(train)))]
    h, w = ex.x.shape
    if rng.random() < lesion_fraction:
        ys, xs = np.nonzero(ex.y >= 0.5)
        if ys.size:
            k = int(rng.integers(ys.size))
            cy = ys[k] + int(rng.integers(-size // 3, size // 3 + 1))
            cx = xs[k] + int(rng.integers(-size // 3, size // 3 + 1))
            y0 = int(np.clip(cy - size // 2, 0, h - size))
            x0 = int(np.clip(cx - size // 2, 0, w - size))
            return ex.x[y0 : y0 + size, x0 : x0 + size], ex.y[y0 : y0 + size, x0 : x0 + size]
    for _ in range(10):  # a patch that is mostly inside the field of view
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        px = ex.x[y0 : y0 + size, x0 : x0 + size]
        if (px > 0.02).mean() > 0.5:
            break
    return px, ex.y[y0 : y0 + size, x0 : x0 + size]


def _stack(pairs):
    x = np.stack([p[0] for p in pairs])[..., None].astype(np.float32)
    y = np.stack([p[1] for p in pairs])[..., None].astype(np.float32)
    return x, y


class PatchBatches(keras.utils.PyDataset):
    """``steps`` batches of ``batch`` augmented ``patch`` px patches per epoch, a share
    ``lesion_fraction`` of them centred on a hemorrhage (``sample_patch``)."""

    def __init__(
        self, examples, patch, steps, batch, lesion_fraction, seed, epoch=0, exposure=NO_EXPOSURE
    ):
        super().__init__()  # no workers: the batches are cheap next to a training step
        self.examples, self.patch, self.steps, self.batch = examples, patch, steps, batch
        self.lesion_fraction, self.seed, self.epoch = lesion_fraction, seed, epoch
        self.exposure = exposure

    def __len__(self) -> int:
        return self.steps

    @property
    def samples(self) -> int:
        """Samples per epoch."""
        return self.steps * self.batch

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pairs = [
            augment(
                *sample_patch(self.examples, self.patch, rng, self.lesion_fraction),
                rng,
                exposure=self.exposure,
            )
            for _ in range(self.batch)
        ]
        return _stack(pairs)


class ImageBatches(keras.utils.PyDataset):
    """Every training image once per epoch, shuffled, in batches of ``batch`` whole images with
    the paper's augmentation (no odd quarter turns: the input is not square)."""

    patch = None

    def __init__(self, examples, batch, seed, epoch=0):
        super().__init__()
        self.examples, self.batch, self.seed, self.epoch = examples, batch, seed, epoch

    def __len__(self) -> int:
        return (len(self.examples) + self.batch - 1) // self.batch

    @property
    def samples(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))
        rng = np.random.default_rng([self.seed, self.epoch, index])
        idx = order[index * self.batch : (index + 1) * self.batch]
        ex = self.examples
        return _stack([augment(ex[i].x, ex[i].y, rng, allow_transpose=False) for i in idx])
