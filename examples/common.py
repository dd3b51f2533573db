"""Flags of the example scripts (cifar.py, imagenet.py, mnist_mlp.py, quickstart.py).

The scripts are thin: absl flags → :class:`keras_tpp.experiments.config.RunConfig` →
:class:`keras_tpp.experiments.runner.StageRunner` (crash-safe stages, backups, logs,
summary). This module holds what is about flags and the command line:

- one-line errors (``error: --flag: what was expected``, exit status 2) for bad flag values,
  bad combinations, and library errors caused by a flag (``ConfigError`` names its
  setting, which is the flag's name); ``--help``/``--helpshort`` exit with status 0;
- the shared training flags, pruning-ratio parsing (``0.5`` or
  ``"*_conv1:0.5,stage3_*:0.3"``) and :func:`run_config`, which turns the flags into a
  RunConfig;
- :func:`setup_tensorflow`: TensorFlow imported once, without its start-up noise, logical
  CPU devices and the tf.distribute strategy.

TensorFlow and Keras are imported lazily, so that flag errors are reported at once.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Callable, Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS
# The same values as keras_tpp.experiments.config's (not imported from there: importing
# keras_tpp starts TensorFlow, and flag errors must come before that).
STAGES = ("pretrain", "prune", "finetune")
FT_SCHEDULES = ("tpp", "ft", "lrw", "slr", "clr")
STAGE_FILES = {"pretrain": "pretrained.keras", "prune": "pruned.keras",
               "finetune": "final.keras"}


# ------------------------------------------------------------------------------- errors


class UsageError(ValueError):
    """A bad flag value or combination; printed as one line, exit code 2."""


def usage_error(flag: str, message: str) -> UsageError:
    return UsageError(f"--{flag}: {message}")


@contextlib.contextmanager
def blame(flag: str):
    """Turn a library ValueError raised in this block into a UsageError naming ``flag``."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        raise usage_error(flag, one_line(e)) from e


def one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 600 else text[:597] + "..."


