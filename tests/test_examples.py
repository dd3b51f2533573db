"""End-to-end tests of the example scripts (examples/*.py) on tiny data, run as subprocesses
(each has its own absl flags and TensorFlow runtime).

The CIFAR runs share one tiny folder dataset and the pretrained model of one full
``--stage all`` run (a module-scoped fixture); tfds runs go through tfds.testing.mock_data
in a two-line wrapper script.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from multiworker import run_workers

pytestmark = pytest.mark.tf_only(reason="the example scripts feed tf.data pipelines")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
SHARED_MNIST = os.environ.get(  # the shared MNIST beside the checkout, as in CI
    "KERAS_TPP_MNIST_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "keras"))
TIMEOUT = 300

# A tiny CIFAR setting: ResNet-20 at a quarter of the width, 16-image batches, a TPP
# schedule of a few iterations (λ reaches 0.02 after 4, pruned at 6).
TINY_CIFAR = ["--model", "resnet20", "--width_multiplier", "0.25", "--batch_size", "16",
              "--epochs", "1", "--ft_epochs", "1", "--delta", "0.005", "--ceiling", "0.02",
              "--interval", "1", "--stabilize_steps", "2", "--latency_runs", "0",
              "--verbose", "2"]

MOCK_WRAPPER = """\
import runpy, sys
import tensorflow_datasets as tfds
num_examples, script = int(sys.argv[1]), sys.argv[2]
sys.argv = [script] + sys.argv[3:]
with tfds.testing.mock_data(num_examples=num_examples):
    runpy.run_path(script, run_name="__main__")
"""


def _env(tmp, **extra):
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(tmp),
                "KERAS_TPP_CACHE": str(os.path.join(tmp, "cache"))})
    env.update(extra)
    return env


def _command(script, args, mock_examples=None, tmp=None):
    path = os.path.join(EXAMPLES, script)
    if mock_examples is None:
        return [sys.executable, path] + list(args)
    wrapper = os.path.join(tmp, "mock_run.py")
    with open(wrapper, "w") as f:
        f.write(MOCK_WRAPPER)
    return [sys.executable, wrapper, str(mock_examples), path] + list(args)


def run(script, args, tmp, *, mock_examples=None, timeout=TIMEOUT, check=True, **env):
    proc = subprocess.run(_command(script, args, mock_examples, tmp), cwd=tmp,
                          env=_env(tmp, **env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed (rc={proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tensorboard_tags(log_dir):
    """Scalar tags in the TensorBoard event files under ``log_dir``."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    tags = set()
    for root, _, files in os.walk(log_dir):
        for name in files:
            if name.startswith("events.out.tfevents"):
                for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                    event = event_pb2.Event.FromString(record.numpy())
                    tags.update(value.tag for value in event.summary.value)
    return tags


