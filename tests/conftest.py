"""Shared fixtures: the shared datasets (skip when absent) and a tiny real ONNX model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hemoseg_edge.model_file.metadata import ModelMetadata

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m hemoseg_edge ARGS`` from the repository, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "hemoseg_edge", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def data_root() -> Path:
    env = os.environ.get("HEMOSEG_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def idrid_images(split: str = "*") -> list[Path]:
    return sorted((data_root() / "idrid" / "images").glob(f"{split}/IDRiD_*.jpg"))


def ddb1_images() -> list[Path]:
    return sorted((data_root() / "diaretdb1" / "ddb1_fundusimages").glob("image*.png"))


def require_data() -> None:
    if not idrid_images():
        pytest.skip(f"shared data not found at {data_root()} (set HEMOSEG_DATA)")


def make_tiny_onnx(hw=(560, 576), metadata: ModelMetadata | None = None, batch=1) -> bytes:
    """A real 3-node ONNX model (1x1 conv + sigmoid) that marks dark pixels as lesion."""
    h, w = hw
    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), -40.0, np.float32), "w")
    bias = numpy_helper.from_array(np.array([6.0], np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, h, w])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, 1, h, w])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        for k, v in metadata.to_props().items():
            model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    md = ModelMetadata(version="test-tiny", threshold=0.5, training_data="none (test model)")
    p = tmp_path_factory.mktemp("models") / "tiny.onnx"
    p.write_bytes(make_tiny_onnx(metadata=md))
    return p


@pytest.fixture(scope="session")
def sample_image() -> Path:
    p = REPO / "examples" / "IDRiD_55.jpg"
    if p.exists():
        return p
    require_data()
    return idrid_images("test")[0]


@pytest.fixture(params=["native", "numpy"])
def kernels(request):
    """Run a test with the native kernels (``hemoseg_edge/_native.cpp``) and without them."""
    from hemoseg_edge import native

    with native.switched(request.param == "native"):
        if request.param == "native" and not native.available():
            pytest.skip("native kernels off: not built (needs a C++ compiler) or HEMOSEG_NATIVE=0")
        yield request.param
