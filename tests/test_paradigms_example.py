"""End-to-end tests of examples/paradigms.py (every pruning paradigm on one model).

The script runs as a subprocess (its own absl flags and TensorFlow runtime) on keras_tpp's
synthetic shapes in gray (32×32, 10 classes) with MLP-7-Linear: 200 training images in
batches of 25 (8 iterations per epoch).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.tf_only(reason="the paradigms script trains GMP/GraNet and feeds tf.data")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "paradigms.py")
TIMEOUT = 300
TINY = ["--data_source", "synthetic", "--train_examples", "200", "--test_examples", "50",
        "--batch_size", "25", "--epochs", "1", "--jsv_examples", "10",
        "--score_examples", "20", "--update_frequency", "1"]
MLP_LAYERS = 7  # per-layer rounding: at most one weight per kernel


def _env(tmp) -> dict:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(tmp),
                "PYTHONPATH": REPO + (os.pathsep + path if path else "")})
    return env


def run(args, tmp, *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(tmp), env=_env(tmp),
                          capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"paradigms.py failed (rc={proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def check_weight_level(result: dict, target: float) -> None:
    """The masked count of a weight-level result is the target's, up to per-kernel rounding;
    the stripped model's kernels are zero wherever masked."""
    size = result["prunable_weights"]
    masked = result["masked_weights"]
    assert abs(masked - target * size) <= MLP_LAYERS, (result["method"], masked, size)
    assert result["sparsity"] == pytest.approx(masked / size)
    assert result["nonzero_weights"] <= size - masked
    assert result["params"] > size  # the shapes stay, biases included


def test_fast_methods_table_json_and_resume(tmp_path):
    out = tmp_path / "out"
    args = TINY + ["--methods", "random_init,snip,gmp,l1", "--sparsities", "0.9",
                   "--output_dir", str(out)]
    proc = run(args, tmp_path)
    summary = read_json(out / "results.json")
    results = {r["method"]: r for r in summary["results"]}
    assert list(results) == ["l1", "snip", "random_init", "gmp"]  # table order
    for method in ("random_init", "snip", "gmp"):
        result = results[method]
        assert result["granularity"] == "weight"
        check_weight_level(result, 0.9)
        assert 0 <= result["final_accuracy"] <= 1
        assert 0 <= result["accuracy_after_pruning"] <= 1
        assert result["jsv_after_pruning"] > 0
        assert result["train_steps"] == 8  # the whole budget: 1 epoch of 8 iterations
    assert results["random_init"]["paradigm"] == "PaI"
    assert results["gmp"]["paradigm"] == "sparse training"
    l1 = results["l1"]
    assert l1["paradigm"] == "PaT" and l1["granularity"] == "channel"
    assert l1["params"] < results["snip"]["params"]  # a physically thinner model
    assert l1["sparsity"] == pytest.approx(0.9, abs=0.03)  # matched up to whole filters
    assert l1["train_steps"] == 8  # 4 pretraining + 4 fine-tuning
    # the table: a header and one row per result
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert "JSV pruned" in lines[header] and "MACs" in lines[header]
    rows = [line.split()[0] for line in lines[header + 1:header + 5]]
    assert rows == ["l1", "snip", "random_init", "gmp"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["l1", "snip", "random_init", "gmp"]
    assert float(rows[1]["sparsity"]) == pytest.approx(results["snip"]["sparsity"])
    for method in results:
        assert (out / "results" / f"{method}_s0.9.json").is_file()
    assert not (out / "accuracy_vs_sparsity.png").exists()  # one sparsity: no figure

    # a rerun with the same flags skips every finished result; a new method still runs
    os.remove(out / "results" / "gmp_s0.9.json")
    again = run(args, tmp_path)
    assert again.stdout.count("skipped") == 3
    assert "[gmp @ 0.9] running" in again.stdout
    rerun = {r["method"]: r for r in read_json(out / "results.json")["results"]}
    assert rerun["snip"] == results["snip"]


@pytest.mark.parametrize("args, flag", [
    (["--sparsities", "0.9,1.5"], "--sparsities"),
    (["--sparsities", "abc"], "--sparsities"),
    (["--methods", "snip,foo"], "--methods"),
    (["--rewind_fraction", "1.0"], "--rewind_fraction"),
    (["--data_source", "mnist", "--data_dir", "/nonexistent/mnist.npz"], "--data_dir"),
    (["--epochs", "0"], "--epochs"),
    (["--methods", "snip,lottery"], "--epochs"),  # 12 lottery runs in 8 iterations
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, flag):
    proc = run(TINY + ["--output_dir", str(tmp_path / "out")] + args, tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and flag in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results").exists()  # nothing trained


def test_update_frequency_without_a_pruning_round_is_a_flag_error(tmp_path):
    proc = run(TINY + ["--methods", "gmp", "--update_frequency", "1000",
                       "--output_dir", str(tmp_path / "out")], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "--update_frequency" in errors[0]
    assert not (tmp_path / "out" / "results").exists()


def test_a_diverged_method_is_reported_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    proc = run(TINY + ["--methods", "snip,random_init", "--lr", "1e6",
                       "--output_dir", str(out)], tmp_path)
    results = read_json(out / "results.json")["results"]
    assert [r["method"] for r in results] == ["snip", "random_init"]
    for result in results:
        assert "non-finite" in result["diverged"] and result["final_accuracy"] is None
    assert proc.stdout.count("diverged") >= 4  # two messages and two table rows


@pytest.mark.slow
def test_every_method_two_sparsities_and_figure(tmp_path):
    out = tmp_path / "out"
    run(TINY + ["--epochs", "2", "--sparsities", "0.8,0.9", "--synflow_rounds", "10",
                "--lr", "5e-4", "--ft_lr", "5e-4", "--output_dir", str(out)], tmp_path)
    summary = read_json(out / "results.json")
    results = summary["results"]
    assert {r["method"] for r in results} == {
        "dense", "l1", "tpp", "lottery", "snip", "grasp", "synflow", "random_init", "gmp",
        "granet"}
    assert len(results) == 1 + 9 * 2
    for result in results:
        assert not result.get("diverged"), result
        if result["granularity"] == "weight":
            check_weight_level(result, result["target_sparsity"])
        assert result["train_steps"] <= 16
    lottery = [r for r in results if r["method"] == "lottery"]
    assert {r["notes"]["rounds"] for r in lottery} == {8, 11}  # 1 − 0.8^L ≥ target
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
