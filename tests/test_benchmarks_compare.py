"""Smoke test of benchmarks/gmp_vs_tfmot.py: tfmot against keras_tpp's GMP and GraNet.

Runs the driver end to end on keras_tpp's synthetic shapes (a few hundred 16×16 images, a
tiny CNN, 20 steps), each arm in its own process, and checks the JSON it writes. Skipped
unless tensorflow-model-optimization and tf_keras are installed (``pip install -e
".[compare]"``); about 50 s on 2 cores, hence ``slow``.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "benchmarks", "gmp_vs_tfmot.py")
ARMS = ("tfmot", "keras_tpp-gmp", "keras_tpp-granet")
TARGET = 0.9

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None
    or importlib.util.find_spec("tf_keras") is None,
    reason="needs the [compare] extra: tf_keras and tensorflow-model-optimization")


@pytest.mark.slow
def test_driver_runs_all_arms_to_the_target_sparsity(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, DRIVER, "--data", "synthetic", "--sparsity", str(TARGET),
         "--arms", ",".join(ARMS), "--work_dir", str(tmp_path / "work"), "--out", str(out),
         "--arm_timeout", "300"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["arms"]) == set(ARMS)
    for arm in ARMS:
        r = result["arms"][arm]
        assert "error" not in r, (arm, r.get("log_tail"))
        assert abs(r["sparsity"] - TARGET) <= 0.01, (arm, r["sparsity"])
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["step_ms_mean"] > 0 and r["steps_timed"] > 0
        assert 0 < r["tflite_sparse_bytes"] < r["tflite_dense_bytes"], arm
        assert r["init_weights_match"], arm  # the same initial weights in every arm
    # Each framework stayed in its own process.
    assert not result["arms"]["tfmot"]["imported"]["keras_tpp"]
    for arm in ARMS[1:]:
        imported = result["arms"][arm]["imported"]
        assert imported["keras_tpp"] and not imported["tf_keras"] and not imported["tfmot"]
        assert abs(result["arms"][arm]["report_sparsity"] - TARGET) <= 0.01
    assert result["arms"]["keras_tpp-gmp"]["step_time_ratio_vs_tfmot"] > 0
    assert "tfmot" in result["table"] and "keras_tpp-granet" in result["table"]
