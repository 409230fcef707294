"""CIFAR-10 as uint8 arrays: loading (bundled slice, offline mirror, torchvision) and checking,
before anything is loaded, that a data location holds what a configuration asks for.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np

from cifartune.config.trial import DataConfig
from cifartune.errors import DataError
from cifartune.storage import Location, is_uri

if TYPE_CHECKING:  # torch is imported where a tensor is made: the command a user starts only
    pass  # checks the data and hands the study to its child (see ``supervise``)


DATA_ENV = "CIFARTUNE_DATA"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
TORCHVISION_TRAIN_IMAGES = 50_000  # CIFAR-10's training set: a torchvision root holds all of it
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
    return Path(__file__).resolve().parents[1] / "assets" / "cifar10_slice.npz"


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
        present = self.kind != "torchvision" or _has_torchvision_copy(self.location)
        verb = "read from" if present or not self.download else "to be downloaded into"
        return f"CIFAR-10 {verb} {self.location} ({self.kind})"


def _has_torchvision_copy(location: str) -> bool:
    return not is_uri(location) and (Path(location).expanduser() / "cifar-10-batches-py").is_dir()


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


def _npy_rows(archive: Path | IO[bytes], member: str, where: str) -> int:
    """Images in array `member` of an npz, from its .npy header alone: the zip's directory and
    the member's first bytes are read (a few hundred bytes, compressed or not), no image."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(archive) as npz, npz.open(f"{member}.npy") as array:
            version = fmt.read_magic(array)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, _ = read(array)
    except KeyError:
        raise DataError(f"{where}: no array {member!r}; expected {MIRROR_LAYOUT}") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise DataError(
            f"{where}: unreadable or truncated npz ({exc}); expected {MIRROR_LAYOUT}"
        ) from None
    if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{where}: images have shape {shape}, expected (N, 32, 32, 3) HWC")
    return int(shape[0])


def train_image_count(source: DataSource) -> int:
    """How many training images `source` holds, known without loading them."""
    if source.kind == "torchvision":
        return TORCHVISION_TRAIN_IMAGES
    if source.kind == "bundled":
        return _npy_rows(bundled_path(), "train_images", str(bundled_path()))
    if not is_uri(source.location):
        path = Path(source.location).expanduser() / "train.npz"
        return _npy_rows(path, "images", str(path))
    # In an object store, a random-access file: zipfile seeks to the directory at the end and
    # to the header, so a few ranged reads stand for the whole object.
    target = _object(source.location) / "train.npz"
    try:
        with target.filesystem.open_input_file(target.path) as handle:
            return _npy_rows(handle, "images", target.uri)
    except OSError as exc:
        raise DataError(f"{target.uri}: cannot read ({exc}); expected {MIRROR_LAYOUT}") from None


def _origin(source: DataSource) -> str:
    if source.kind == "bundled":
        return "the bundled slice"
    if source.kind == "mirror":
        return f"the mirror {source.location}"
    return f"CIFAR-10 (torchvision, {source.location})"


def size_problems(cfg: DataConfig, train_images: int, origin: str) -> list[str]:
    """What in `cfg` asks for more images than `origin`'s `train_images`, one line each,
    naming the field, the value, the images available and the largest value that fits."""
    val_size = cfg.val_size if cfg.val_size is not None else train_images // 10
    if val_size >= train_images:
        return [
            f"data.val_size = {cfg.val_size}: {origin} has {train_images} training images and "
            f"the validation split must leave some to train on; use at most {train_images - 1}"
        ]
    left = train_images - val_size
    if cfg.train_subset is not None and cfg.train_subset > left:
        split = "data.val_size" if cfg.val_size is not None else "data.val_size unset: 10%"
        return [
            f"data.train_subset = {cfg.train_subset}: {origin} has {train_images} training "
            f"images; {left} are left after the validation split of {val_size} ({split}); "
            f"use at most {left}"
        ]
    return []


def describe_source(cfg: DataConfig, also: Iterable[tuple[str, DataConfig]] = ()) -> str:
    """Check, without reading the images, that the data `cfg` names can be read or downloaded
    and holds the images `cfg` asks for; raise DataError naming the field, the location and
    the fix. Returns what will be loaded.

    `also`: (where, data section) of the study's other configurations (variants, space
    values, see :func:`cifartune.spec.data_probes`), whose sizes are checked against the same
    data; a problem there is prefixed with its `where`.
    """
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
    if source.kind == "mirror" and not _has_mirror(source.location):
        raise DataError(f"{where}: no train.npz there; {fix}")
    if source.kind == "torchvision":
        if is_uri(source.location):
            raise DataError(f"{where}: an object-store location must hold a mirror; {fix}")
        batches = Path(source.location).expanduser() / "cifar-10-batches-py"
        if not batches.is_dir() and not source.download:
            raise DataError(f"{where}: holds no CIFAR-10 and data.download is false; {fix}")
    count, origin = train_image_count(source), _origin(source)
    problems = size_problems(cfg, count, origin)
    for label, other in also:  # a problem base has already is not repeated per configuration
        lines = size_problems(other, count, origin)
        problems += [f"{label}: {line}" for line in lines if line not in problems]
    if problems:
        raise DataError("\n".join(dict.fromkeys(problems)))
    return source.describe()


def load_arrays(cfg: DataConfig) -> CifarArrays:
    """Load the images `cfg` points to, as checked uint8 arrays."""
    source = resolve_source(cfg)
    if source.kind == "bundled":
        return load_bundled()
    if source.kind == "mirror":
        return load_mirror(source.location)
    return load_torchvision(Path(source.location).expanduser(), source.download)
