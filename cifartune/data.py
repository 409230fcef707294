"""CIFAR-10 as uint8 arrays: loading (bundled slice, offline mirror, torchvision), checking,
the seeded validation split and stratified subsets, and the device-resident tensors a run uses.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .config import DataConfig
from .errors import DataError
from .storage import Location, is_uri

log = logging.getLogger(__name__)

DATA_ENV = "CIFARTUNE_DATA"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip
MIRROR_LAYOUT = (
    "train.npz and test.npz, each with 'images' uint8 (N, 32, 32, 3) HWC RGB and 'labels' (N,) "
    "integers in 0..9"
)


@dataclass(frozen=True)
class CifarArrays:
    """The raw dataset in host memory: images uint8 (N, 32, 32, 3), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str


def bundled_path() -> Path:
    return Path(__file__).parent / "assets" / "cifar10_slice.npz"


def _check_arrays(images: object, labels: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        shape = getattr(images, "shape", None)
        raise DataError(f"{where}: images have shape {shape}, expected (N, 32, 32, 3) HWC")
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images have dtype {images.dtype}, expected uint8 (0..255)")
    if not isinstance(labels, np.ndarray) or labels.shape != (len(images),):
        shape = getattr(labels, "shape", None)
        raise DataError(f"{where}: labels have shape {shape}, expected ({len(images)},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{where}: labels range over {labels.min()}..{labels.max()}, expected 0..9")
    return images, labels.astype(np.int64)


def _read_npz(path: Path, names: tuple[str, ...] = ("images", "labels")) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise DataError(f"{path}: file missing; a CIFAR-10 mirror directory holds {MIRROR_LAYOUT}")
    return _parse_npz(path, str(path), names)


def _parse_npz(
    source: Path | io.BytesIO, where: str, names: tuple[str, ...] = ("images", "labels")
) -> tuple[np.ndarray, ...]:
    try:
        with np.load(source, allow_pickle=False) as archive:
            missing = [n for n in names if n not in archive.files]
            if missing:
                raise DataError(
                    f"{where}: arrays {missing} missing (has {archive.files}); expected {names}"
                )
            return tuple(archive[n] for n in names)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise DataError(
            f"{where}: unreadable or truncated npz ({exc}); expected {MIRROR_LAYOUT}"
        ) from None


def _object(uri: str) -> Location:
    try:
        return Location.of(uri)
    except (ValueError, OSError) as exc:
        raise DataError(f"data.dir = {uri!r}: cannot open this URI: {exc}") from None


def load_mirror(location: str | Path) -> CifarArrays:
    """The offline mirror layout: ``train.npz`` and ``test.npz`` with images/labels arrays, in a
    directory or under an object-store URI (one copy for a whole cluster)."""
    text = str(location)
    parts = {}
    if is_uri(text):
        for split in ("train", "test"):
            where = f"{text.rstrip('/')}/{split}.npz"
            try:
                payload = (_object(text) / f"{split}.npz").open_for_reading()
            except OSError as exc:
                raise DataError(f"{where}: cannot read ({exc}); expected {MIRROR_LAYOUT}") from None
            images, labels = _parse_npz(payload, where)
            parts[split] = _check_arrays(images, labels, where)
        return CifarArrays(*parts["train"], *parts["test"], origin=f"mirror {text}")
    directory = Path(text).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; expected one holding {MIRROR_LAYOUT}")
    for split in ("train", "test"):
        path = directory / f"{split}.npz"
        images, labels = _read_npz(path)
        parts[split] = _check_arrays(images, labels, str(path))
    return CifarArrays(*parts["train"], *parts["test"], origin=f"mirror {directory}")


def load_bundled() -> CifarArrays:
    """The small stratified real slice shipped in the package (scripts/make_bundled_slice.py)."""
    path = bundled_path()
    names = ("train_images", "train_labels", "test_images", "test_labels")
    arrays = _read_npz(path, names)
    train = _check_arrays(arrays[0], arrays[1], f"{path} (train)")
    test = _check_arrays(arrays[2], arrays[3], f"{path} (test)")
    return CifarArrays(*train, *test, origin="bundled slice")


def load_torchvision(root: Path, download: bool) -> CifarArrays:
    """A torchvision CIFAR-10 root. torchvision checks the archive's MD5 and skips a download it
    already has; the file lock makes concurrent processes (trials, nodes) download it once."""
    from filelock import FileLock
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    parts = {}
    with FileLock(str(root / ".cifar10.lock")):
        for train in (True, False):
            try:
                dataset = datasets.CIFAR10(str(root), train=train, download=download)
            except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
                hint = "" if download else "; set data.download=true to fetch it"
                raise DataError(
                    f"{root}: no usable torchvision CIFAR-10 (cifar-10-batches-py) ({exc}){hint}"
                ) from None
            except (OSError, pickle.UnpicklingError) as exc:
                raise DataError(f"{root}: cannot read or download CIFAR-10: {exc}") from None
            parts[train] = _check_arrays(
                np.asarray(dataset.data), np.asarray(dataset.targets), f"{root} (torchvision)"
            )
    return CifarArrays(*parts[True], *parts[False], origin=f"torchvision {root}")


def default_location() -> str:
    """Where CIFAR-10 lives when ``data.dir`` is unset: $CIFARTUNE_DATA, else a per-user cache."""
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "cifartune" / "cifar10")


