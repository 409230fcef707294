"""Training throughput of the cifartune engine against a loop written the common way.

    python benchmarks/throughput.py [--images 5120] [--repeats 3] [--device auto]

Both loops train the seed network with the same batch size, augmentation (random crop with
4-pixel padding + horizontal flip), per-channel standardization and SGD, over the same images:

- engine: uint8 tensor on the device, batched augmentation, the engine's precision/layout
  settings (``--precision``, ``--no-channels-last``);
- reference: torchvision ``datasets``-style per-sample PIL transforms through a ``DataLoader``
  (``--workers`` processes), fp32, NCHW.

Prints images/s per loop (median of ``--repeats`` epochs, after one warm-up epoch) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifartune.config import build_trial_config
from cifartune.data import CifarArrays, load_bundled, load_mirror, to_device
from cifartune.engine import build_run, resolve_device, resolve_precision, train_one_epoch
from cifartune.model import SeedNet

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PilCifar(Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: uint8 HWC -> PIL -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_epoch(
    loader: DataLoader,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def load_data(data_dir: str | None) -> CifarArrays:
    """A CIFAR-10 mirror directory (train.npz/test.npz), else the bundled slice."""
    return load_mirror(data_dir) if data_dir else load_bundled()


def measure_reference(
    arrays: CifarArrays,
    *,
    images: int,
    batch_size: int,
    repeats: int,
    workers: int,
    device: torch.device,
) -> list[float]:
    """Images/s of `repeats` epochs of the usual loop, after one warm-up epoch."""
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = PilCifar(arrays.train_images[:images], arrays.train_labels[:images], transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    torch.manual_seed(0)
    model = SeedNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reference_epoch(loader, model, optimizer, device)  # warm-up (worker start, allocator)
    return [reference_epoch(loader, model, optimizer, device) for _ in range(repeats)]


def measure_engine(
    arrays: CifarArrays,
    *,
    images: int,
    batch_size: int,
    repeats: int,
    device: torch.device,
    precision: str,
    channels_last: bool = True,
) -> list[float]:
    """Images/s of `repeats` training epochs of the engine, after one warm-up epoch."""
    config = build_trial_config(
        {},
        {
            "batch_size": batch_size,
            "precision": precision,
            "channels_last": channels_last,
            "data.source": "bundled",  # unused: the arrays are given; keeps validation offline
            "data.augment": "crop+flip",
            "data.normalize": "standardize",
            "data.val_size": 10,
            "data.train_subset": images,
            "optim.name": "momentum",
            "optim.lr": 0.01,
        },
    )
    run = build_run(config, to_device(arrays, config.data, device))
    train_one_epoch(run)  # warm-up
    return [train_one_epoch(run)["time/images_per_s"] for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", help="CIFAR-10 mirror directory (default: the bundled slice)")
    parser.add_argument("--images", type=int, default=1700, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        action="append",
        choices=["auto", "bf16", "fp32"],
        help="engine precision(s) to measure (repeatable; default auto)",
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = parser.parse_args()
    device = resolve_device(args.device)
    arrays = load_data(args.data_dir)
    sizes = {"images": args.images, "batch_size": args.batch_size, "repeats": args.repeats}
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.images} images/epoch, "
        f"batch {args.batch_size}, median of {args.repeats} epochs"
    )
    # The engine goes first so the reference's worker processes cannot steal its cores.
    engines = {
        p: statistics.median(
            measure_engine(
                arrays, **sizes, device=device, precision=p, channels_last=args.channels_last
            )
        )
        for p in args.precision or ["auto"]
    }
    reference = statistics.median(
        measure_reference(arrays, **sizes, workers=args.workers, device=device)
    )
    print(
        f"{'reference (PIL transforms + DataLoader x' + str(args.workers) + ', fp32 NCHW)':<52}: "
        f"{reference:8.1f} img/s"
    )
    layout = "channels_last" if args.channels_last else "NCHW"
    for precision, engine in engines.items():
        label = f"engine ({resolve_precision(precision, device)}, {layout})"
        print(f"{label:<52}: {engine:8.1f} img/s   ratio {engine / reference:5.2f}x")


if __name__ == "__main__":
    main()
