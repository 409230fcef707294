"""Make the small real CIFAR-10 slice bundled in the package (`data.source: bundled`, what the
smoke study and the tests train on).

    python scripts/make_bundled_slice.py ../shared/data/cifar10

Draws 200 train and 100 test images per class (2,000 + 1,000), stratified, with a fixed seed,
from an offline mirror (train.npz / test.npz) and writes cifartune/assets/cifar10_slice.npz.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cifartune.engine.data import load_mirror
from cifartune.engine.splits import stratified_take

OUT = Path(__file__).resolve().parents[1] / "cifartune" / "assets" / "cifar10_slice.npz"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mirror", type=Path, help="directory with train.npz and test.npz")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = load_mirror(args.mirror)
    rng = np.random.default_rng(args.seed)
    train = stratified_take(arrays.train_labels, args.train, rng)
    test = stratified_take(arrays.test_labels, args.test, rng)
    np.savez_compressed(
        OUT,
        train_images=arrays.train_images[train],
        train_labels=arrays.train_labels[train].astype(np.uint8),
        test_images=arrays.test_images[test],
        test_labels=arrays.test_labels[test].astype(np.uint8),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB): {len(train)} train, {len(test)} test")


if __name__ == "__main__":
    main()
