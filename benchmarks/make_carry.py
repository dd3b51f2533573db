"""Pack what ``reproduce_cifar.py`` needs on an offline machine that already has JAX.

An accelerator machine without internet that has JAX (and numpy, ml_dtypes) can run
``benchmarks/reproduce_cifar.py`` once these files are carried there: the keras-tpp wheel,
Keras and the pure dependencies a JAX install lacks (absl-py, rich, namex, h5py, optree,
Pillow …, binary wheels for each ``--python_versions``), the CIFAR-10 archive, and the
script. This writes them into ``--out`` and checks that they fit ``--limit_mib`` (64 MiB).

    python benchmarks/make_carry.py --cifar cifar10-jpeg.tar.gz --out carry
    # there (offline):
    pip install --no-index --find-links carry/wheels keras-tpp
    KERAS_BACKEND=jax python carry/reproduce_cifar.py --data_dir carry/cifar10-jpeg.tar.gz \
        --profile gpu_short --output_dir runs/reproduce

The wheels are downloaded from the package index now (this machine has one); nothing is
downloaded on the offline machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Keras' runtime dependencies that a JAX install (jax, jaxlib, numpy, ml_dtypes, scipy,
#: opt_einsum) does not bring, plus Pillow for the JPEG data path.
PURE = ["absl-py", "rich", "markdown-it-py", "mdurl", "pygments", "namex", "packaging",
        "typing_extensions"]
BINARY = ["h5py", "optree", "Pillow"]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True,
                   stdout=subprocess.DEVNULL)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="carry")
    parser.add_argument("--cifar", default=os.environ.get("KERAS_TPP_CIFAR"),
                        help="the CIFAR-10 .tar.gz to carry (default: $KERAS_TPP_CIFAR)")
    parser.add_argument("--keras", default="3.15.1", help="Keras version to carry")
    parser.add_argument("--python_versions", default="3.10,3.11,3.12",
                        help="binary wheels for these Pythons (the target's is unknown)")
    parser.add_argument("--platform", default="manylinux2014_x86_64")
    parser.add_argument("--limit_mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    if args.cifar and not os.path.isfile(args.cifar):
        parser.error(f"--cifar {args.cifar} is not a file")
    wheels = os.path.join(args.out, "wheels")
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(wheels)
    _pip("wheel", "--no-deps", "--wheel-dir", wheels, ROOT)
    _pip("download", "--no-deps", "--dest", wheels, f"keras=={args.keras}", *PURE)
    for version in args.python_versions.split(","):
        _pip("download", "--no-deps", "--only-binary=:all:", "--platform", args.platform,
             "--python-version", version.strip(), "--dest", wheels, *BINARY)
    shutil.copy(os.path.join(ROOT, "benchmarks", "reproduce_cifar.py"), args.out)
    if args.cifar:
        shutil.copy(args.cifar, args.out)
    total = _size(args.out)
    for name in sorted(os.listdir(wheels)):
        print(f"{_size(os.path.join(wheels, name)) / 2**20:7.2f} MiB  wheels/{name}")
    if args.cifar:
        print(f"{_size(args.cifar) / 2**20:7.2f} MiB  {os.path.basename(args.cifar)}")
    print(f"{total / 2**20:7.2f} MiB in all (limit {args.limit_mib:g} MiB)")
    if total > args.limit_mib * 2**20:
        print("too large for the carry limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
