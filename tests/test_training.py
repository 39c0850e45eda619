"""Training side: the paper's layer structure, a training step that learns, augmentation
alignment, the batches and callbacks of ``model.fit`` training, the recipes' smoke runs and
resume (at a tiny input size). No real training here."""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest
from conftest import REPO, require_data

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.train
if str(REPO) not in sys.path:  # `training` is no installed package: plain `pytest` too
    sys.path.insert(0, str(REPO))

from training.augment import augment, geometric  # noqa: E402
from training.model import BOTTLENECK, DECODER, ENCODER, build_unet  # noqa: E402


def test_paper_layer_structure_and_output_shape():
    model = build_unet((560, 576))
    assert model.output_shape == (None, 560, 576, 1)
    assert model.count_params() == 6_595_906
    from hemoseg_edge.build.flops import conv_gflop
    from training.export import keras_to_onnx

    assert round(conv_gflop(keras_to_onnx(model, (560, 576)))) == 241
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


def test_phases_follow_the_patch_schedule():
    from training.patches import parse_schedule, patch_for, phases, steps_for

    schedule = parse_schedule("128:15, 192:30")
    assert schedule == [(128, 15), (192, 30)]
    assert phases(0, 40, schedule, 256) == [(0, 15, 128), (15, 30, 192), (30, 40, 256)]
    assert phases(20, 40, schedule, 256) == [(20, 30, 192), (30, 40, 256)]
    assert phases(3, 10, schedule, 256) == [(3, 10, 128)]
    assert phases(40, 40, schedule, 256) == [] and phases(0, 5, [], 448) == [(0, 5, 448)]
    for first, end, size in phases(0, 40, schedule, 256):
        assert {patch_for(e, schedule, 256) for e in range(first, end)} == {size}
    assert steps_for(128, 100, 256) == 400 and steps_for(256, 100, 256) == 100


class _Ex:
    def __init__(self, x, y):
        self.x, self.y = x, y


def _examples(n=5, hw=(48, 64)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = rng.uniform(0.1, 1.0, hw).astype(np.float32)
        y = np.zeros(hw, np.float32)
        y.flat[rng.choice(y.size, i + 1, replace=False)] = 1.0  # image i: i + 1 lesion pixels
        out.append(_Ex(x, y))
    return out


def test_batches_are_a_function_of_seed_epoch_and_index():
    """What makes resume and discarded prefetches harmless: no generator state."""
    from training.patches import ImageBatches, PatchBatches

    data = PatchBatches(_examples(), patch=32, steps=3, batch=4, lesion_fraction=0.6, seed=1)
    assert len(data) == 3 and data.samples == 12
    xb, yb = data[2]
    assert xb.shape == yb.shape == (4, 32, 32, 1) and xb.dtype == yb.dtype == np.float32
    again = PatchBatches(_examples(), 32, 3, 4, 0.6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again[2], data[2], strict=True))
    assert not np.array_equal(data[1][0], data[2][0])
    data.epoch = 1
    assert not np.array_equal(data[2][0], again[2][0])

    images = ImageBatches(_examples(), batch=2, seed=0, epoch=3)
    assert len(images) == 3 and images.samples == 5 and images.patch is None
    batches = [images[i] for i in range(len(images))]
    assert [b[0].shape for b in batches] == [(2, 48, 64, 1)] * 2 + [(1, 48, 64, 1)]
    lesions = sorted(int(y.sum()) for _, yb in batches for y in yb)
    assert lesions == [1, 2, 3, 4, 5]  # every image once per epoch


