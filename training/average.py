"""Average the weights of several epochs of one run into one checkpoint.

    python -m training.average --arch mnv2 --input-hw 1440 1472 --out R/mean.weights.h5 \\
        R/epochs/epoch010.weights.h5 R/epochs/epoch011.weights.h5 R/epochs/epoch012.weights.h5

The last epochs of a fine-tune at a low learning rate sit near one basin; their mean is
often a flatter, better-generalising point than any one of them ("stochastic weight
averaging", Izmailov et al. 2018). A plain mean of BatchNorm statistics is only right when
they did not move (``--freeze-bn``) or nearly so; ``training.ship`` judges the result on
validation like any other checkpoint, so a bad mean does not ship.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def mean_weights(weight_sets: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of equally shaped weight lists, in each weight's own dtype.
    Non-float weights (counters, seed states) are taken from the first set."""
    if not weight_sets:
        raise ValueError("no weights to average")
    first = weight_sets[0]
    for k, ws in enumerate(weight_sets[1:], start=1):
        shapes = [w.shape for w in ws]
        if shapes != [w.shape for w in first]:
            raise ValueError(f"weight set {k} does not have the shapes of set 0")
    out = []
    for i, w0 in enumerate(first):
        if np.issubdtype(w0.dtype, np.floating):
            acc = np.mean([np.asarray(ws[i], np.float64) for ws in weight_sets], axis=0)
            out.append(acc.astype(w0.dtype))
        else:
            out.append(np.array(w0))
    return out


def average_checkpoints(
    arch: str, input_hw: tuple[int, int], sources: Sequence[Path], out: Path
) -> None:
    """Load each checkpoint into a float32 ``arch`` at ``input_hw``, write the mean (weights
    only, atomically) to ``out``."""
    from training.export import _float32_model

    model = None
    sets = []
    for src in sources:
        model = _float32_model(input_hw, src, arch)
        sets.append(model.get_weights())
    assert model is not None
    model.set_weights(mean_weights(sets))
    tmp = out.with_name(out.name + ".tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    from training.export import ARCH_NAMES

    p = argparse.ArgumentParser(prog="python -m training.average", description=__doc__)
    p.add_argument("weights", type=Path, nargs="+", help="the checkpoints to average")
    p.add_argument("--arch", default="mnv2", choices=sorted(ARCH_NAMES))
    p.add_argument("--input-hw", type=int, nargs=2, required=True, metavar=("H", "W"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    missing = [str(w) for w in args.weights if not w.is_file()]
    if missing:
        p.error(f"no such checkpoint: {', '.join(missing)}")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    average_checkpoints(args.arch, tuple(args.input_hw), args.weights, args.out)
    print(f"wrote {args.out}: the mean of {len(args.weights)} checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
