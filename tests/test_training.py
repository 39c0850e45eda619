"""Training side: the paper's layer structure, a training step that learns, augmentation
alignment, the recipes' smoke runs and resume. No real training here."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from conftest import REPO, require_data

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.train

from training.augment import augment, geometric  # noqa: E402
from training.model import BOTTLENECK, DECODER, ENCODER, build_unet, conv_flops  # noqa: E402


def test_paper_layer_structure_and_output_shape():
    model = build_unet((560, 576))
    assert model.output_shape == (None, 560, 576, 1)
    assert model.count_params() == 6_595_906
    assert round(conv_flops(model) / 1e9) == 241
    convs = [ly for ly in model.layers if isinstance(ly, keras.layers.Conv2D)]
    widths = [c.filters for c in convs]
    expected = [f for block in ENCODER for f in block] + list(BOTTLENECK)
    expected += [f for block in DECODER for f in block] + [1]
    assert widths == expected
    assert [f for f in widths[:10]] == [32, 32, 64, 64, 64, 128, 128, 128, 256, 256]
    # every 3x3 conv is followed by ReLU then BatchNorm
    names = [ly.name for ly in model.layers]
    for c in convs[:-1]:
        i = names.index(c.name)
        assert isinstance(model.layers[i + 1], keras.layers.ReLU)
        assert isinstance(model.layers[i + 2], keras.layers.BatchNormalization)
        assert c.kernel_size == (3, 3) and c.padding == "same"
    kinds = [type(ly).__name__ for ly in model.layers]
    assert kinds.count("MaxPooling2D") == 4 and kinds.count("UpSampling2D") == 4
    head_concat = model.get_layer("head_concat")
    assert model.input in [t for t in head_concat.input] or any(
        t is model.inputs[0] for t in head_concat.input
    )
    assert convs[-1].kernel_size == (1, 1) and convs[-1].activation.__name__ == "sigmoid"


def test_one_training_step_lowers_loss():
    keras.utils.set_random_seed(0)
    model = build_unet((32, 32))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1)).astype("float32")
    y = (x < 0.2).astype("float32")  # "dark pixels are lesions"
    before = float(model.evaluate(x, y, verbose=0))
    for _ in range(5):
        model.train_on_batch(x, y)
    after = float(model.evaluate(x, y, verbose=0))
    assert after < before


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(3)
    x = rng.random((64, 48)).astype(np.float32)
    y = (x > 0.7).astype(np.float32)
    for seed in range(12):
        xa, ya = geometric(x, y, np.random.default_rng(seed), allow_transpose=True)
        assert np.array_equal(ya, (xa > 0.7).astype(np.float32))
        xp, yp = augment(x, y, np.random.default_rng(seed), allow_transpose=False)
        assert xp.shape == x.shape and yp.shape == y.shape  # no odd rotation without transpose
        assert xp.min() >= 0.0 and xp.max() <= 1.0
        assert np.array_equal(yp, (geometric(x, y, np.random.default_rng(seed), False)[1]))


def test_augmentation_is_seeded():
    x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)
    a = augment(x, y, np.random.default_rng(7))
    b = augment(x, y, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _train(args, tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, HEMOSEG_CACHE=str(os.environ.get("HEMOSEG_CACHE", tmp_path / "cache")))
    return subprocess.run(
        [sys.executable, "-m", "training.train", "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )


@pytest.mark.data
@pytest.mark.slow
def test_cpu_recipe_checkpoints_and_resumes(tmp_path):
    require_data()
    run = tmp_path / "run"
    common = [
        "--recipe",
        "cpu",
        "--limit",
        "2",
        "--steps",
        "1",
        "--patch",
        "64",
        "--patch-schedule",
        "",
        "--run-dir",
        str(run),
    ]
    p1 = _train([*common, "--epochs", "1"], tmp_path)
    assert p1.returncode == 0, p1.stderr[-2000:]
    p2 = _train([*common, "--epochs", "2", "--resume"], tmp_path)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert "resumed" in p2.stdout
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (run / "best.weights.h5").exists() and (run / "curves.png").exists()


@pytest.mark.data
@pytest.mark.slow
def test_paper_recipe_smoke(tmp_path):
    require_data()
    run = tmp_path / "paper"
    p = _train(
        ["--recipe", "paper", "--epochs", "1", "--limit", "4", "--run-dir", str(run)], tmp_path
    )
    assert p.returncode == 0, p.stderr[-2000:]
    info = (run / "run_info.json").read_text()
    assert '"recipe": "paper"' in info and '"patch": null' in info
    assert len(list(csv.DictReader(open(run / "log.csv")))) == 1


def test_mobilenet_encoder_takes_torchvision_layout():
    """The converter's weight layouts: a conv kernel (O, I, kh, kw), a depthwise kernel
    (C, 1, kh, kw), BatchNorm statistics, and the first conv's folded ImageNet normalisation
    (a grey image through the folded kernel equals RGB (x - mean) / std through the original)."""
    from training.model_mnv2 import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        SETTING,
        build_mnv2_unet,
        load_imagenet,
    )

    model = build_mnv2_unet((64, 64))
    rng = np.random.default_rng(0)
    state = {}
    for layer in model.layers:  # a fake torchvision state dict of the right shapes
        name = layer.name
        if not name.startswith("features."):
            continue
        if hasattr(layer, "kernel"):
            k = np.asarray(layer.kernel)
            shape = (
                (k.shape[2], 1, *k.shape[:2])
                if "dw" in name
                else (k.shape[3], k.shape[2], *k.shape[:2])
            )
            state[name] = rng.normal(size=shape).astype(np.float32)
    state["features.0.0.weight"] = rng.normal(size=(32, 3, 3, 3)).astype(np.float32)
    mapping = {"features.0.bn": "features.0.1"}
    idx = 1
    for t, _c, rep, _s in SETTING:
        for _ in range(rep):
            p = f"features.{idx}.conv"
            names = ("dw", "project") if t == 1 else ("expand", "dw", "project")
            torch_convs = (f"{p}.0.0", f"{p}.1") if t == 1 else (f"{p}.0.0", f"{p}.1.0", f"{p}.2")
            torch_bns = (f"{p}.0.1", f"{p}.2") if t == 1 else (f"{p}.0.1", f"{p}.1.1", f"{p}.3")
            for n, tc, tb in zip(names, torch_convs, torch_bns, strict=True):
                state[f"{tc}.weight"] = state.pop(f"features.{idx}.{n}")
                mapping[f"features.{idx}.{n}_bn"] = tb
            idx += 1
    for bn_name, prefix in mapping.items():
        c = model.get_layer(bn_name).gamma.shape[0]
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.{key}"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state.pop("features.0.conv", None)
    assert load_imagenet(model, state) == 255
    dw = model.get_layer("features.1.dw")
    np.testing.assert_array_equal(
        np.asarray(dw.kernel)[:, :, 5, 0], state["features.1.conv.0.0.weight"][5, 0]
    )
    pw = model.get_layer("features.2.expand")
    np.testing.assert_array_equal(
        np.asarray(pw.kernel)[0, 0, 7, 9], state["features.2.conv.0.0.weight"][9, 7, 0, 0]
    )
    bn = model.get_layer("features.3.dw_bn")
    np.testing.assert_array_equal(
        np.asarray(bn.moving_variance), state["features.3.conv.1.1.running_var"]
    )
    # first conv on a constant grey patch (centre pixel, no padding effects)
    first = model.get_layer("features.0.conv")
    g = 0.37
    got = g * np.asarray(first.kernel).sum(axis=(0, 1, 2)) + np.asarray(first.bias)
    w = state["features.0.0.weight"]
    rgb = (g - IMAGENET_MEAN) / IMAGENET_STD
    want = (w * rgb[None, :, None, None]).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_legacy_reader_round_trip(tmp_path, monkeypatch):
    """A file in torch's legacy (pre-zip) format, written here with stand-in ``torch``
    modules (the reader must not need torch), reads back exactly, strides included."""
    import collections
    import pickle
    import struct
    import sys
    import types

    from training.torch_legacy import load_state_dict

    a = np.arange(6, dtype=np.float32)
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_torch.FloatStorage, fake_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)
    storage = object()

    class Tensor:
        def __reduce__(self):
            return (_rebuild_tensor_v2, (storage, 0, (3, 2), (1, 3), False, {}))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", FloatStorage, "0", "cpu", a.size)
            return None

    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(collections.OrderedDict(w=Tensor()))
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", a.size) + a.tobytes())
    out = load_state_dict(path)
    np.testing.assert_array_equal(out["w"], a.reshape(2, 3).T)  # size (3, 2), strides (1, 3)