def test_callback_state_is_put_back_at_the_next_fit(tmp_path):
    """fit resets EarlyStopping and ReduceLROnPlateau at its start; BackupAndRestore does not
    keep any callback's counters: CallbackState does, keyed by epoch."""
    from training.callbacks import CallbackState

    def stock():
        return {
            "checkpoint": keras.callbacks.ModelCheckpoint(
                str(tmp_path / "b.weights.h5"), monitor="val_aupr", mode="max"
            ),
            "early_stop": keras.callbacks.EarlyStopping(monitor="val_aupr", mode="max"),
            "reduce_lr": keras.callbacks.ReduceLROnPlateau(monitor="val_aupr", mode="max"),
        }

    path = tmp_path / "callback_state.json"
    first = stock()
    for cb in first.values():
        cb.on_train_begin()
    first["checkpoint"].best = first["early_stop"].best = first["reduce_lr"].best = 0.25
    first["early_stop"].wait, first["early_stop"].best_epoch = 3, 1
    first["reduce_lr"].wait, first["reduce_lr"].cooldown_counter = 2, 1
    CallbackState(path, first).on_epoch_end(4)  # after 5 epochs
    first["early_stop"].wait = 9
    CallbackState(path, first).on_epoch_end(5)  # a later epoch: kept apart

    second = stock()
    state = CallbackState(path, second)
    for cb in [*second.values(), state]:
        cb.on_train_begin()
    state.on_epoch_begin(5)  # resuming after 5 epochs
    assert second["checkpoint"].best == second["early_stop"].best == 0.25
    assert (second["early_stop"].wait, second["early_stop"].best_epoch) == (3, 1)
    assert (second["reduce_lr"].wait, second["reduce_lr"].cooldown_counter) == (2, 1)
    second["early_stop"].wait = 4
    state.on_epoch_begin(6)  # only the first epoch of a fit restores
    assert second["early_stop"].wait == 4


def test_csv_logger_counts_epochs_from_one_and_keeps_the_file_columns(tmp_path):
    from training.callbacks import EpochCSVLogger
    from training.train import _trim_log

    log = tmp_path / "log.csv"
    logger = EpochCSVLogger(str(log), append=True)
    logger.on_train_begin()
    logger.on_epoch_end(0, {"val_aupr": 0.5, "loss": 1.0})
    logger.on_train_end()
    assert log.read_text().splitlines() == ["epoch,loss,val_aupr", "1,1.0,0.5"]
    log.write_text("epoch,val_aupr,loss,note\n1,0.5,1.0,x\n")  # other columns, e.g. older
    logger = EpochCSVLogger(str(log), append=True)  # a resumed run
    logger.on_train_begin()
    for epoch in (1, 2):
        logger.on_epoch_end(epoch, {"loss": 0.5 / epoch, "val_aupr": 0.25 * epoch})
    logger.on_train_end()
    rows = list(csv.DictReader(open(log)))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [float(r["val_aupr"]) for r in rows] == [0.5, 0.25, 0.5]
    assert [float(r["loss"]) for r in rows] == [1.0, 0.5, 0.25]
    assert [r["note"] for r in rows] == ["x", "", ""]
    _trim_log(log, 2)  # resuming after epoch 2: epoch 3 is trained and logged again
    assert [r["epoch"] for r in csv.DictReader(open(log))] == ["1", "2"]
    assert log.read_text().startswith("epoch,val_aupr,loss,note\n")


def tiny_net(input_hw=(None, None)):
    """The loop tests' stand-in for the U-Net (tracing the U-Net's training step would take
    most of a tiny run): 3x3 conv -> ReLU -> BatchNorm -> 1x1 conv -> sigmoid, v1's order."""
    inp = keras.Input(shape=(*input_hw, 1), name="image")
    # named: a fresh build must match an exported one (``--init x.onnx`` loads by name)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.Model(inp, out)