HELP_FLAGS = ("--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull",
              "--helpxml", "-helpxml", "-h", "-?")


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        # absl's --help / --helpshort / --helpfull print the help and exit with status 1;
        # asking for help is not a failure.
        if e.code == 1 and any(a.split("=", 1)[0] in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise


# keras_tpp.data's check of image files fails (while a dataset is iterated) with
# "assertion failed: [corrupt or truncated image file:] [<path>]".
_CORRUPT_IMAGE = re.compile(r"corrupt or truncated image file:\] \[([^\]]+)\]")


def run_main(main: Callable[[], None]) -> None:
    """``absl.app.run`` with one-line errors for bad flags and for :class:`UsageError`."""

    def _main(argv):
        if not FLAGS["verbosity"].present:  # absl INFO lines (tfds) would drown the output
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            print(f"error: unexpected positional arguments {argv[1:]}; every option is a "
                  "--flag", file=sys.stderr)
            sys.exit(2)
        try:
            main()
        except UsageError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001 - only errors naming a flag are translated
            if isinstance(e, ValueError) and getattr(e, "setting", None):  # ConfigError
                print(f"error: --{e.setting}: {one_line(e.detail)}", file=sys.stderr)
                sys.exit(2)
            found = _CORRUPT_IMAGE.search(str(e))
            if not found:
                raise
            print(f"error: --data_dir: {found.group(1)} is a corrupt or truncated image file "
                  "(replace or delete it)", file=sys.stderr)
            sys.exit(2)

    app.run(_main, flags_parser=_parse_flags)


# ------------------------------------------------------------------------------- flags


def parse_ratio(text: str, flag: str = "pruning_ratio"):
    """``"0.5"`` → 0.5; ``"*_conv1:0.5,stage3_*:0.3"`` → {pattern: ratio} (first match wins).

    Raises UsageError naming ``flag`` for anything else.
    """
    text = str(text).strip()
    expected = ("expected a ratio in [0, 1) or comma-separated pattern:ratio pairs such as "
                "'*_conv1:0.5,stage3_*:0.3'")

    def ratio(value: str) -> float:
        try:
            r = float(value)
        except ValueError:
            raise usage_error(flag, f"{value!r} is not a number; {expected}") from None
        if not 0 <= r < 1:
            raise usage_error(flag, f"ratio {r} is outside [0, 1); {expected}")
        return r

    if not text:
        raise usage_error(flag, f"empty; {expected}")
    if ":" not in text:
        return ratio(text)
    mapping = {}
    for item in text.split(","):
        pattern, sep, value = item.strip().rpartition(":")
        if not sep or not pattern.strip():
            raise usage_error(flag, f"{item!r} is not pattern:ratio; {expected}")
        mapping.setdefault(pattern.strip(), ratio(value.strip()))
    return mapping


def parse_int_list(text_list: Sequence[str], flag: str) -> list[int]:
    out = []
    for item in text_list:
        try:
            value = int(item)
        except ValueError:
            raise usage_error(flag, f"{item!r} is not an integer") from None
        if value < 1:
            raise usage_error(flag, f"{value} must be >= 1")
        out.append(value)
    return out


def define_training_flags(defaults: dict) -> None:
    """Flags shared by cifar.py and imagenet.py; ``defaults`` gives the per-script recipe."""
    d = defaults
    flags.DEFINE_enum("stage", "all", STAGES + ("all",),
                      "Which stage to run: pretrain → <model_dir>/pretrained.keras; prune "
                      "(needs pretrained.keras) → pruned.keras, the thin model; finetune "
                      "(needs pruned.keras) → final.keras; all = the three in order (a stage "
                      "whose output exists from a completed run with the same flags is "
                      "skipped, see --resume).")
    # A string checked against keras_tpp.methods' registry once TensorFlow is up (importing
    # keras_tpp starts it; the other flag errors come before that).
    flags.DEFINE_string("method", "tpp", "Pruning method: a name registered in "
                        "keras_tpp.methods (keras_tpp.methods.names()).")
    flags.DEFINE_string("pruning_ratio", d["pruning_ratio"], d["pruning_ratio_help"])
    flags.DEFINE_string("model_dir", d["model_dir"],
                        "Where stage outputs, backups (resumption), CSV and TensorBoard logs "
                        "and summary.json go.")
    flags.DEFINE_bool("resume", True,
                      "With --stage all: skip a stage whose output file exists and was "
                      "completed with the same flags (recorded in summary.json). Killed "
                      "stages always resume from their backup.")
    # pretraining
    flags.DEFINE_integer("epochs", d["epochs"], d["epochs_help"], lower_bound=1)
    flags.DEFINE_integer("batch_size", d["batch_size"],
                         "GLOBAL batch size (all replicas of all workers)"
                         + d.get("batch_size_help", "") + ".", lower_bound=1)
    flags.DEFINE_float("lr", d["lr"], "Pretraining peak learning rate (SGD, momentum 0.9).",
                       lower_bound=0)
    flags.DEFINE_float("weight_decay", d["weight_decay"],
                       "Weight decay of every stage, as in the papers: gradient += wd·w on every "
                       "trainable weight (a coupled L2, not Keras' decoupled weight_decay).",
                       lower_bound=0)
    # prune stage
    flags.DEFINE_float("prune_lr", 1e-3, "Prune-stage learning rate (SPEC: 1e-3).",
                       lower_bound=0)
    flags.DEFINE_float("delta", 1e-4, "Δ: λ increment every --interval iterations.",
                       lower_bound=0)
    flags.DEFINE_integer("interval", d["interval"], "K_u: iterations between increments.",
                         lower_bound=1)
    flags.DEFINE_float("ceiling", 1.0, "τ: the largest λ.", lower_bound=0)
    flags.DEFINE_integer("stabilize_steps", d["stabilize_steps"],
                         "K_s: iterations at λ = τ before the filters are removed.",
                         lower_bound=0)
    flags.DEFINE_float("stop_ratio", 1000.0,
                       "GReg: a layer stops growing when EMA(mean|w_kept|/mean|w_pruned|) "
                       "reaches this.")
    flags.DEFINE_float("pick_delta", 1e-5, "GReg-2: λ increment of the picking phase.")
    flags.DEFINE_float("pick_ceiling", 1e-2, "GReg-2: λ at which filters are picked.")
    flags.DEFINE_float("kept_strength", -1e-4, "GReg-2: λ on kept filters while pushing.")
    flags.DEFINE_integer("prune_epochs", 0,
                         "Prune-stage epoch cap; 0 = enough to reach the pruned phase "
                         "(training stops there in any case).", lower_bound=0)
    # fine-tuning
    flags.DEFINE_enum("ft_schedule", "tpp", FT_SCHEDULES,
                      "Fine-tuning LR schedule: tpp = SPEC §1 (LR ×0.1 at 50% and 75% for "
                      "CIFAR, at 1/3, 2/3, 5/6 for ImageNet); ft / lrw / slr / clr = Le & Hua "
                      "(SPEC §3) with the pretraining schedule as the original one.")
    flags.DEFINE_float("ft_lr", None,
                       "Fine-tuning LR: tpp start (default 0.01), ft constant (default: the "
                       "pretraining schedule's last LR), slr/clr peak (default --lr); lrw "
                       "replays the pretraining schedule and takes none.")
    flags.DEFINE_integer("ft_epochs", d["ft_epochs"], "Fine-tuning epochs (the budget).",
                         lower_bound=1)
    # execution
    flags.DEFINE_enum("strategy", "default", ("default", "mirrored", "multi_worker"),
                      "tf.distribute strategy; multi_worker reads $TF_CONFIG and trains with "
                      "keras_tpp.distribute.DistributedTrainer.")
    flags.DEFINE_integer("num_cpu_devices", 1,
                         "Split the CPU into this many logical devices (mirrored on CPU).",
                         lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", None, "Optional cap on steps per epoch.",
                         lower_bound=1)
    flags.DEFINE_integer("max_train_examples", None, "Use only this many training examples.",
                         lower_bound=1)
    flags.DEFINE_integer("max_test_examples", None, "Use only this many test examples.",
                         lower_bound=1)
    flags.DEFINE_integer("validation_freq", 1, "Validate every N epochs.", lower_bound=1)
    flags.DEFINE_list("latency_batch_sizes", ["1", "64"], "Batch sizes for latency.")
    flags.DEFINE_integer("latency_runs", 20, "Timed runs per latency (0 = skip).",
                         lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Random seed (initialization, data order, random method).")
    flags.DEFINE_integer("verbose", 1, "Keras verbosity: 1 progress bars, 2 one line per "
                         "epoch, 0 silent.", lower_bound=0, upper_bound=2)
    flags.DEFINE_integer("log_every", 10,
                         "Write loss, accuracy, λ and the learning rate to "
                         "<model_dir>/logs/iterations/<stage>.csv every this many iterations "
                         "(plotted into <model_dir>/training.png).", lower_bound=1)
    flags.DEFINE_string("dump_state", None,
                        "(debug) After the prune stage's training, write every weight of the "
                        "prepared model (each replica's copy), λ, phase and the iteration "
                        "count to this .npz.")
    flags.DEFINE_bool("distributed_loop", False,
                      "(debug) Train with DistributedTrainer under every strategy, not only "
                      "multi_worker.")


def flag_values(exclude: Sequence[str] = ()) -> dict:
    """The values of the flags this program defined (not absl's own)."""
    out = {}
    main = sys.argv[0]
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module.startswith("absl") or not (module == main or module.endswith("common")
                                             or module == "__main__"):
            continue
        for flag in module_flags:
            if flag.name not in exclude:
                out[flag.name] = flag.value
    return out


# ------------------------------------------------------------------------------- outputs


def atomic_write_json(path: str, obj) -> None:
    """keras_tpp.experiments.atomic_write_json: temporary file, fsync, rename, mode 0644."""
    from keras_tpp.experiments import atomic

    atomic.atomic_write_json(path, obj)


def atomic_save_model(model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` name beside ``path``, fsync, then rename."""
    from keras_tpp.experiments import atomic

    atomic.atomic_save_model(model, path)


def looks_like_image_folder(path: str) -> bool:
    """A quick check before TensorFlow is imported: an archive file, or a directory (or its
    only sub-directory) with train/ and test/ sub-directories. keras_tpp.data checks the rest."""
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return path.endswith((".tar.gz", ".tgz", ".tar"))
    if not os.path.isdir(path):
        return False
    subdirs = [e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    roots = [path] + (subdirs if len(subdirs) == 1 else [])
    return any(os.path.isdir(os.path.join(r, "train")) and os.path.isdir(os.path.join(r, "test"))
               for r in roots)


def synthetic_cifar_data(max_train: int | None, max_test: int | None, seed: int,
                         options: dict, info: dict) -> tuple[Any, Any, dict]:
    """(train, test, info) CIFAR-shaped pipelines of keras_tpp's synthetic shapes (5,000 /
    1,000 examples unless limited); ``options`` go to ``cifar_pipeline``, ``info`` gains
    the counts."""
    from keras_tpp.data import cifar_pipeline, synthetic_shapes

    n_train, n_test = max_train or 5000, max_test or 1000
    arrays = {"train": synthetic_shapes(n_train, seed=seed),
              "test": synthetic_shapes(n_test, seed=seed + 1)}
    train = cifar_pipeline("train", source="arrays", arrays=arrays, training=True, **options)
    test = cifar_pipeline("test", source="arrays", arrays=arrays, training=False, **options)
    info.update(train_examples=n_train, test_examples=n_test,
                note="keras_tpp synthetic shapes (10 classes)")
    return train, test, info


def check_cifar_data_flags(data_source: str, data_dir: str | None) -> None:
    """A UsageError unless --data_source/--data_dir name CIFAR data that can exist: an image
    folder (or its .tar.gz) for "folder", a directory (if given) for "tfds"."""
    if data_source == "folder":
        if not data_dir:
            raise usage_error("data_dir", "--data_source folder needs --data_dir (an image "
                              "folder with train/ and test/ or its .tar.gz)")
        if not looks_like_image_folder(data_dir):
            raise usage_error("data_dir", f"{data_dir} is not an image folder: expected "
                              "<data_dir>/train/<class>/<image> and "
                              "<data_dir>/test/<class>/<image>, or a .tar.gz of them")
    elif data_source == "tfds" and data_dir and not os.path.isdir(data_dir):
        raise usage_error("data_dir", f"{data_dir} is not a directory; expected a tfds data "
                          "dir holding the prepared dataset")


# ------------------------------------------------------------------------------- TF setup


# TensorFlow 2.21 prints these at import, twice (two of its libraries each start absl
# logging), whatever TF_CPP_MIN_LOG_LEVEL says.
_TF_NOISE = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
))


def import_tensorflow_quietly():
    """``import tensorflow`` (once) with its known start-up messages filtered out of stderr.

    Sets TF_CPP_MIN_LOG_LEVEL=2 unless the environment sets it; with
    TF_CPP_MIN_LOG_LEVEL=0 nothing is filtered. Everything else TensorFlow prints during
    the import is passed through.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not any(p.search(line) for p in _TF_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    return tensorflow


def setup_tensorflow(strategy_name: str = "default", num_cpu_devices: int = 1):
    """Logical CPU devices and the strategy, before any other TensorFlow op. Returns it."""
    tf = import_tensorflow_quietly()

    if num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
        except RuntimeError as e:  # pragma: no cover - TF already initialized
            raise usage_error("num_cpu_devices", f"cannot configure devices now: {e}") from e
    from keras_tpp.distribute import get_strategy

    devices = None
    if strategy_name == "mirrored" and num_cpu_devices > 1 and not tf.config.list_physical_devices(
            "GPU"):
        devices = [f"/cpu:{i}" for i in range(num_cpu_devices)]
    if strategy_name == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise usage_error("strategy", "multi_worker needs $TF_CONFIG describing the cluster "
                          "(see the README's multi-worker recipe)")
    return get_strategy(strategy_name, devices=devices)


def check_schedule_flags() -> None:
    if not 0 < FLAGS.delta <= FLAGS.ceiling:
        raise usage_error("delta", f"must be in (0, --ceiling={FLAGS.ceiling}], got "
                          f"{FLAGS.delta}")
    if FLAGS.method == "greg2" and not 0 < FLAGS.pick_delta <= FLAGS.pick_ceiling:
        raise usage_error("pick_delta", f"must be in (0, --pick_ceiling={FLAGS.pick_ceiling}]")
    if FLAGS.method in ("greg1", "greg2") and not FLAGS.stop_ratio > 1:
        raise usage_error("stop_ratio", f"must be > 1, got {FLAGS.stop_ratio}")


def run_config():
    """A :class:`keras_tpp.experiments.config.RunConfig` from the shared training flags;
    ``settings`` holds every flag of the script (recorded in summary.json)."""
    import dataclasses

    from keras_tpp import methods
    from keras_tpp.experiments.config import RunConfig

    with blame("method"):
        method = methods.get_method(FLAGS.method)
    if method.granularity != "channel":
        channel_level = [n for n in methods.names()
                         if methods.METHODS[n].granularity == "channel"]
        raise usage_error("method", f"'{FLAGS.method}' masks individual weights; these "
                          "scripts prune channels and shrink the model (channel-level "
                          f"methods: {', '.join(channel_level)})")

    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(RunConfig)
              if f.name in FLAGS}
    values.update(
        pruning_ratio=parse_ratio(FLAGS.pruning_ratio) if FLAGS.pruning_ratio else None,
        latency_batch_sizes=tuple(parse_int_list(FLAGS.latency_batch_sizes,
                                                 "latency_batch_sizes")),
        multi_worker=FLAGS.strategy == "multi_worker", settings=flag_values())
    return RunConfig(**values)


def run_stages(spec, strategy) -> None:
    """Runs the stages the flags ask for: flags → RunConfig → StageRunner."""
    from keras_tpp.experiments.runner import StageRunner

    StageRunner(spec, run_config(), strategy).run()


def check_stage_inputs(model_dir: str) -> None:
    """--stage prune / finetune need the previous stage's output in --model_dir."""
    needs = {"prune": "pretrain", "finetune": "prune"}
    previous = needs.get(FLAGS.stage)
    if previous:
        path = os.path.join(model_dir, STAGE_FILES[previous])
        if not os.path.isfile(path):
            raise usage_error(
                "stage", f"'{FLAGS.stage}' needs {path} (the output of --stage {previous}) "
                f"in --model_dir, which does not exist")
    if FLAGS.ft_schedule == "lrw" and FLAGS.stage in ("finetune", "all") and \
            FLAGS.ft_epochs > FLAGS.epochs:
        raise usage_error("ft_epochs", f"LR rewinding replays the last --ft_epochs epochs of "
                          f"the pretraining schedule, so it must be <= --epochs="
                          f"{FLAGS.epochs}; got {FLAGS.ft_epochs}")
    if FLAGS.ft_schedule == "lrw" and FLAGS.ft_lr is not None:
        raise usage_error("ft_lr", "--ft_schedule lrw replays the pretraining schedule; "
                          "drop --ft_lr")
    check_schedule_flags()
    parse_int_list(FLAGS.latency_batch_sizes, "latency_batch_sizes")
    if FLAGS.pruning_ratio is not None:
        parse_ratio(FLAGS.pruning_ratio)
