"""Images/s of the TensorFlow-free CIFAR training PyDataset, as ``model.fit`` consumes it.

Builds ``keras_tpp.data.CifarPyDataset("train", training=True)`` (pad-4 crop, flip,
normalization, per-epoch shuffle) from the CIFAR-10 image folder / .tar.gz and measures:

- the decode time of the split (Pillow, once, into a uint8 array in memory);
- ``__getitem__`` called directly in a loop (one core's rate, no Keras machinery);
- the batches as ``fit`` receives them: through Keras' ``PyDatasetAdapter`` (the object
  ``fit`` wraps a PyDataset in), for each ``--workers`` count, with threads and, with
  ``--multiprocessing``, with processes too. Nothing trains: this is the input pipeline's
  capacity, the rate above which it cannot feed an accelerator.

Usage (the data path by flag or ``$KERAS_TPP_DATA``; any Keras backend)::

    KERAS_BACKEND=jax python benchmarks/pydataset_throughput.py \\
        --data_dir ../shared/data/cifar10-jpeg.tar.gz --workers 1,2 --multiprocessing

Prints one line per configuration and a JSON summary (``--json`` writes it to a file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.environ.get("KERAS_TPP_DATA"),
                   help="CIFAR-10 image folder or .tar.gz (default: $KERAS_TPP_DATA)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--multiprocessing", action="store_true",
                   help="also measure use_multiprocessing=True")
    p.add_argument("--epochs", type=int, default=2, help="epochs per configuration "
                   "(the first batch of each is left out of the timing)")
    p.add_argument("--max_examples", type=int, default=None)
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data_dir (or $KERAS_TPP_DATA) is required: the CIFAR-10 image folder "
                "or .tar.gz")
    return args


def _through_adapter(ds, epochs: int) -> float:
    """Images/s of ``epochs`` epochs through Keras' PyDatasetAdapter (what fit uses)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(ds, shuffle=False)
    adapter.on_epoch_begin()  # fit reads one batch to build the model, then starts over
    next(iter(adapter.get_numpy_iterator()))
    adapter.on_epoch_end()
    images, seconds = 0, 0.0
    for _ in range(epochs):
        adapter.on_epoch_begin()
        start = None
        for i, (x, _y) in enumerate(adapter.get_numpy_iterator()):
            if i == 0:  # leave out the start-up (pool creation, first batch)
                start = time.perf_counter()
                continue
            images += len(x)
        seconds += time.perf_counter() - start
        adapter.on_epoch_end()
    return images / seconds


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import keras

    from keras_tpp.data import CIFAR10_CLASSES, CifarPyDataset

    t = time.perf_counter()
    ds = CifarPyDataset("train", data_dir=args.data_dir, batch_size=args.batch_size,
                        training=True, class_names=CIFAR10_CLASSES,
                        max_examples=args.max_examples, seed=0)
    load_s = time.perf_counter() - t
    n = ds.num_examples
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs; decoded {n} images "
          f"in {load_s:.1f} s ({n / load_s:,.0f} images/s, Pillow, includes any archive "
          f"extraction); {len(ds)} batches of {args.batch_size}", flush=True)

    t, cpu = time.perf_counter(), time.process_time()
    steps = min(len(ds), 200)
    for i in range(steps):
        ds[i]
    direct = steps * args.batch_size / (time.perf_counter() - t)
    # CPU seconds of this process: a per-core rate that other jobs' load hardly changes.
    per_cpu_second = steps * args.batch_size / (time.process_time() - cpu)
    print(f"__getitem__ in a loop (1 thread): {direct:,.0f} images/s wall, "
          f"{per_cpu_second:,.0f} images per CPU-second", flush=True)

    results = {"backend": keras.backend.backend(), "cpus": os.cpu_count(),
               "examples": n, "batch_size": args.batch_size, "decode_s": load_s,
               "direct_images_per_s": direct,
               "direct_images_per_cpu_s": per_cpu_second, "adapter": []}
    modes = [False] + ([True] if args.multiprocessing else [])
    for workers in [int(w) for w in args.workers.split(",")]:
        for mp in modes:
            ds.set_workers(workers, use_multiprocessing=mp)
            rate = _through_adapter(ds, args.epochs)
            kind = "processes" if mp else "threads"
            print(f"fit's PyDatasetAdapter, workers={workers} ({kind}): {rate:,.0f} images/s",
                  flush=True)
            results["adapter"].append({"workers": workers, "use_multiprocessing": mp,
                                       "images_per_s": rate})
            ds.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