@pytest.fixture
def tiny_train(tmp_path_factory, monkeypatch):
    """``training.train.main`` in this process with ``tiny_net`` for the U-Net, float32, no
    progress bars, on the IDRiD images (preprocessed into ``HEMOSEG_CACHE`` when set, else a
    temporary cache)."""
    require_data()
    import training.model
    from training.train import main

    monkeypatch.setattr(training.model, "build_unet", tiny_net)
    if "HEMOSEG_CACHE" not in os.environ:
        monkeypatch.setenv("HEMOSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))

    def run(*args):
        assert main(["--no-progress", "--precision", "float32", *args]) == 0

    yield run
    keras.mixed_precision.set_global_policy("float32")


def _optimizer_state(weights_file) -> tuple[int, float]:
    """(iterations, learning rate) of the Adam state in a ``.weights.h5`` file."""
    import h5py

    with h5py.File(weights_file) as f:
        return int(f["optimizer/vars/0"][()]), float(f["optimizer/vars/1"][()])


def _log(run):
    return list(csv.DictReader(open(run / "log.csv")))


CPU_TINY = ["--recipe", "cpu", "--limit", "1", "--steps", "1", "--patch", "64"]
CPU_TINY += ["--patch-schedule", "", "--recal-images", "1"]


@pytest.mark.data
@pytest.mark.slow
def test_cpu_recipe_resumes_after_a_stop(tiny_train, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "1")
    shutil.copytree(run / "backup", tmp_path / "backup_after_1")
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "2", "--resume")
    assert f"resumed {run} at epoch 1" in capsys.readouterr().out
    rows = _log(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert float(r["seconds"]) > 0 and float(r["samples_per_s"]) > 0
        assert float(r["lr"]) == 1e-3 and r["patch"] == "64"
        assert 0 <= float(r["val_aupr"]) <= 1 and 0 <= float(r["val_dice_best"]) <= 1
    assert _optimizer_state(run / "backup" / "latest.weights.h5")[0] == 2  # 1 step per epoch
    # best.weights.h5 is the first epoch of highest validation AUPR (its optimizer has seen
    # that many steps)
    aupr = [float(r["val_aupr"]) for r in rows]
    assert _optimizer_state(run / "best.weights.h5")[0] == 1 + aupr.index(max(aupr))
    assert (run / "curves.png").exists() and (run / "run_info.json").exists()

    # a stop after epoch 2 was logged but before its backup was written: epoch 2 again, once
    shutil.rmtree(run / "backup")
    shutil.copytree(tmp_path / "backup_after_1", run / "backup")
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "2", "--resume")
    assert [r["epoch"] for r in _log(run)] == ["1", "2"]
    assert _optimizer_state(run / "backup" / "latest.weights.h5")[0] == 2

    (run / "state.json").write_text("{}")  # as if an older loop's checkpoint were there
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "1")  # no --resume: fresh
    assert [r["epoch"] for r in _log(run)] == ["1"] and not (run / "state.json").exists()
    assert _optimizer_state(run / "backup" / "latest.weights.h5")[0] == 1


def _weights(weights_file) -> dict:
    import h5py

    out = {}
    with h5py.File(weights_file) as f:
        f.visititems(lambda name, d: out.update({name: d[()]}) if hasattr(d, "shape") else None)
    return out


