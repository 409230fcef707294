"""The seeded validation split and stratified subsets, and the device-resident tensors a run
uses (copied once per process and data split, see :func:`device_data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cifartune.config.trial import DataConfig, TrialConfig
from cifartune.engine.data import CifarArrays
from cifartune.engine.device import resolve_device
from cifartune.errors import DataError

if TYPE_CHECKING:  # torch is imported where a tensor is made: the command a user starts only
    import torch  # checks the data and hands the study to its child (see ``supervise``)


def stratified_take(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` items drawn evenly across classes (remainders go to the first classes)."""
    classes = np.unique(labels)
    per_class = np.full(len(classes), count // len(classes))
    per_class[: count % len(classes)] += 1
    chosen = []
    for cls, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == cls)
        if k > len(members):
            raise DataError(f"asked for {k} images of class {cls}, only {len(members)} available")
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _stratified(labels: np.ndarray, count: int, rng: np.random.Generator, field: str) -> np.ndarray:
    # A class too small for its share is only known from the labels, so it is caught here, in
    # the trial, and named by the field that asked for the draw.
    try:
        return stratified_take(labels, count, rng)
    except DataError as exc:
        raise DataError(f"{field}: {exc}") from None


@dataclass(frozen=True)
class SplitIndices:
    train: np.ndarray
    val: np.ndarray


def split_indices(labels: np.ndarray, cfg: DataConfig) -> SplitIndices:
    """Stratified validation split fixed by ``split_seed``, then an optional stratified subset.

    The validation images never depend on ``train_subset``, so subsets of one study share them.
    """
    n = len(labels)
    val_size = cfg.val_size if cfg.val_size is not None else n // 10
    if val_size >= n:
        raise DataError(f"data.val_size={val_size} leaves no training images out of {n}")
    rng = np.random.default_rng(cfg.split_seed)
    val = _stratified(labels, val_size, rng, f"data.val_size={val_size}")
    rest = np.setdiff1d(np.arange(n), val, assume_unique=True)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(rest):
            raise DataError(
                f"data.train_subset={cfg.train_subset} exceeds the {len(rest)} training images "
                f"left after the validation split of {val_size}"
            )
        subset_rng = np.random.default_rng([cfg.split_seed, 1])
        where = f"data.train_subset={cfg.train_subset} (after the validation split)"
        rest = rest[_stratified(labels[rest], cfg.train_subset, subset_rng, where)]
    return SplitIndices(train=rest, val=val)


@dataclass(frozen=True)
class DeviceData:
    """The tensors a run trains on, on its device: images uint8 NCHW, labels int64. The test
    split stays on the host (HWC) until ``test_x``/``test_y`` is first read: only ``eval_test``
    and the final scoring need it, and a trial that never scores it should not hold it."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_images: np.ndarray
    test_labels: np.ndarray
    _test: list[torch.Tensor] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def test_on_device(self) -> bool:
        """Whether the test split has been copied to the device yet."""
        return bool(self._test)

    def _test_tensors(self) -> list[torch.Tensor]:
        if not self._test:
            self._test.extend(_to_device(self.test_images, self.test_labels, self.device))
        return self._test

    @property
    def test_x(self) -> torch.Tensor:
        return self._test_tensors()[0]

    @property
    def test_y(self) -> torch.Tensor:
        return self._test_tensors()[1]


# Images per host-side NHWC -> NCHW copy: bounds the temporary of the fancy index to 12 MB.
_CHUNK = 4096


def _to_device(
    images: np.ndarray, labels: np.ndarray, device: torch.device, index: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`images[index]` (HWC) as one contiguous NCHW uint8 tensor on `device`, and its labels.
    NCHW is made on the host in one fresh array, transferred once (a permute on the device
    would hold the split twice there); the copy also frees it from read-only arrays (Ray's)."""
    import torch

    rows = np.arange(len(images)) if index is None else index
    host = np.empty((len(rows), images.shape[3], images.shape[1], images.shape[2]), np.uint8)
    for at in range(0, len(rows), _CHUNK):
        host[at : at + _CHUNK] = images[rows[at : at + _CHUNK]].transpose(0, 3, 1, 2)
    y = np.array(labels[rows], dtype=np.int64)
    return torch.from_numpy(host).to(device), torch.from_numpy(y).to(device)


def to_device(arrays: CifarArrays, cfg: DataConfig, device: torch.device) -> DeviceData:
    """`cfg`'s training and validation splits on `device`; the test split follows lazily."""
    split = split_indices(arrays.train_labels, cfg)
    return DeviceData(
        *_to_device(arrays.train_images, arrays.train_labels, device, split.train),
        *_to_device(arrays.train_images, arrays.train_labels, device, split.val),
        arrays.test_images,
        arrays.test_labels,
    )


# The device copy of the data, kept across the trials a reused trial process runs (Ray's
# reuse_actors): one entry, for the last data configuration and device.
_device_data: dict[tuple[Any, ...], DeviceData] = {}


def device_data(arrays: CifarArrays, config: TrialConfig) -> DeviceData:
    """`arrays` split and copied to the trial's device, once per process and data split (the
    trials of a study differ in what they train, rarely in which images)."""
    device = resolve_device(config.device)
    cfg = config.data
    key = (arrays.origin, arrays.train_images.shape, cfg.val_size, cfg.split_seed,
           cfg.train_subset, str(device))  # fmt: skip
    if key not in _device_data:
        _device_data.clear()
        _device_data[key] = to_device(arrays, cfg, device)
    return _device_data[key]
