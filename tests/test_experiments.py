"""keras_tpp.experiments: atomic writes, crash-safe fingerprinted backups, per-iteration logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_tpp.experiments import atomic, backup, history

pytestmark = pytest.mark.tf_only(reason="the experiments runner's stages use tf.data and tf.distribute")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


def _fit(model, backup_dir, epochs, log=None, extra=()):
    x, y = _data()
    messages = [] if log is None else log
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[backup.backup_callback(backup_dir, stage="t",
                                                log=messages.append), *extra])
    return messages


def test_experiments_modules_import_without_tensorflow_or_keras():
    """The modules only import Keras / TensorFlow inside the functions that need them."""
    code = (
        "import sys, types, os\n"
        f"pkg = types.ModuleType('keras_tpp'); pkg.__path__ = [os.path.join({REPO!r}, "
        "'keras_tpp')]\n"
        "sys.modules['keras_tpp'] = pkg\n"
        "import keras_tpp.experiments, keras_tpp.experiments.history\n"
        "import keras_tpp.experiments.report, keras_tpp.experiments.faults\n"
        "import keras_tpp.experiments.config, keras_tpp.experiments.training\n"
        "import keras_tpp.experiments.runner\n"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_atomic_write_mode_cleanup_and_failure(tmp_path):
    target = tmp_path / "out" / "summary.json"
    old = os.umask(0o022)
    try:
        atomic.atomic_write_json(str(target), {"a": np.float32(1.5), "b": np.arange(2)})
    finally:
        os.umask(old)
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    assert (os.stat(target).st_mode & 0o777) == 0o644  # not mkstemp's 0600

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(str(target), failing)
    assert json.loads(target.read_text())["a"] == 1.5  # the old file is intact
    assert os.listdir(target.parent) == ["summary.json"]  # no temporary left

    # A temporary of a dead process is removed; one of a live process is not.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = target.parent / f".tmp-{dead.pid}-model.keras"
    live = target.parent / f".tmp-{os.getpid()}-model.keras"
    stale.write_text("x")
    live.write_text("x")
    assert atomic.remove_stale_temporaries(str(target.parent)) == [str(stale)]
    assert live.exists() and not stale.exists()


def test_backup_resumes_and_a_finished_backup_skips_training(tmp_path):
    backup_dir = str(tmp_path / "backup")
    reference = _model()
    _fit(reference, str(tmp_path / "ref"), epochs=3)

    model = _model()
    _fit(model, backup_dir, epochs=2)  # a 2-epoch run: its backup stays after fit
    state = json.loads((tmp_path / "backup" / backup.STATE_FILE).read_text())
    assert state["epoch"] == 2 and state["finished"] and state["iterations"] == 4
    resumed = _model(seed=1)  # other initial weights: all must come from the backup
    log = _fit(resumed, backup_dir, epochs=3)
    assert any("restored" in m and "epoch 2" in m for m in log), log
    assert int(resumed.optimizer.iterations.numpy()) == 6
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # Finished at epoch 3 of 3: a rerun restores and trains no further.
    again = _model(seed=2)
    log = _fit(again, backup_dir, epochs=3)
    assert any("its training had finished" in m for m in log), log
    assert int(again.optimizer.iterations.numpy()) == 6
    for a, b in zip(reference.get_weights(), again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("damage", ["truncate", "no_record", "keras_latest"])
def test_damaged_backup_is_reported_and_ignored(tmp_path, damage):
    backup_dir = tmp_path / "backup"
    _fit(_model(), str(backup_dir), epochs=1)
    state = json.loads((backup_dir / backup.STATE_FILE).read_text())
    weights = backup_dir / state["file"]
    if damage == "truncate":  # what a kill during a non-atomic write leaves
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "no_record":
        (backup_dir / backup.STATE_FILE).unlink()
    else:  # keras.callbacks.BackupAndRestore's file, torn
        weights.unlink()
        (backup_dir / backup.STATE_FILE).unlink()
        (backup_dir / "latest.weights.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    fresh = _model(seed=3)
    initial = fresh.get_weights()
    log = _fit(fresh, str(backup_dir), epochs=1)
    damaged = [m for m in log if "is damaged" in m]
    assert len(damaged) == 1, log
    expected = "latest.weights.h5" if damage == "keras_latest" else (
        state["file"] if damage == "truncate" else "")
    assert expected in damaged[0]
    assert int(fresh.optimizer.iterations.numpy()) == 2  # trained from the start
    reference = _model(seed=3)
    for a, b in zip(reference.get_weights(), initial):
        np.testing.assert_array_equal(a, b)
    _fit(reference, str(tmp_path / "ref"), epochs=1)
    for a, b in zip(reference.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_kill_during_backup_write_keeps_the_previous_backup(tmp_path):
    """A subprocess SIGKILLs itself in the middle of its second backup write: the first
    backup stays valid and is what a rerun restores."""
    backup_dir = tmp_path / "backup"
    script = (
        "import sys, numpy as np, keras\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_experiments import _model, _fit\n"
        f"_fit(_model(), {str(backup_dir)!r}, epochs=3)\n")
    env = dict(os.environ, KERAS_TPP_TEST_KILL_AT="t.backup_write@2",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = os.listdir(backup_dir)
    assert any(n.startswith(".tmp-") for n in names), names  # the torn write
    assert backup.read_backup_state(str(backup_dir))["epoch"] == 1
    assert len(atomic.remove_stale_temporaries(str(backup_dir))) == 1
    resumed = _model(seed=1)
    log = _fit(resumed, str(backup_dir), epochs=3)
    assert any("restored" in m and "epoch 1" in m for m in log), log
    reference = _model()
    _fit(reference, str(tmp_path / "ref"), epochs=3)
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fingerprint_mismatch_discards_the_backup_naming_the_flags(tmp_path):
    backup_dir = str(tmp_path / "backup")
    messages = []
    assert backup.prepare_backup_dir(backup_dir, {"pruning_ratio": "0.5", "seed": 0},
                                     log=messages.append) is False
    _fit(_model(), backup_dir, epochs=1)
    assert backup.prepare_backup_dir(backup_dir, {"pruning_ratio": "0.5", "seed": 0},
                                     log=messages.append) is True
    assert backup.prepare_backup_dir(backup_dir, {"pruning_ratio": "0.25", "seed": 0},
                                     log=messages.append) is False
    assert len(messages) == 1 and "--pruning_ratio: '0.5' → '0.25'" in messages[0], messages
    assert "seed" not in messages[0]
    assert os.listdir(backup_dir) == [backup.FINGERPRINT_FILE]  # the old training is gone
    assert json.loads(open(os.path.join(backup_dir, backup.FINGERPRINT_FILE)).read()) == {
        "pruning_ratio": "0.25", "seed": 0}


def test_iteration_logger_and_plot(tmp_path):
    path = str(tmp_path / "it.csv")
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
              callbacks=[history.iteration_logger(path, every=2, flush_every=1)])
    rows = history.read_rows(path)
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6, 8]
    assert [int(r["epoch"]) for r in rows] == [0, 0, 1, 1]
    assert all(float(r["learning_rate"]) == pytest.approx(0.1) for r in rows)
    assert all(r["loss"] for r in rows)
    png = history.plot_history({"train": path, "missing": str(tmp_path / "no.csv")},
                               str(tmp_path / "plot.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_run_config_fingerprints_and_describes_stages():
    from keras_tpp.experiments.config import RunConfig

    config = RunConfig(model_dir="run", settings={
        "epochs": 3, "pruning_ratio": "0.5", "ft_lr": 0.01, "verbose": 1, "model": "r20"})
    assert config.fingerprint("pretrain") == {"epochs": 3, "model": "r20"}
    assert config.fingerprint("prune") == {"epochs": 3, "pruning_ratio": "0.5", "model": "r20"}
    assert "ft_lr" in config.fingerprint("finetune")
    assert config.stages() == ["pretrain", "prune", "finetune"]
    assert "tpp at pruning_ratio 0.5" in config.describe("prune")


def test_stage_runner_runs_from_a_dataclass_without_flags(tmp_path, capsys):
    """StageRunner reads only its RunConfig: all three stages of a tiny CNN, in process."""
    import tensorflow as tf

    from keras_tpp.experiments.config import RunConfig
    from keras_tpp.experiments.runner import ScriptSpec, StageRunner

    def build_model():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))

    def make_data():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
        y = rng.integers(0, 3, size=32)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        return ds, ds, {"source": "test arrays"}

    spec = ScriptSpec(name="test", build_model=build_model, make_data=make_data,
                      prune_targets=lambda ratio: (ratio, None), finetune_recipe="cifar",
                      pretrain_boundaries=(0.5,), finetune_boundaries=(0.5,),
                      tpp_recipe_epochs=120)
    config = RunConfig(model_dir=str(tmp_path / "run"), method="l1", pruning_ratio=0.5,
                       epochs=1, ft_epochs=1, latency_runs=0, verbose=0, log_every=1,
                       settings={"method": "l1", "pruning_ratio": "0.5"})
    keras.utils.set_random_seed(0)
    StageRunner(spec, config, tf.distribute.get_strategy()).run()
    out = capsys.readouterr().out
    assert "== stage 3/3: finetune" in out and "before (dense)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["flags"] == {"method": "l1", "pruning_ratio": "0.5"}
    assert summary["stages"]["prune"]["pruned_channels"]["c1"]["kept"] == 4
    assert summary["stages"]["finetune"]["iterations"] == 4
    assert sorted(os.listdir(tmp_path / "run")) == [
        "final.keras", "logs", "pretrained.keras", "pruned.keras", "summary.json",
        "training.png"]