@pytest.mark.data
@pytest.mark.slow
def test_resumed_run_trains_as_an_uninterrupted_one(tiny_train, tmp_path):
    """Same batches (seeded per epoch), same weights and Adam state after the resume: the same
    losses and the same final weights, optimizer included. With a patch schedule: the run
    without a stop changes patch size (and fit call) where the other one resumes."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*CPU_TINY, "--steps", "2", "--patch-schedule", "32:1"]
    tiny_train(*args, "--run-dir", str(straight), "--epochs", "2")
    tiny_train(*args, "--run-dir", str(resumed), "--epochs", "1")
    tiny_train(*args, "--run-dir", str(resumed), "--epochs", "2", "--resume")
    a, b = _log(straight), _log(resumed)
    assert [r["epoch"] for r in b] == ["1", "2"]
    assert [r["patch"] for r in a] == [r["patch"] for r in b] == ["32", "64"]
    # 32 px: 4x the steps of 64 px
    assert _optimizer_state(straight / "backup" / "latest.weights.h5")[0] == 8 + 2
    for key in ("loss", "val_aupr", "val_dice_best"):
        assert [float(r[key]) for r in b] == pytest.approx([float(r[key]) for r in a], abs=2e-4)
    wa = _weights(straight / "backup" / "latest.weights.h5")
    wb = _weights(resumed / "backup" / "latest.weights.h5")
    assert wa.keys() == wb.keys() and any(k.startswith("optimizer") for k in wa)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.data
@pytest.mark.slow
def test_resumed_run_selects_halves_and_stops_on_the_stored_best(tiny_train, tmp_path):
    """After a resume ModelCheckpoint, ReduceLROnPlateau and EarlyStopping compare with the
    best validation AUPR of the epochs before the stop: here an unreachable 0.99."""
    import json

    run = tmp_path / "run"
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "1")
    state_file = run / "callback_state.json"
    state = json.loads(state_file.read_text())
    for cb in state["1"].values():
        cb["best"] = 0.99
    state_file.write_text(json.dumps(state))
    best_before = (run / "best.weights.h5").read_bytes()
    tiny_train(
        *CPU_TINY, "--run-dir", str(run), "--resume", "--epochs", "6",
        "--lr-patience", "1", "--patience", "2",
    )  # fmt: skip
    rows = _log(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # stopped: 2 epochs without a gain
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3, 5e-4]  # halved after each
    assert (run / "best.weights.h5").read_bytes() == best_before
    iterations, lr = _optimizer_state(run / "backup" / "latest.weights.h5")
    assert iterations == 3 and lr == pytest.approx(2.5e-4)


@pytest.mark.data
@pytest.mark.slow
def test_run_folder_of_the_hand_written_loop_resumes(tiny_train, tmp_path, capsys):
    """last.weights.h5 + optimizer.npz + state.json of the earlier loop: weights, optimizer
    state, epoch, learning rate and best AUPR carry over; its log keeps its columns."""
    import json

    from training.losses import bce_dice_loss

    run = tmp_path / "legacy"
    run.mkdir()
    model = tiny_net()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)
    model.save_weights(run / "last.weights.h5")
    np.savez(
        run / "optimizer.npz",
        **{f"v{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)},
    )
    state = {"epoch": 2, "best_aupr": 0.99, "best_dice": 0.5, "best_epoch": 1}
    state.update(lr=5e-4, stall=1, best_thr=0.5)
    (run / "state.json").write_text(json.dumps(state))
    header = "epoch,loss,val_dice@0.5,val_dice_best,val_aupr,val_thr,lr,seconds,patch,samples_per_s"
    rows = ["1,1.9,0.1,0.2,0.99,0.5,0.001,9.0,64,1.0", "2,1.8,0.1,0.2,0.5,0.5,0.0005,9.0,64,1.0"]
    (run / "log.csv").write_text("\n".join([header, *rows]) + "\n")
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--resume", "--epochs", "3", "--lr-patience", "2")
    assert f"resumed {run} at epoch 2" in capsys.readouterr().out
    log = _log(run)
    assert (run / "log.csv").read_text().startswith(header + "\n")
    assert [r["epoch"] for r in log] == ["1", "2", "3"] and float(log[2]["lr"]) == 5e-4
    iterations, lr = _optimizer_state(run / "backup" / "latest.weights.h5")
    assert iterations == 8 and lr == pytest.approx(2.5e-4)  # a 2nd epoch without a gain
    assert not (run / "best.weights.h5").exists()  # nothing beat the stored 0.99


@pytest.mark.data
@pytest.mark.slow
def test_fine_tune_from_a_shipped_onnx_with_recalibrated_frozen_batchnorm(tiny_train, tmp_path):
    """``--init x.onnx --recal-init N --freeze-bn`` (how the paper U-Net is fine-tuned from v1,
    which has no .h5): the ONNX weights are loaded, the BatchNorm statistics re-estimated on N
    whole training images, and then frozen: the trained weights hold exactly those statistics,
    not the file's."""
    import onnx

    from hemoseg_edge.preprocess import DEFAULT_INPUT_HW
    from training import export as ex
    from training.callbacks import recalibrate_batchnorm
    from training.data import idrid_items, load_cached

    start = tiny_net()
    bn = next(x for x in start.layers if isinstance(x, keras.layers.BatchNormalization))
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 5.0, np.float32))  # stale statistics
    onnx.save(ex.keras_to_onnx(start, (64, 64)), str(tmp_path / "init.onnx"))
    run = tmp_path / "run"
    init = ["--init", str(tmp_path / "init.onnx"), "--recal-init", "1", "--freeze-bn"]
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "1", *init)
    trained = tiny_net()
    trained.load_weights(run / "backup" / "latest.weights.h5")
    got = next(x for x in trained.layers if isinstance(x, keras.layers.BatchNormalization))

    expected = tiny_net()
    expected.set_weights(start.get_weights())
    train = load_cached(idrid_items("train")[:1], DEFAULT_INPUT_HW)
    recalibrate_batchnorm(expected, train, 1, np.random.default_rng([0, 0, 2]))
    want = next(x for x in expected.layers if isinstance(x, keras.layers.BatchNormalization))
    np.testing.assert_allclose(got.moving_mean.numpy(), want.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got.moving_variance.numpy(), want.moving_variance.numpy(), rtol=1e-5)
    assert not np.allclose(got.moving_mean.numpy(), 5.0)


