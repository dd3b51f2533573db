"""End-to-end tests of examples/sparse_training.py (GraNet / GMP / RigL) on tiny data.

The script runs as a subprocess (its own absl flags and TensorFlow runtime) on keras_tpp's
synthetic shapes: 64 training images in batches of 16 (4 iterations per epoch), models at
a small fraction of their width. Also here: the CIFAR ResNet-50 that the script trains
(keras_tpp.models.cifar_bottleneck_resnet).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.tf_only(reason="sparse training (SparseTrainingCallback) and tf.data")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "sparse_training.py")
TIMEOUT = 300
KILL_ENV = "KERAS_TPP_TEST_KILL_AT"

# 64 synthetic images, batch 16: 4 iterations per epoch.
DATA = ["--data_source", "synthetic", "--max_train_examples", "64", "--max_test_examples",
        "32", "--batch_size", "16"]
# ... with mask updates every iteration and a log row per iteration.
TINY = DATA + ["--update_frequency", "1", "--verbose", "2", "--log_every", "1"]


def _env(tmp, **extra) -> dict:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(tmp),
                "KERAS_TPP_CACHE": os.path.join(str(tmp), "cache"),
                "PYTHONPATH": REPO + (os.pathsep + path if path else "")})
    env.update(extra)
    return env


def _start(args, tmp, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT] + list(args), cwd=str(tmp),
                            env=_env(tmp, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args, tmp, *, check=True, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(tmp),
                          env=_env(tmp, **env), capture_output=True, text=True,
                          timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"sparse_training.py failed (rc={proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def kernel_zeros(path: str) -> tuple[int, int]:
    """(zeros, size) over every Conv / Dense kernel of the saved model at ``path``."""
    import keras

    model = keras.models.load_model(path, compile=False)
    zeros = size = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = np.asarray(layer.kernel)
            zeros += int(np.sum(kernel == 0))
            size += kernel.size
    return zeros, size


def assert_exact_sparsity(summary: dict, ratio: float) -> None:
    """The summary's sparsity (masked weights) is the requested ratio up to the rounding to
    whole weights; the stripped model has at least those zeros (a kept weight may be 0)."""
    n = summary["prunable_weights"]
    assert abs(summary["masked_weights"] - ratio * n) <= 1, (summary["masked_weights"], n)
    assert summary["sparsity"] == pytest.approx(ratio, abs=1.0 / n + 1e-9)
    assert summary["zero_weights"] >= summary["masked_weights"]
    assert sum(v["masked"] for v in summary["layers"].values()) == summary["masked_weights"]


# ----------------------------------------------------------------------------- model


def test_cifar_resnet50_has_the_reference_shape():
    """The sparse-training papers' CIFAR ResNet-50: 23,520,842 trainable parameters for 10
    classes, 3×3 stem without pooling, 16 bottleneck blocks, 4×4 final feature map."""
    from keras_tpp import models

    model = models.cifar_bottleneck_resnet(50)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 23_520_842
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 3, 64)
    assert not any("pool" in layer.name and layer.name != "pool" for layer in model.layers)
    blocks = {layer.name.rsplit("_", 1)[0] for layer in model.layers
              if layer.name.endswith("_conv3")}
    assert len(blocks) == 16
    assert model.get_layer("stage4_block3_add").output.shape[1:] == (4, 4, 2048)
    with pytest.raises(ValueError, match="depth"):
        models.cifar_bottleneck_resnet(34)


# ----------------------------------------------------------------------------- script


def test_granet_end_to_end_reaches_the_ratio_and_writes_its_outputs(tmp_path):
    """GraNet on a narrow ResNet-20: 2 epochs, pruning to 90% during the first; the
    stripped model, summary and sparse TFLite are written; a rerun skips training."""
    out = tmp_path / "run"
    args = ["--model", "resnet20", "--width_multiplier", "0.25", "--epochs", "2",
            "--prune_end_epoch", "1", "--pruning_ratio", "0.9", "--export_tflite",
            "--output_dir", str(out)] + TINY
    proc = run(args, tmp_path)
    summary = read_json(out / "summary.json")
    assert summary["method"] == "granet" and summary["initial_ratio"] == 0.0
    assert_exact_sparsity(summary, 0.9)
    zeros, size = kernel_zeros(str(out / "sparse.keras"))
    assert (zeros, size) == (summary["zero_weights"], summary["prunable_weights"])
    assert summary["iterations"] == 8 and summary["schedule"]["prune_end_step"] == 4
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["tflite"]["size_bytes"] == os.path.getsize(out / "sparse.tflite") > 0
    rows = read_csv(out / "logs" / "train.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["sparsity"]) == pytest.approx(0.9, abs=1e-3)
    assert "regrow_rate" in rows[-1]
    assert not os.path.exists(out / "backup")
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert "sparsity" in proc.stdout and not error_lines(proc.stderr)

    again = run(args, tmp_path)
    assert "skipping training" in again.stdout, again.stdout
    assert read_json(out / "summary.json")["finished"] == summary["finished"]


@pytest.mark.slow
@pytest.mark.parametrize("method,model", [("gmp", "resnet50_cifar"), ("rigl", "vgg19")])
def test_gmp_and_rigl_reach_the_ratio(tmp_path, method, model):
    out = tmp_path / "run"
    run(["--method", method, "--model", model, "--width_multiplier", "0.0625",
         "--epochs", "2", "--prune_end_epoch", "1", "--pruning_ratio", "0.8",
         "--output_dir", str(out)] + TINY, tmp_path)
    summary = read_json(out / "summary.json")
    assert summary["method"] == method
    assert summary["initial_ratio"] == (0.8 if method == "rigl" else 0.0)
    assert_exact_sparsity(summary, 0.8)


BAD_FLAGS = [
    (["--pruning_ratio", "1.5"], "--pruning_ratio"),
    (["--pruning_ratio", "0"], "--pruning_ratio"),
    (["--method", "l1"], "--method"),
    (["--initial_ratio", "0.95"], "--initial_ratio"),
    (["--method", "rigl", "--initial_ratio", "0.5"], "--initial_ratio"),
    (["--epochs", "10", "--prune_end_epoch", "20"], "--prune_end_epoch"),
    (["--prune_start_epoch", "90"], "--prune_start_epoch"),
    (["--final_regrow_ratio", "0.9"], "--final_regrow_ratio"),
    (["--model", "resnet18"], "--model"),
    (["--data_source", "folder"], "--data_dir"),
    (["--data_source", "folder", "--data_dir", "{tmp}"], "--data_dir"),
]


def test_bad_flags_fail_at_once_with_one_line_naming_the_flag(tmp_path):
    """Checked before TensorFlow starts: non-zero exit, one error line, nothing written."""
    start = time.time()
    procs = [_start([a.replace("{tmp}", str(tmp_path)) for a in args]
                    + ["--output_dir", str(tmp_path / "run")], tmp_path)
             for args, _ in BAD_FLAGS]
    for proc, (args, flag) in zip(procs, BAD_FLAGS):
        out, err = proc.communicate(timeout=TIMEOUT)
        lines = error_lines(err)
        assert proc.returncode == 2, (args, out, err)
        assert len(lines) == 1 and flag in lines[0], (args, err)
    assert time.time() - start < 60
    assert os.listdir(tmp_path) == []


def test_late_flag_errors_come_before_any_training(tmp_path):
    """Errors found once the data is known: a ΔT that leaves no pruning round (also the
    window [0, 4) with ΔT = 3: its only round would be at iteration 0, before any step), and
    a CIFAR-100 that is not there (tfds, offline)."""
    cases = [
        (["--update_frequency", "1000", "--epochs", "2"] + DATA, "--update_frequency"),
        (["--update_frequency", "3", "--epochs", "2"] + DATA, "--update_frequency"),
        (["--dataset", "cifar100", "--data_source", "tfds", "--data_dir",
          str(tmp_path / "tfds")], "--data_dir"),
    ]
    os.makedirs(tmp_path / "tfds")
    procs = [_start(args + ["--model", "resnet20", "--output_dir", str(tmp_path / f"run{i}")],
                    tmp_path) for i, (args, _) in enumerate(cases)]
    messages = []
    for i, (proc, (args, flag)) in enumerate(zip(procs, cases)):
        out, err = proc.communicate(timeout=TIMEOUT)
        lines = error_lines(err)
        assert proc.returncode == 2 and len(lines) == 1 and flag in lines[0], (args, out, err)
        assert "== " not in out and not os.path.exists(tmp_path / f"run{i}")
        messages.append(lines[0])
    assert "no pruning round" in messages[0] and "to 2 or less" in messages[1]
    assert "cifar100" in messages[2]


@pytest.mark.slow
def test_killed_during_training_resumes_from_the_backup(tmp_path):
    """SIGKILL while the second epoch's backup is written; the rerun restores epoch 1 (the
    masks and the schedule's position with it) and ends at the requested sparsity."""
    out = tmp_path / "run"
    args = ["--model", "resnet20", "--width_multiplier", "0.25", "--epochs", "3",
            "--prune_end_epoch", "2", "--update_frequency", "2", "--pruning_ratio", "0.9",
            "--output_dir", str(out), "--verbose", "2", "--log_every", "1"] + DATA
    killed = run(args, tmp_path, check=False, **{KILL_ENV: "train.backup_write@2"})
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert not os.path.exists(out / "summary.json")
    state = read_json(out / "backup" / "train" / "backup.json")
    assert state["epoch"] == 1 and state["iterations"] == 4
    before = read_csv(out / "logs" / "iterations" / "train.csv")

    again = run(args, tmp_path)
    assert "resuming from the backup" in again.stdout, again.stdout
    summary = read_json(out / "summary.json")
    assert summary["iterations"] == 12
    assert_exact_sparsity(summary, 0.9)
    rows = read_csv(out / "logs" / "iterations" / "train.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, 13))
    # The masks came back with the backup: sparsity never drops back after the resume.
    sparsity = [float(r["sparsity"]) for r in rows]
    assert sparsity[4] >= float(before[3]["sparsity"]) > 0
    assert sparsity[7:] == pytest.approx([sparsity[7]] * 5) and math.isclose(
        sparsity[-1], 0.9, abs_tol=1e-3)
    assert [int(r["epoch"]) for r in read_csv(out / "logs" / "train.csv")] == [0, 1, 2]
    assert not os.path.exists(out / "backup")