def leftovers(directory):
    """Temporary files of atomic writes that should never survive a run."""
    return [n for n in os.listdir(directory) if n.startswith(".tmp")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """A tiny CIFAR-10-style image folder: train/<class>/NNNN.png, test/<class>/NNNN.png."""
    from PIL import Image

    from keras_tpp.data import CIFAR10_CLASSES, synthetic_shapes

    root = tmp_path_factory.mktemp("cifar_folder")
    for split, per_class, seed in (("train", 8, 0), ("test", 3, 1)):
        x, y = synthetic_shapes(per_class * 10, seed=seed)
        counts = {}
        for image, label in zip(x, y):
            folder = root / split / CIFAR10_CLASSES[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            index = counts.setdefault(int(label), 0)
            counts[int(label)] += 1
            Image.fromarray(image).save(folder / f"{index:04d}.png")
    return str(root)


@pytest.fixture(scope="module")
def cifar_all(cifar_folder, tmp_path_factory):
    """One full --stage all run (folder data, TPP); other tests reuse pretrained.keras."""
    tmp = tmp_path_factory.mktemp("cifar_all")
    model_dir = tmp / "run"
    proc = run("cifar.py", ["--stage", "all", "--method", "tpp", "--data_source", "folder",
                            "--data_dir", cifar_folder, "--model_dir", str(model_dir),
                            "--latency_batch_sizes", "1,4"]
               + TINY_CIFAR + ["--latency_runs", "2"], str(tmp))  # the last value wins
    return str(model_dir), proc


def _with_pretrained(cifar_all, tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    shutil.copy(os.path.join(cifar_all[0], "pretrained.keras"), model_dir)
    return str(model_dir)


# --------------------------------------------------------------------------- quickstart


def test_quickstart_reduced_end_to_end(tmp_path):
    out = tmp_path / "qs"
    run("quickstart.py", ["--out_dir", str(out), "--train_examples", "1600",
                          "--test_examples", "300", "--epochs", "5", "--batch_size", "32",
                          "--ramp_steps", "30", "--stabilize_steps", "10",
                          "--finetune_epochs", "3", "--latency_runs", "2", "--verbose", "0"],
        str(tmp_path))
    summary = read_json(out / "summary.json")
    before, after = summary["before"], summary["after"]
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert after["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert set(summary["latency_ms"]) == {"1", "64"}
    assert all(v["after_ms"] > 0 for v in summary["latency_ms"].values())
    assert os.path.isfile(out / "thin.keras") and not leftovers(out)
    rows = read_csv(out / "logs" / "prune.csv")
    assert float(rows[-1]["prune_phase"]) == 2.0 and float(rows[-1]["prune_lambda"]) == 1.0


# --------------------------------------------------------------------------- cifar.py


def test_cifar_all_stages_on_an_image_folder_with_tpp(cifar_all):
    model_dir, proc = cifar_all
    for name in ("pretrained.keras", "pruned.keras", "final.keras", "summary.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed when done
    assert not leftovers(model_dir)
    summary = read_json(os.path.join(model_dir, "summary.json"))
    stages = summary["stages"]
    assert list(stages) == ["pretrain", "prune", "finetune"]
    prune = stages["prune"]
    assert prune["method"] == "tpp" and prune["iterations"] >= 6
    assert prune["params"] < prune["dense_params"] and prune["macs"] < prune["dense_macs"]
    # SPEC's ResNet layer set: the first conv of each block, half of its filters.
    assert sorted(prune["pruned_channels"]) == sorted(
        f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3))
    assert all(len(v["removed"]) == -(-v["of"] // 2) == v["of"] - v["kept"]
               for v in prune["pruned_channels"].values())
    assert set(prune["latency_ms"]) == {"1", "4"}
    assert summary["result"]["params_ratio"] > 1.2
    assert summary["flags"]["method"] == "tpp" and summary["data"]["source"] == "folder"
    logs = os.path.join(model_dir, "logs")
    prune_rows = read_csv(os.path.join(logs, "prune.csv"))
    assert {"prune_lambda", "prune_phase", "learning_rate", "val_accuracy"} <= set(
        prune_rows[0])
    assert float(prune_rows[-1]["prune_phase"]) == 2.0
    assert float(read_csv(os.path.join(logs, "pretrain.csv"))[0]["learning_rate"]) == \
        pytest.approx(0.1)
    assert float(read_csv(os.path.join(logs, "finetune.csv"))[0]["learning_rate"]) == \
        pytest.approx(0.01)
    assert {"epoch_prune_lambda", "epoch_prune_phase", "epoch_learning_rate",
            "epoch_accuracy"} <= tensorboard_tags(os.path.join(logs, "tensorboard", "prune"))
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "did not reach the pruned phase" not in proc.stderr


def test_cifar_all_skips_completed_stages(cifar_all, tmp_path, cifar_folder):
    """--stage all again with the same flags: every stage is recognized as done."""
    model_dir = tmp_path / "run"
    shutil.copytree(cifar_all[0], model_dir)
    before = sha(model_dir / "final.keras")
    summary = read_json(model_dir / "summary.json")
    flags = summary["flags"]
    args = [f"--{k}={','.join(v) if isinstance(v, list) else v}"
            for k, v in flags.items() if v is not None and not isinstance(v, bool)]
    args += [f"--{'' if v else 'no'}{k}" for k, v in flags.items() if isinstance(v, bool)]
    args = [a for a in args if not a.startswith("--model_dir")]
    proc = run("cifar.py", args + [f"--model_dir={model_dir}"], str(tmp_path))
    assert proc.stdout.count("skipping") == 3, proc.stdout
    assert sha(model_dir / "final.keras") == before


def test_cifar_tfds_prune_stage_with_l1(cifar_all, tmp_path):
    model_dir = _with_pretrained(cifar_all, tmp_path)
    run("cifar.py", ["--stage", "prune", "--method", "l1", "--data_source", "tfds",
                     "--model_dir", model_dir] + TINY_CIFAR, str(tmp_path), mock_examples=32)
    summary = read_json(os.path.join(model_dir, "summary.json"))
    prune = summary["stages"]["prune"]
    assert prune["method"] == "l1" and prune["iterations"] == 0  # one-shot: no training
    assert prune["params"] < prune["dense_params"]
    assert os.path.isfile(os.path.join(model_dir, "pruned.keras"))
    assert summary["data"]["source"] == "tfds"


def test_cifar_prune_resumes_after_a_kill(cifar_all, tmp_path):
    """Kill a GReg-1 prune stage after its first epoch, rerun the same command: it resumes
    from the backup (epoch > 0, λ continues) and finishes."""
    model_dir = _with_pretrained(cifar_all, tmp_path)
    args = ["--stage", "prune", "--method", "greg1", "--data_source", "synthetic",
            "--max_train_examples", "64", "--max_test_examples", "32",
            "--model_dir", model_dir] + TINY_CIFAR + [
                "--delta", "0.0005", "--steps_per_epoch", "5", "--stabilize_steps", "4",
                "--validation_freq", "1000"]
    csv_path = os.path.join(model_dir, "logs", "prune.csv")
    proc = subprocess.Popen(_command("cifar.py", args), cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(csv_path) and len(read_csv(csv_path)) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + (
            proc.stdout.read()[-3000:])
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed_rows = read_csv(csv_path)
    assert not os.path.exists(os.path.join(model_dir, "pruned.keras"))
    assert os.path.isdir(os.path.join(model_dir, "backup", "prune"))

    again = run("cifar.py", args, str(tmp_path))
    assert "resuming from the backup" in again.stdout
    rows = read_csv(csv_path)
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(len(rows))) and len(rows) > len(killed_rows)
    lambdas = [float(r["prune_lambda"]) for r in rows]
    assert lambdas == sorted(lambdas) and lambdas[0] > 0  # λ never restarted
    assert float(rows[-1]["prune_phase"]) == 2.0
    prune = read_json(os.path.join(model_dir, "summary.json"))["stages"]["prune"]
    # 40 increments of 0.0005 to τ = 0.02, one per iteration, 4 stabilizing steps, then the
    # step that saw the pruned phase (GReg-1 may stop a layer early, at its stop_ratio).
    assert 5 <= prune["iterations"] <= 40 + 4 + 1
    assert os.path.isfile(os.path.join(model_dir, "pruned.keras"))
    assert not os.path.exists(os.path.join(model_dir, "backup"))


def _assert_same_training_state(a, b, what):
    """Equal arrays, except BatchNormalization moving statistics: Keras 3 creates them with
    aggregation="none", so each replica keeps its own (computed on its share of the batch)."""
    assert sorted(a) == sorted(b)
    compared = 0
    for key in a:
        if "moving_mean" in key or "moving_variance" in key:
            assert np.all(np.isfinite(a[key])) and np.all(np.isfinite(b[key]))
            continue
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")
        compared += 1
    assert compared > 20


def test_cifar_prune_multi_worker_two_processes(cifar_all, tmp_path):
    """MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 run the TPP prune
    stage (DistributedTrainer); both end with identical weights, masks and schedule state,
    and only the chief writes the outputs."""
    model_dir = _with_pretrained(cifar_all, tmp_path)
    args = ["--stage", "prune", "--method", "tpp", "--strategy", "multi_worker",
            "--data_source", "synthetic", "--max_train_examples", "64",
            "--max_test_examples", "32", "--model_dir", model_dir,
            "--validation_freq", "1000"] + TINY_CIFAR
    run_workers(
        lambda index: _command("cifar.py", args + [
            "--dump_state", str(tmp_path / f"state{index}.npz")]),
        _env(tmp_path), tmp_path, cwd=str(tmp_path), timeout=TIMEOUT)

    states = [dict(np.load(tmp_path / f"state{i}.npz")) for i in range(2)]
    for state in states:
        assert int(state["num_replicas"]) == 2
        assert int(state["iterations"]) >= 6  # the pruned phase starts at iteration 6
        assert float(state["prune_lambda"]) == pytest.approx(0.02)
        assert np.all(state["enforced"] == 1.0)
    _assert_same_training_state(states[0], states[1], "worker 0 vs worker 1")
    summary = read_json(os.path.join(model_dir, "summary.json"))
    assert summary["stages"]["prune"]["params"] < summary["stages"]["prune"]["dense_params"]
    assert os.path.isfile(os.path.join(model_dir, "pruned.keras"))
    assert os.path.isfile(os.path.join(model_dir, "logs", "prune.csv"))  # the chief's
    assert not leftovers(model_dir)


def test_cifar_prune_mirrored_on_two_logical_cpus(cifar_all, tmp_path):
    model_dir = _with_pretrained(cifar_all, tmp_path)
    dump = tmp_path / "state.npz"
    run("cifar.py", ["--stage", "prune", "--method", "tpp", "--strategy", "mirrored",
                     "--num_cpu_devices", "2", "--data_source", "synthetic",
                     "--max_train_examples", "64", "--max_test_examples", "32",
                     "--model_dir", model_dir, "--dump_state", str(dump),
                     "--validation_freq", "1000"] + TINY_CIFAR,
        str(tmp_path))
    state = dict(np.load(dump))
    assert int(state["num_replicas"]) == 2 and int(state["iterations"]) >= 6
    assert np.all(state["enforced"] == 1.0)
    replicas = [{k.rsplit("@", 1)[0]: v for k, v in state.items() if k.endswith(f"@replica{r}")}
                for r in (0, 1)]
    _assert_same_training_state(replicas[0], replicas[1], "replica 0 vs replica 1")
    assert os.path.isfile(os.path.join(model_dir, "pruned.keras"))


# --------------------------------------------------------------------------- imagenet.py


def _imagenet_args(model_dir):
    return ["--image_size", "32", "--batch_size", "2", "--epochs", "1", "--ft_epochs", "1",
            "--steps_per_epoch", "1", "--max_test_examples", "2", "--num_classes", "1000",
            "--latency_runs", "0", "--verbose", "2", "--model_dir", model_dir]


def _check_preset(prune, preset_ratios):
    pruned = prune["pruned_channels"]
    assert len(pruned) == 32  # conv1 and conv2 of the 16 bottlenecks
    for name, entry in pruned.items():
        count, total = len(entry["removed"]), entry["of"]
        stage = int(name[4])
        assert name.endswith(("_1_conv", "_2_conv"))
        assert count == int(np.ceil(preset_ratios[stage - 2] * total - 1e-9)), name


def test_imagenet_prune_stage_l1_on_mock_data(tmp_path):
    """ResNet-50 at 32×32 on tfds mock data: the 2.56x preset applied by L1 (no prune-stage
    training) to a pretrained.keras saved here; evaluation, surgery and outputs."""
    import keras

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=1000,
                                classifier_activation=None).save(model_dir / "pretrained.keras")
    run("imagenet.py", ["--stage", "prune", "--method", "l1", "--preset", "2.56x"]
        + _imagenet_args(str(model_dir)), str(tmp_path), mock_examples=4)
    summary = read_json(model_dir / "summary.json")
    _check_preset(summary["stages"]["prune"], (0.74, 0.74, 0.6, 0.21))
    assert summary["result"]["macs_ratio"] > 2
    assert os.path.isfile(model_dir / "pruned.keras")


@pytest.mark.slow
def test_imagenet_all_stages_tpp_mixed_precision_on_mock_data(tmp_path):
    """All three stages of ResNet-50 (64×64, mock data) with TPP under mixed_float16.

    (At 32×32 with 2-image batches, Keras' float16 ResNet-50 gets non-finite gradients at
    every step on CPU — conv5 is 1×1 there — so loss scaling would skip every step.)"""
    model_dir = str(tmp_path / "run")
    run("imagenet.py", ["--stage", "all", "--method", "tpp", "--preset", "1.49x",
                        "--mixed_precision", "--delta", "0.005", "--ceiling", "0.01",
                        "--interval", "1", "--stabilize_steps", "1"]
        + _imagenet_args(model_dir) + ["--image_size", "64", "--batch_size", "4",
                                       "--validation_freq", "50"],
        str(tmp_path), mock_examples=8)
    summary = read_json(os.path.join(model_dir, "summary.json"))
    _check_preset(summary["stages"]["prune"], (0.3, 0.3, 0.3, 0.14))
    assert summary["stages"]["prune"]["iterations"] >= 3
    for name in ("pretrained.keras", "pruned.keras", "final.keras"):
        assert os.path.isfile(os.path.join(model_dir, name))


# --------------------------------------------------------------------------- mnist_mlp.py


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_MNIST, "datasets", "mnist.npz")),
                    reason="shared MNIST copy not available")
def test_mnist_mlp_three_methods_on_real_mnist(tmp_path):
    model_dir = tmp_path / "mlp"
    run("mnist_mlp.py", ["--data_dir", SHARED_MNIST, "--train_examples", "1000",
                         "--test_examples", "200", "--epochs", "2", "--retrain_epochs", "1",
                         "--retrain_lr", "1e-2,1e-3", "--delta", "0.25", "--interval", "1",
                         "--stabilize_steps", "2", "--jsv_examples", "16",
                         "--latency_runs", "2", "--model_dir", str(model_dir)], str(tmp_path))
    summary = read_json(model_dir / "summary.json")
    methods = summary["methods"]
    assert list(methods) == ["l1", "l1_orthp", "tpp"]
    assert methods["l1_orthp"]["jsv"]["mean"] == pytest.approx(1.0, abs=1e-4)  # OrthP: exact
    assert methods["l1"]["params"] == methods["tpp"]["params"] < summary["dense"]["params"]
    assert methods["tpp"]["macs"] < summary["dense"]["macs"]
    assert set(methods["tpp"]["latency_ms"]) == {"1", "64"}
    for result in methods.values():
        assert set(result["retrained"]) == {"0.01", "0.001"}
        assert all(0 <= a <= 1 for a in result["retrained"].values())
    assert summary["dense"]["accuracy"] > 0.5
    with open(model_dir / "mnist_mlp.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(model_dir / "logs" / "tpp_prune.csv")


# --------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    ("cifar.py", ["--model", "resnet18"], "--model"),
    ("cifar.py", ["--dataset", "svhn"], "--dataset"),
    ("cifar.py", ["--pruning_ratio", "1.5"], "--pruning_ratio"),
    ("cifar.py", ["--pruning_ratio", "*_conv1=0.5"], "--pruning_ratio"),
    ("cifar.py", ["--stage", "finetune", "--model_dir", "{tmp}/empty"], "--stage"),
    ("cifar.py", ["--data_source", "folder", "--data_dir", "{tmp}"], "--data_dir"),
    ("cifar.py", ["--ft_schedule", "lrw", "--epochs", "10", "--ft_epochs", "20"],
     "--ft_epochs"),
    ("cifar.py", ["--batch_size", "0"], "--batch_size"),
    ("imagenet.py", ["--preset", "4x"], "--preset"),
    ("imagenet.py", ["--stage", "prune", "--model_dir", "{tmp}/empty"], "--stage"),
    ("mnist_mlp.py", ["--retrain_lr", "fast"], "--retrain_lr"),
    ("mnist_mlp.py", ["--methods", "l1,obd"], "--methods"),
    ("quickstart.py", ["--train_examples", "5"], "--train_examples"),
]


def test_bad_inputs_fail_with_one_line_naming_the_flag(tmp_path):
    """Flag errors are caught before TensorFlow starts: all cases run concurrently."""
    procs = []
    for script, args, _ in BAD_INPUTS:
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        procs.append(subprocess.Popen(_command(script, args), cwd=tmp_path, env=_env(tmp_path),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for proc, (script, args, flag) in zip(procs, BAD_INPUTS):
        out, err = proc.communicate(timeout=TIMEOUT)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode not in (0, None), (script, args, out, err)
        assert len(lines) == 1 and flag in lines[0], (script, args, err)
    assert os.listdir(tmp_path) == []  # nothing written anywhere


def test_unknown_method_is_checked_against_the_registry(tmp_path):
    proc = run("cifar.py", ["--method", "ttp", "--data_source", "synthetic",
                            "--model_dir", str(tmp_path / "run")], tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--method" in lines[0] and "'ttp'" in lines[0] and "'greg2'" in lines[0]
    assert not os.path.exists(tmp_path / "run")
    proc = run("cifar.py", ["--method", "magnitude", "--data_source", "synthetic",
                            "--model_dir", str(tmp_path / "run")], tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--method" in lines[0] and "individual weights" in lines[0]


def test_bad_input_found_late_leaves_outputs_alone(cifar_all, cifar_folder, tmp_path):
    """A layer pattern that matches nothing is only found once the model is loaded: one-line
    error naming --pruning_ratio, and the existing pruned.keras and summary are untouched;
    a folder with the wrong number of classes names --data_dir."""
    model_dir = _with_pretrained(cifar_all, tmp_path)
    target = os.path.join(model_dir, "pruned.keras")
    shutil.copy(os.path.join(model_dir, "pretrained.keras"), target)
    before = sha(target)
    proc = run("cifar.py", ["--stage", "prune", "--pruning_ratio", "stage9_*:0.5",
                            "--data_source", "synthetic", "--max_train_examples", "32",
                            "--max_test_examples", "16", "--model_dir", model_dir]
               + TINY_CIFAR, str(tmp_path), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--pruning_ratio" in lines[0] and "stage9_*" in lines[0]
    assert sha(target) == before
    assert sorted(os.listdir(model_dir)) == ["pretrained.keras", "pruned.keras"]

    proc = run("cifar.py", ["--stage", "pretrain", "--dataset", "cifar100",
                            "--data_source", "folder", "--data_dir", cifar_folder,
                            "--model_dir", model_dir] + TINY_CIFAR, str(tmp_path), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--data_dir" in lines[0] and "100" in lines[0]
    assert sha(target) == before


# --------------------------------------------------------------------------- lost runs


KILL_ENV = "KERAS_TPP_TEST_KILL_AT"
# Tiny, deterministic: 2 iterations per epoch; TPP reaches its pruned phase at iteration 6.
SYNTHETIC = ["--data_source", "synthetic", "--max_train_examples", "64",
             "--max_test_examples", "32", "--steps_per_epoch", "2", "--log_every", "1"]


def _killed(script, args, tmp, point):
    proc = run(script, args, tmp, check=False, **{KILL_ENV: point})
    assert proc.returncode == -9, f"not killed at {point} (rc={proc.returncode}):\n" + (
        proc.stdout[-2000:] + proc.stderr[-3000:])
    return proc


def _keras_weights(path):
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


def _backup_files(model_dir, stage):
    directory = os.path.join(model_dir, "backup", stage)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.fixture(scope="module")
def cifar_archive(cifar_folder, tmp_path_factory):
    """The tiny image folder as a .tar.gz (the offline CIFAR copy is one)."""
    import tarfile

    archive = tmp_path_factory.mktemp("archive") / "tiny_cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_folder, arcname="tiny_cifar")
    return str(archive)


def test_cifar_killed_during_backup_write_and_before_outputs_reruns_to_the_same_result(
        cifar_archive, tmp_path):
    """SIGKILL (a) in the middle of writing the prune stage's backup and (b) after the
    fine-tuning's training, before its outputs: each rerun of the same command completes,
    keeps the trained state, cleans up, and ends with the same weights and accuracies as an
    uninterrupted run. The uninterrupted run's output is also checked (stage announcements,
    archive report, table, plot, per-iteration log, quiet stderr, file modes, labels)."""
    args = ["--stage", "all", "--data_source", "folder", "--data_dir", cifar_archive,
            "--steps_per_epoch", "2", "--log_every", "1"] + TINY_CIFAR
    straight = str(tmp_path / "straight")
    clean = run("cifar.py", args + ["--model_dir", straight], str(tmp_path))

    model_dir = str(tmp_path / "killed")
    args += ["--model_dir", model_dir]
    _killed("cifar.py", args, str(tmp_path), "prune.backup_write")
    assert os.path.isfile(os.path.join(model_dir, "pretrained.keras"))
    assert not os.path.exists(os.path.join(model_dir, "pruned.keras"))
    assert any(n.startswith(".tmp-") for n in _backup_files(model_dir, "prune"))

    rerun = _killed("cifar.py", args, str(tmp_path), "finetune.after_train")
    assert "removed 1 temporary file(s) left by a killed run" in rerun.stdout, rerun.stdout
    assert "[pretrain]" in rerun.stdout and "skipping" in rerun.stdout
    assert os.path.isfile(os.path.join(model_dir, "pruned.keras"))
    assert not os.path.exists(os.path.join(model_dir, "final.keras"))
    state = read_json(os.path.join(model_dir, "backup", "finetune", "backup.json"))
    assert state["finished"]  # the fine-tuning's training is kept

    last = run("cifar.py", args, str(tmp_path))
    assert "its training had finished" in last.stdout, last.stdout
    assert not os.path.exists(os.path.join(model_dir, "backup"))
    assert not leftovers(model_dir)

    a, b = (read_json(os.path.join(d, "summary.json"))["stages"] for d in (straight, model_dir))
    for stage in ("pretrain", "prune", "finetune"):
        assert a[stage]["accuracy"] == pytest.approx(b[stage]["accuracy"], abs=1e-6), stage
        assert a[stage]["iterations"] == b[stage]["iterations"], stage
    assert a["prune"]["pruned_channels"] == b["prune"]["pruned_channels"]
    for name in ("pruned.keras", "final.keras"):
        for x, y in zip(_keras_weights(os.path.join(straight, name)),
                        _keras_weights(os.path.join(model_dir, name))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)

    # What the uninterrupted run showed and wrote.
    out = clean.stdout
    for i, stage in enumerate(("pretrain", "prune", "finetune")):
        assert f"== stage {i + 1}/3: {stage}" in out
    assert f"[data] extracted {cifar_archive}: 110 files in " in out  # 80 train + 30 test
    assert "using the earlier extraction" in rerun.stdout
    table = out[out.index("before (dense)"):]
    assert "test accuracy" in table and "params" in table and "MACs" in table
    assert '"final_accuracy"' not in out  # no JSON dump
    with open(os.path.join(straight, "training.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(os.path.join(straight, "logs", "iterations", "prune.csv"))
    assert [int(r["iteration"]) for r in rows] == list(range(1, a["prune"]["iterations"] + 1))
    assert float(rows[0]["prune_lambda"]) == pytest.approx(0.005) and rows[0]["loss"]
    assert "shuffle=True" not in clean.stderr
    assert "InitializeLog" not in clean.stderr and "cudart_stub" not in clean.stderr
    for name in ("summary.json", "pretrained.keras", "pruned.keras", "final.keras",
                 "training.png"):
        assert os.stat(os.path.join(straight, name)).st_mode & 0o777 == 0o644, name
    for entry in a["prune"]["pruned_channels"].values():
        assert set(entry) == {"removed", "kept", "of"}
        assert len(entry["removed"]) + entry["kept"] == entry["of"]


def test_cifar_damaged_backup_is_reported_and_the_stage_restarts(tmp_path):
    """A backup torn by a kill (as Keras' non-atomic BackupAndRestore leaves it) no longer
    crashes every rerun: it is reported, naming the file, and the stage starts over."""
    model_dir = str(tmp_path / "run")
    args = ["--stage", "pretrain", "--model_dir", model_dir] + SYNTHETIC + TINY_CIFAR
    _killed("cifar.py", args, str(tmp_path), "pretrain.after_train")
    weights = [n for n in _backup_files(model_dir, "pretrain") if n.endswith(".weights.h5")]
    assert len(weights) == 1
    path = os.path.join(model_dir, "backup", "pretrain", weights[0])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    again = run("cifar.py", args, str(tmp_path))
    lines = [line for line in again.stdout.splitlines() if "is damaged" in line]
    assert len(lines) == 1 and path in lines[0], again.stdout
    assert os.path.isfile(os.path.join(model_dir, "pretrained.keras"))
    assert read_json(os.path.join(model_dir, "summary.json"))["stages"]["pretrain"][
        "iterations"] == 2
    assert not os.path.exists(os.path.join(model_dir, "backup")) and not leftovers(model_dir)


def test_cifar_rerun_with_other_flags_discards_the_backup_naming_them(tmp_path):
    """A prune stage killed at ratio 0.5, rerun at 0.25: the 0.5 backup is discarded with a
    message naming --pruning_ratio, and the result and summary are those of 0.25."""
    model_dir = str(tmp_path / "run")
    args = ["--stage", "all", "--model_dir", model_dir, "--ft_epochs", "1"] + SYNTHETIC + \
        TINY_CIFAR
    _killed("cifar.py", args + ["--pruning_ratio", "0.5"], str(tmp_path), "prune.after_train")
    assert _backup_files(model_dir, "prune")
    again = run("cifar.py", args + ["--pruning_ratio", "0.25"], str(tmp_path))
    lines = [line for line in again.stdout.splitlines() if "discarding the backup" in line]
    assert len(lines) == 1 and "--pruning_ratio: '0.5' → '0.25'" in lines[0], again.stdout
    assert "resuming" not in again.stdout
    summary = read_json(os.path.join(model_dir, "summary.json"))
    assert summary["flags"]["pruning_ratio"] == "0.25"
    for entry in summary["stages"]["prune"]["pruned_channels"].values():
        assert len(entry["removed"]) == int(np.ceil(0.25 * entry["of"] - 1e-9))


def test_cifar_pruning_ratio_typo_is_reported_before_any_training(tmp_path):
    model_dir = tmp_path / "run"
    start = time.time()
    proc = run("cifar.py", ["--stage", "all", "--pruning_ratio", "stage9_*:0.5",
                            "--model_dir", str(model_dir)] + SYNTHETIC + TINY_CIFAR,
               str(tmp_path), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--pruning_ratio" in lines[0] and "stage9_*" in lines[0]
    assert "== stage" not in proc.stdout and not os.path.exists(model_dir / "pretrained.keras")
    assert time.time() - start < TIMEOUT


def test_cifar_corrupt_image_is_a_one_line_error_naming_it(cifar_folder, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(cifar_folder, folder)
    bad = folder / "train" / "bird" / "0001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    proc = run("cifar.py", ["--stage", "pretrain", "--data_source", "folder", "--data_dir",
                            str(folder), "--model_dir", str(tmp_path / "run")] + TINY_CIFAR,
               str(tmp_path), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "--data_dir" in lines[0] and str(bad) in lines[0]


@pytest.mark.parametrize("script", ["cifar.py", "quickstart.py"])
def test_helpshort_exits_zero(script, tmp_path):
    proc = run(script, ["--helpshort"], str(tmp_path), check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--seed" in proc.stdout + proc.stderr
