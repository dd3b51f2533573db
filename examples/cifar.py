r"""Prune a CIFAR ResNet / VGG with TPP, GReg-1/2, L1 or random pruning, in three stages.

    pretrain  → <model_dir>/pretrained.keras   (SPEC §2: 200 epochs, LR 0.1 ×0.1 at 100 and
                                                150, weight decay 5e-4, batch 128 / 256 VGG)
    prune     → <model_dir>/pruned.keras       (the THIN model after keras_tpp.shrink)
    finetune  → <model_dir>/final.keras        (SPEC §1: 120 epochs, LR 0.01 ×0.1 at 60, 90)

Every stage resumes after a kill from a crash-safe backup in <model_dir>/backup/<stage>
(keras_tpp.experiments.backup; DistributedTrainer's under multi_worker), kept until the
stage's model and summary are written; a backup made with other flags is discarded with a
message naming them. Each stage writes CSV + TensorBoard logs, a per-iteration CSV
(logs/iterations/<stage>.csv, every --log_every iterations) and <model_dir>/summary.json;
the run ends with a before/after table and <model_dir>/training.png (λ, loss and accuracy
against iterations).

Examples::

    # offline CIFAR-10 JPEG copy (see the README), ResNet-56, TPP at ratio 0.5:
    python examples/cifar.py --data_source folder \
        --data_dir cifar10-jpeg.tar.gz --model_dir runs/r56_tpp
    # VGG-19 on CIFAR-100 with GReg-1, per-layer ratios:
    python examples/cifar.py --model vgg19 --dataset cifar100 --method greg1 \
        --pruning_ratio "conv1[0-6]:0.7,conv[2-9]:0.5"
"""
from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_enum("model", "resnet56", ("resnet20", "resnet56", "vgg19"), "Architecture.")
flags.DEFINE_enum("dataset", "cifar10", ("cifar10", "cifar100"),
                  "Dataset (number of classes and normalization).")
flags.DEFINE_enum("data_source", "tfds", ("tfds", "folder", "synthetic"),
                  "tfds: tfds.load(--dataset, data_dir=--data_dir); folder: an image folder "
                  "or .tar.gz with train/<class>/*.jpg and test/<class>/*.jpg (e.g. the "
                  "offline CIFAR-10 JPEG copy); synthetic: keras_tpp's synthetic shapes.")
flags.DEFINE_string("data_dir", None, "tfds data dir, or the image folder / archive.")
flags.DEFINE_float("width_multiplier", 1.0,
                   "Scale every layer's width (1.0 = the published models; small values "
                   "for quick tests).", lower_bound=0.01)

common.define_training_flags({
    "pruning_ratio": "0.5",
    "pruning_ratio_help": (
        "A ratio applied to SPEC's layer set — ResNet: the first conv of each block "
        "('*_conv1'); VGG-19: every conv except the first — or explicit "
        "pattern:ratio pairs, e.g. '*_conv1:0.5,stage3_*:0.3' (first match wins)."),
    "model_dir": "runs/cifar",
    "epochs": 200,
    "epochs_help": "Pretraining epochs (SPEC §2: 200; LR ×0.1 at 50% and 75%).",
    "batch_size": None,  # 128 for ResNets, 256 for VGG-19 (SPEC §1/§2)
    "batch_size_help": "; default 128 for ResNets, 256 for VGG-19 (SPEC)",
    "lr": 0.1,
    "weight_decay": 5e-4,
    "interval": 10,
    "stabilize_steps": 10_000,
    "ft_epochs": 120,
})
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def batch_size() -> int:
    if FLAGS.batch_size:
        return FLAGS.batch_size
    return 256 if FLAGS.model == "vgg19" else 128


def build_model():
    from keras_tpp import models

    classes = NUM_CLASSES[FLAGS.dataset]
    if FLAGS.model == "vgg19":
        return models.cifar_vgg(19, num_classes=classes,
                                width_multiplier=FLAGS.width_multiplier)
    depth = int(FLAGS.model[len("resnet"):])
    width = max(1, int(round(16 * FLAGS.width_multiplier)))
    return models.cifar_resnet(depth, num_classes=classes, width=width)