@dataclass(frozen=True)
class DataSource:
    kind: Literal["bundled", "mirror", "torchvision"]
    location: str
    download: bool

    def describe(self) -> str:
        if self.kind == "bundled":
            return "the bundled slice"
        verb = "downloaded into" if self.kind == "torchvision" and self.download else "read from"
        return f"CIFAR-10 {verb} {self.location} ({self.kind})"


def _has_mirror(location: str) -> bool:
    if is_uri(location):
        try:
            return (_object(location) / "train.npz").is_file()
        except OSError as exc:
            raise DataError(f"data.dir = {location!r}: cannot reach it: {exc}") from None
    return (Path(location).expanduser() / "train.npz").is_file()


def resolve_source(cfg: DataConfig) -> DataSource:
    """What `cfg` reads: the bundled slice, a mirror, or a torchvision root (see DataConfig)."""
    if cfg.source == "bundled":
        return DataSource("bundled", str(bundled_path()), False)
    location = cfg.dir or default_location()
    kind: Literal["mirror", "torchvision"]
    if cfg.source == "auto":
        kind = "mirror" if _has_mirror(location) else "torchvision"
    else:
        kind = cfg.source
    return DataSource(kind, location, cfg.download)


def describe_source(cfg: DataConfig) -> str:
    """Check, without reading the images, that the data `cfg` names can be read or downloaded;
    raise DataError naming the field, the location and the fix. Returns what will be loaded."""
    source = resolve_source(cfg)
    where = (
        f"data.dir = {cfg.dir!r}"
        if cfg.dir
        else f"data.dir is unset, so the data location is {source.location} ({DATA_ENV} "
        f"{'= ' + repr(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else 'is not set'})"
    )
    fix = (
        f"point data.dir or {DATA_ENV} at a CIFAR-10 copy ({MIRROR_LAYOUT}, or torchvision's "
        "cifar-10-batches-py), or allow data.download=true"
    )
    if source.kind == "mirror":
        if not _has_mirror(source.location):
            raise DataError(f"{where}: no train.npz there; {fix}")
        return source.describe()
    if source.kind == "torchvision":
        if is_uri(source.location):
            raise DataError(f"{where}: an object-store location must hold a mirror; {fix}")
        batches = Path(source.location).expanduser() / "cifar-10-batches-py"
        if not batches.is_dir() and not source.download:
            raise DataError(f"{where}: holds no CIFAR-10 and data.download is false; {fix}")
    return source.describe()


def load_arrays(cfg: DataConfig) -> CifarArrays:
    """Load the images `cfg` points to, as checked uint8 arrays."""
    source = resolve_source(cfg)
    if source.kind == "bundled":
        return load_bundled()
    if source.kind == "mirror":
        return load_mirror(source.location)
    return load_torchvision(Path(source.location).expanduser(), source.download)


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
    val = stratified_take(labels, val_size, rng)
    rest = np.setdiff1d(np.arange(n), val, assume_unique=True)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(rest):
            raise DataError(
                f"data.train_subset={cfg.train_subset} exceeds the {len(rest)} training images "
                f"left after the validation split of {val_size}"
            )
        subset_rng = np.random.default_rng([cfg.split_seed, 1])
        rest = rest[stratified_take(labels[rest], cfg.train_subset, subset_rng)]
    return SplitIndices(train=rest, val=val)


@dataclass(frozen=True)
class DeviceData:
    """The tensors a run trains on, on its device: images uint8 NCHW, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def _to_device(
    images: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # One transfer of uint8 (4x smaller than float); NHWC -> NCHW made contiguous once. The
    # copy also detaches the tensors from read-only arrays (Ray's object store hands those out).
    x = torch.tensor(images).to(device).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64).to(device)


def to_device(arrays: CifarArrays, cfg: DataConfig, device: torch.device) -> DeviceData:
    split = split_indices(arrays.train_labels, cfg)
    return DeviceData(
        *_to_device(arrays.train_images[split.train], arrays.train_labels[split.train], device),
        *_to_device(arrays.train_images[split.val], arrays.train_labels[split.val], device),
        *_to_device(arrays.test_images, arrays.test_labels, device),
    )
