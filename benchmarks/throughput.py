"""Training throughput of the cifartune engine against a loop written the common way.

    python -m benchmarks.throughput [--images 5120] [--repeats 3] [--device auto]

Both loops train the seed network with the same batch size, augmentation (random crop with
4-pixel padding + horizontal flip), per-channel standardization and SGD, over the same images:

- engine: uint8 tensor on the device, batched augmentation, the engine's precision/layout
  settings (``--precision``, ``--no-channels-last``);
- reference: torchvision ``datasets``-style per-sample PIL transforms through a ``DataLoader``
  (``--workers`` processes), fp32, NCHW, with the cuDNN settings its user would have
  (autotuning on; the engine's deterministic algorithms are switched off for it alone).

Prints images/s per loop (median of ``--repeats`` epochs, after one warm-up epoch) and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifartune.config.trial import TrialConfig, build_trial_config
from cifartune.engine.data import CifarArrays, load_bundled, load_mirror
from cifartune.engine.device import resolve_device, resolve_precision
from cifartune.engine.loop import train_one_epoch
from cifartune.engine.model import SeedNet
from cifartune.engine.run import Run, build_run
from cifartune.engine.splits import DeviceData, to_device

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


@contextlib.contextmanager
def user_cudnn() -> Iterator[None]:
    """cuDNN as a plain PyTorch script has it (autotuning on, nondeterministic algorithms
    allowed), for the body only: the engine's build_run sets the opposite process-wide."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


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
    with user_cudnn():
        reference_epoch(loader, model, optimizer, device)  # warm-up (worker start, allocator)
        return [reference_epoch(loader, model, optimizer, device) for _ in range(repeats)]


def engine_config(
    batch_size: int, precision: str, *, channels_last: bool = True, compile_mode: str = "none"
) -> TrialConfig:
    """The engine's settings for the loops compared here (crop+flip, standardize, momentum)."""
    return build_trial_config(
        {},
        {
            "batch_size": batch_size,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile_mode,
            "data.source": "bundled",  # unused: the data is given; keeps validation offline
            "data.augment": "crop+flip",
            "data.normalize": "standardize",
            "data.val_size": 10,
            "optim.name": "momentum",
            "optim.lr": 0.01,
        },
    )


def real_data(arrays: CifarArrays, images: int, device: torch.device) -> DeviceData:
    """`images` stratified training images of `arrays` on `device` (10 held out)."""
    cfg = engine_config(128, "fp32").data.model_copy(update={"train_subset": images})
    return to_device(arrays, cfg, device)


def synthetic_data(images: int, device: torch.device, seed: int = 0) -> DeviceData:
    """Random uint8 NCHW images shaped like CIFAR-10's, made on `device` (no host copy, no
    transfer), with random labels: throughput does not depend on what the pixels show."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (images, 3, 32, 32), generator=gen, device=device).to(torch.uint8)
    y = torch.randint(0, 10, (images,), generator=gen, device=device)
    none = np.zeros((0, 32, 32, 3), np.uint8)
    return DeviceData(x, y, x[:10], y[:10], none, np.zeros(0, np.int64))


def measure_engine(
    data: DeviceData, config: TrialConfig, *, repeats: int
) -> tuple[list[float], Run]:
    """Images/s of `repeats` training epochs of the engine on `data`, after one warm-up epoch
    (allocator, cuDNN, compilation), and the run (to profile it further)."""
    run = build_run(config, data)
    train_one_epoch(run)  # warm-up
    return [train_one_epoch(run)["time/images_per_s"] for _ in range(repeats)], run


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
    data = real_data(arrays, args.images, device)
    sizes = {"images": args.images, "batch_size": args.batch_size, "repeats": args.repeats}
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.images} images/epoch, "
        f"batch {args.batch_size}, median of {args.repeats} epochs"
    )
    # The engine goes first so the reference's worker processes cannot steal its cores.
    engines = {
        p: statistics.median(
            measure_engine(
                data,
                engine_config(args.batch_size, p, channels_last=args.channels_last),
                repeats=args.repeats,
            )[0]
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