@pytest.mark.data
@pytest.mark.slow
def test_input_size_is_a_training_choice_recorded_for_shipping(tiny_train, tmp_path):
    """``--input-hw`` (how a model is fine-tuned at a larger field of view): the images are
    preprocessed at that size, and run_info.json records it for ``training.ship``."""
    import json

    from training.data import cache_root
    from training.train import parse_args

    run = tmp_path / "run"
    tiny_train(*CPU_TINY, "--run-dir", str(run), "--epochs", "1", "--input-hw", "64", "96")
    assert json.loads((run / "run_info.json").read_text())["input_hw"] == [64, 96]
    (cached,) = cache_root().glob("pre_64x96_*")
    x = np.load(next(cached.glob("train_*.npz")))["x"]
    assert x.shape == (64, 96)
    with pytest.raises(SystemExit):  # not a multiple of 32: the encoder's strides need it
        parse_args(["--input-hw", "64", "100"])


@pytest.mark.data
@pytest.mark.slow
def test_paper_recipe_runs_on_fit(tiny_train, tmp_path):
    run = tmp_path / "paper"
    tiny_train("--recipe", "paper", "--epochs", "1", "--limit", "3", "--run-dir", str(run))
    info = (run / "run_info.json").read_text()
    assert '"recipe": "paper"' in info and '"patch": null' in info
    rows = _log(run)
    assert len(rows) == 1 and "patch" not in rows[0] and float(rows[0]["samples_per_s"]) > 0
    assert _optimizer_state(run / "best.weights.h5")[0] == 1  # 3 images in one batch of 4


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


def test_min_lesion_area_is_bounded_by_lesion_recall():
    from training.evaluate import choose_min_lesion_area

    def row(px, dice, recall, f1):
        return {"min_lesion_model_px": px, "dice": dice, "lesion_recall": recall, "lesion_f1": f1}

    # v4's validation table, abridged: F1 alone would take 64 px and drop a tenth of the lesions
    table = [
        row(0.0, 0.6282, 0.6854, 0.5804),
        row(8.0, 0.6283, 0.6667, 0.5961),
        row(16.0, 0.6287, 0.6667, 0.6118),
        row(24.0, 0.6293, 0.6573, 0.6269),
        row(64.0, 0.6303, 0.5915, 0.6365),
    ]
    assert choose_min_lesion_area(table) == 16.0
    assert choose_min_lesion_area(table, max_recall_loss=1.0) == 64.0
    assert choose_min_lesion_area(table, max_recall_loss=0.03) == 24.0
    # the Dice bound still applies, and a tie goes to the smaller area
    costly = [row(0.0, 0.60, 0.70, 0.50), row(4.0, 0.58, 0.70, 0.70), row(8.0, 0.60, 0.70, 0.50)]
    assert choose_min_lesion_area(costly) == 0.0