def prune_targets(ratio):
    """SPEC's layer sets for a single ratio; explicit patterns are used as given."""
    if isinstance(ratio, dict):
        return ratio, None
    if FLAGS.model == "vgg19":
        return ratio, ["conv1"]
    return {"*_conv1": ratio}, None


_REPORTED = []


def report_extraction(data_dir: str) -> None:
    """For an archive: extract it (once, into the cache) and say where and how many files."""
    from keras_tpp.data.folder import extract_archive

    if _REPORTED or not os.path.isfile(os.path.expanduser(data_dir)):
        return
    _REPORTED.append(True)
    with common.blame("data_dir"):
        found = extract_archive(data_dir)
    verb = "extracted" if found.extracted_now else "using the earlier extraction of"
    print(f"[data] {verb} {found.archive}: {found.files:,} files in {found.directory}",
          flush=True)


def make_data():
    from keras_tpp.data import cifar_pipeline, list_image_folder

    classes = NUM_CLASSES[FLAGS.dataset]
    options = dict(dataset=FLAGS.dataset, batch_size=batch_size(), seed=FLAGS.seed)
    source = FLAGS.data_source
    info = {"source": source, "dataset": FLAGS.dataset}
    if source == "synthetic":
        return common.synthetic_cifar_data(FLAGS.max_train_examples, FLAGS.max_test_examples,
                                           FLAGS.seed, options, info)
    if source == "folder":
        report_extraction(FLAGS.data_dir)
        for split in ("train", "test"):
            _, _, names = list_image_folder(FLAGS.data_dir, split)
            if len(names) != classes:
                raise ValueError(
                    f"{FLAGS.data_dir} has {len(names)} class directories in {split}/, "
                    f"--dataset {FLAGS.dataset} expects {classes}")
        folder = dict(source="folder", data_dir=FLAGS.data_dir)
        train = cifar_pipeline("train", training=True, max_examples=FLAGS.max_train_examples,
                               **folder, **options)
        test = cifar_pipeline("test", training=False, max_examples=FLAGS.max_test_examples,
                              **folder, **options)
        info.update(data_dir=os.path.abspath(FLAGS.data_dir),
                    note="image folder (the offline CIFAR-10 copy is JPEG-compressed: "
                         "expect accuracies somewhat below the published ones)")
        return train, test, info
    try:
        train = cifar_pipeline("train", training=True, source="tfds", data_dir=FLAGS.data_dir,
                               max_examples=FLAGS.max_train_examples, **options)
        test = cifar_pipeline("test", training=False, source="tfds", data_dir=FLAGS.data_dir,
                              max_examples=FLAGS.max_test_examples, **options)
    except Exception as e:  # tfds raises many kinds of errors for a missing dataset
        raise ValueError(f"tfds could not load '{FLAGS.dataset}' from data_dir="
                         f"{FLAGS.data_dir!r} ({type(e).__name__}: {common.one_line(e)})"
                         ) from e
    info.update(data_dir=FLAGS.data_dir)
    return train, test, info


def main() -> None:
    common.check_cifar_data_flags(FLAGS.data_source, FLAGS.data_dir)
    common.check_stage_inputs(FLAGS.model_dir)
    strategy = common.setup_tensorflow(FLAGS.strategy, FLAGS.num_cpu_devices)
    import keras

    from keras_tpp.experiments.runner import ScriptSpec

    keras.utils.set_random_seed(FLAGS.seed)
    spec = ScriptSpec(
        name="cifar.py", build_model=build_model, make_data=make_data,
        prune_targets=prune_targets, finetune_recipe="cifar",
        pretrain_boundaries=(0.5, 0.75), finetune_boundaries=(0.5, 0.75),
        tpp_recipe_epochs=120, info={"batch_size": batch_size()})
    common.run_stages(spec, strategy)


if __name__ == "__main__":
    common.run_main(main)
