r"""Prune ResNet-50 on ImageNet (tfds imagenet2012) with TPP and the other methods.

Same stages, flags and outputs as cifar.py (see examples/common.py):

    pretrain  → <model_dir>/pretrained.keras   (a standard recipe, not in SPEC: 90 epochs,
                                                LR 0.1 ×0.1 at 30, 60, 80, weight decay 1e-4)
    prune     → <model_dir>/pruned.keras       (SPEC §1: SGD 1e-3, wd 1e-4, K_u = 5,
                                                K_s = 40,000; the THIN model)
    finetune  → <model_dir>/final.keras        (SPEC §1: 90 epochs, LR 0.01, 1e-3 at 30,
                                                1e-4 at 60, 1e-5 at 75)

To start from a model trained elsewhere, save it (a Keras ResNet-50 with these layer names,
logits output) as <model_dir>/pretrained.keras and run ``--stage prune``, then
``--stage finetune``.

``--preset`` applies SPEC's per-stage ratios to conv1 and conv2 of every bottleneck (Keras
names ``conv{2..5}_block*_1_conv`` and ``*_2_conv``); ``--pruning_ratio`` overrides it with
one ratio for all those layers or with explicit pattern:ratio pairs.

    python examples/imagenet.py --data_dir ~/tensorflow_datasets --preset 2.31x \
        --model_dir runs/r50_tpp --stage prune
"""
from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS

#: Names of SPEC §1's presets (keras_tpp.models.RESNET50_PRESETS holds their per-stage
#: ratios; keras_tpp is imported only after the flags are parsed, so that a bad flag fails
#: before Keras and TensorFlow start).
PRESETS = ("1.49x", "2.31x", "2.56x", "3.06x")

flags.DEFINE_enum("preset", "2.31x", PRESETS,
                  "SPEC's per-stage ratios for conv1/conv2 of each bottleneck "
                  "(keras_tpp.models.RESNET50_PRESETS): 1.49x (0.3, 0.3, 0.3, 0.14), "
                  "2.31x (0.6, 0.6, 0.6, 0.21), 2.56x (0.74, 0.74, 0.6, 0.21), "
                  "3.06x (0.68, 0.68, 0.68, 0.5).")
flags.DEFINE_string("data_dir", None, "tfds data dir holding the prepared imagenet2012.")
flags.DEFINE_string("tfds_name", "imagenet2012", "tfds dataset name.")
flags.DEFINE_integer("image_size", 224, "Training / evaluation crop size.", lower_bound=16)
flags.DEFINE_integer("num_classes", 1000, "Classes of the classifier.", lower_bound=2)
flags.DEFINE_bool("mixed_precision", False,
                  "keras.mixed_precision.set_global_policy('mixed_float16') before building "
                  "(models loaded from .keras files keep the policy they were saved with).")

common.define_training_flags({
    "pruning_ratio": None,
    "pruning_ratio_help": (
        "Overrides --preset: one ratio for conv1 and conv2 of every bottleneck, or explicit "
        "pattern:ratio pairs, e.g. 'conv2_block*_1_conv:0.3,conv5_*:0.1'."),
    "model_dir": "runs/imagenet",
    "epochs": 90,
    "epochs_help": "Pretraining epochs (standard recipe; LR ×0.1 at 1/3, 2/3 and 8/9).",
    "batch_size": 256,
    "lr": 0.1,
    "weight_decay": 1e-4,
    "interval": 5,
    "stabilize_steps": 40_000,
    "ft_epochs": 90,
})
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags


def build_model():
    import keras

    return keras.applications.ResNet50(
        weights=None, input_shape=(FLAGS.image_size, FLAGS.image_size, 3),
        classes=FLAGS.num_classes, classifier_activation=None)


def prune_targets(ratio):
    if isinstance(ratio, dict):
        return ratio, None
    from keras_tpp import models

    return models.resnet50_ratios(FLAGS.preset if ratio is None else (ratio,) * 4), None


def make_data():
    from keras_tpp.data import imagenet_pipeline

    options = dict(batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir,
                   dataset=FLAGS.tfds_name, image_size=FLAGS.image_size, seed=FLAGS.seed)
    try:
        train = imagenet_pipeline("train", training=True, max_examples=FLAGS.max_train_examples,
                                  **options)
        test = imagenet_pipeline("validation", training=False,
                                 max_examples=FLAGS.max_test_examples, **options)
    except Exception as e:  # tfds raises many kinds of errors for a missing dataset
        raise ValueError(f"tfds could not load '{FLAGS.tfds_name}' from data_dir="
                         f"{FLAGS.data_dir!r}; prepare it there first (ImageNet must be "
                         f"downloaded manually) ({type(e).__name__}: {common.one_line(e)})"
                         ) from e
    return train, test, {"source": "tfds", "dataset": FLAGS.tfds_name,
                         "data_dir": FLAGS.data_dir, "image_size": FLAGS.image_size}


def main() -> None:
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise common.usage_error("data_dir", f"{FLAGS.data_dir} is not a directory; expected "
                                 "a tfds data dir holding the prepared imagenet2012")
    common.check_stage_inputs(FLAGS.model_dir)
    strategy = common.setup_tensorflow(FLAGS.strategy, FLAGS.num_cpu_devices)
    import keras

    from keras_tpp.experiments.runner import ScriptSpec

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(FLAGS.seed)
    spec = ScriptSpec(
        name="imagenet.py", build_model=build_model, make_data=make_data,
        prune_targets=prune_targets, finetune_recipe="imagenet",
        pretrain_boundaries=(1 / 3, 2 / 3, 8 / 9), finetune_boundaries=(1 / 3, 2 / 3, 5 / 6),
        tpp_recipe_epochs=90,
        info={"preset": FLAGS.preset, "mixed_precision": FLAGS.mixed_precision})
    common.run_stages(spec, strategy)


if __name__ == "__main__":
    common.run_main(main)