def test_lesion_free_proxy_removes_true_lesions_and_their_halo_only():
    from training.image_level import proxy_roc, without_true_lesions

    prob = np.zeros((64, 64), np.float32)
    prob[6:30, 8:12] = 0.4  # the halo of a true lesion, reaching far past the outline
    prob[10:14, 8:12] = 0.95
    prob[40:43, 40:43] = 0.9  # a false alarm: no ground truth near it
    prob[50:53, 8:11] = 0.2  # below half the threshold: background, kept
    truth = np.zeros((64, 64), bool)
    truth[11:13, 9:11] = True
    out = without_true_lesions(prob, truth, threshold=0.6)
    assert out[6:30, 8:12].max() == 0.0  # outline, halo chain and its margin are gone
    np.testing.assert_array_equal(out[40:43, 40:43], prob[40:43, 40:43])
    np.testing.assert_array_equal(out[50:53, 8:11], prob[50:53, 8:11])
    assert out.dtype == np.float32 and prob[10, 8] == 0.95  # the input is not modified
    # with no ground truth nothing is removed
    np.testing.assert_array_equal(without_true_lesions(prob, np.zeros_like(truth), 0.6), prob)

    roc = proxy_roc({"a": 0.99, "b": 0.97}, {"a": 0.98, "b": 0.5}, operating_point=0.975)
    assert roc["proxy_roc_auc"] == 0.75  # 0.99 beats both, 0.97 beats 0.5 but not 0.98
    assert roc["proxy_specificity"] == 0.5  # the proxy of "a" (0.98) is a false alarm at 0.975
    assert proxy_roc({"a": 0.9}, {"a": 0.1}, None)["proxy_specificity"] is None


def test_committed_model_card_is_rendered_from_the_committed_measurements(tmp_path):
    """MODEL_CARD.md is what ``make card``'s last step renders from engines/eval_*.json,
    quantize_*.json and the training logs: no number in it is typed by hand."""
    import re

    from training.model_card import main

    makefile = (REPO / "Makefile").read_text()
    models = re.findall(r"--model (v\d+=\S+)", makefile)
    assert len(models) >= 2
    argv = [a for m in models for a in ("--model", m)] + ["--out", str(tmp_path / "card.md")]
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "card.md").read_text() == (REPO / "engines" / "MODEL_CARD.md").read_text()


def test_packed_data_trains_as_the_photographs_do(tmp_path, monkeypatch):
    """A pack (what travels to a GPU machine) gives load_cached the reference examples to
    within the PNG's 0.5/255 rounding, lists train/val without photographs, and refuses a pack
    of another preprocessing spec or an unfilled cache with a clear error."""
    require_data()
    import json

    from training.data import idrid_items, load_cached, prepare
    from training.pack import main as pack_main

    hw = (320, 352)
    ids = ["IDRiD_01", "IDRiD_02"]  # one train, one validation image
    monkeypatch.setenv("HEMOSEG_CACHE", str(tmp_path / "cache_here"))
    from training.pack import pack

    pack(tmp_path / "pack", hw, ids)
    pack(tmp_path / "again", hw, ids)  # from the cache this time (numpy scalars in geometry)
    for name in ("pack.json", "IDRiD_02_x.png"):
        a, b = (tmp_path / d / "idrid" / name for d in ("pack", "again"))
        assert a.read_bytes() == b.read_bytes()
    reference = {i.id: prepare(i, hw) for i in idrid_items("train_all") if i.id in ids}

    monkeypatch.setenv("HEMOSEG_DATA", str(tmp_path / "pack"))
    monkeypatch.setenv("HEMOSEG_CACHE", str(tmp_path / "cache_there"))
    assert [i.id for i in idrid_items("train")] == ["IDRiD_01"]
    assert [i.id for i in idrid_items("val")] == ["IDRiD_02"]
    assert idrid_items("test") == []
    with pytest.raises(FileNotFoundError, match="training.pack --unpack"):
        load_cached(idrid_items("train"), hw)
    assert pack_main(["--unpack"]) == 0
    for ex in load_cached(idrid_items("train_all"), hw):
        ref = reference[ex.id]
        assert np.abs(ex.x - ref.x).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_allclose(ex.y, np.round(ref.y * 255) / 255, atol=1e-6)
        assert ex.geometry == ref.geometry

    index = tmp_path / "pack" / "idrid" / "pack.json"
    d = json.loads(index.read_text())
    d["preprocess_sha256"] = "0" * 64
    index.write_text(json.dumps(d))
    assert pack_main(["--unpack"]) == 1


def test_mobilenet_unet_variable_paths_suit_the_torch_backend(monkeypatch):
    """Keras' torch backend registers each variable path as a torch parameter name, which may
    not contain "." (the build failed there); on TensorFlow the names stay torchvision's."""
    import keras

    from training import model_mnv2

    tf_names = {ly.name for ly in model_mnv2.build_mnv2_unet((64, 64)).layers}
    assert "features.3.dw" in tf_names
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    model = model_mnv2.build_mnv2_unet((64, 64))
    assert not [v.path for v in model.variables if "." in v.path]
    assert "features_3_dw" in {ly.name for ly in model.layers}
    assert len(model_mnv2.encoder_layers(model)) == len(
        [n for n in tf_names if n.startswith("features.")]
    )


def test_candidate_image_scores_by_hand():
    from types import SimpleNamespace

    from hemoseg_edge.preprocess import Geometry
    from training.image_level import candidate_scores

    hw = (64, 64)
    g = Geometry((640, 640), (640, 640), hw, (0.0, 0.0, 640.0, 640.0), (320.0, 320.0), 300.0)
    prob = np.zeros(hw, np.float32)
    prob[20:24, 20:24] = 0.75  # 16 px, mass 12
    prob[40:42, 40:43] = 1.0  # 6 px, mass 6
    prob[30, 50] = 0.9  # 1 px: under the minimum area
    s = candidate_scores(prob, SimpleNamespace(geometry=g, threshold=0.5, min_lesion_model_px=2))
    # a 3x3 box inside the 0.75 block (0.75) beats the 1.0 block's best box (6/9)
    assert s["peak3x3"] == pytest.approx(0.75)
    assert s["peak9x9"] == pytest.approx(12.0 / 81)
    assert s["largest_lesion_mass"] == pytest.approx(12.0)
    assert s["total_lesion_mass"] == pytest.approx(18.0)
    assert s["lesion_count"] == 2


def test_averaged_checkpoint_is_the_mean_of_the_epochs(tmp_path):
    from training.average import average_checkpoints, mean_weights
    from training.export import _float32_model

    with pytest.raises(ValueError, match="shapes"):
        mean_weights([[np.zeros(2)], [np.zeros(3)]])
    counter = np.array([7], np.int64)  # non-float state is kept, not averaged
    mixed = mean_weights(
        [[np.ones(2, np.float32), counter], [np.full(2, 3, np.float32), counter + 1]]
    )
    assert mixed[0].dtype == np.float32 and mixed[0].tolist() == [2.0, 2.0]
    assert mixed[1].tolist() == [7]

    keras.utils.set_random_seed(0)
    paths, sets = [], []
    for k in range(3):
        model = build_unet((32, 32))  # freshly initialised: three different points
        paths.append(tmp_path / f"epoch{k:03d}.weights.h5")
        model.save_weights(paths[-1])
        sets.append(model.get_weights())
    out = tmp_path / "mean.weights.h5"
    average_checkpoints("unet", (32, 32), paths, out)
    got = _float32_model((32, 32), out, "unet").get_weights()
    conv = next(i for i, w in enumerate(sets[0]) if w.ndim == 4)
    assert not np.allclose(sets[0][conv], sets[1][conv])
    for i, w in enumerate(got):
        np.testing.assert_allclose(w, np.mean([s[i] for s in sets], axis=0), rtol=1e-6, atol=1e-7)
    assert not list(tmp_path.glob("*.tmp.*"))
