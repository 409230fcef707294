import numpy as np
import pytest
import torch

from cifartune.config.trial import DataConfig
from cifartune.engine.data import load_arrays, load_bundled, load_mirror, load_torchvision
from cifartune.engine.splits import split_indices, to_device
from cifartune.errors import DataError

from ..support import MIRROR, synthetic_arrays, write_mirror


def test_bundled_slice_is_real_stratified_cifar():
    arrays = load_bundled()
    assert arrays.train_images.shape == (2000, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (1000, 32, 32, 3)
    assert np.bincount(arrays.train_labels).tolist() == [200] * 10
    assert np.bincount(arrays.test_labels).tolist() == [100] * 10
    # Real photographs: per-channel means near CIFAR-10's published ones (0.49, 0.48, 0.45).
    means = arrays.train_images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(means, [0.4914, 0.4822, 0.4465], atol=0.03)


def test_bundled_source_is_the_bundled_slice():
    assert load_arrays(DataConfig(source="bundled")).origin == "bundled slice"


def test_validation_split_is_disjoint_stratified_and_fixed_by_its_seed():
    labels = np.arange(5000) % 10
    a = split_indices(labels, DataConfig(val_size=500, split_seed=3))
    b = split_indices(labels, DataConfig(val_size=500, split_seed=3))
    c = split_indices(labels, DataConfig(val_size=500, split_seed=4))
    assert not set(a.train) & set(a.val)
    assert len(a.val) == 500 and len(a.train) == 4500
    assert np.bincount(labels[a.val]).tolist() == [50] * 10
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.val, c.val)


def test_default_validation_is_a_tenth_and_subsets_never_touch_it():
    labels = np.arange(5000) % 10
    full = split_indices(labels, DataConfig())
    sub = split_indices(labels, DataConfig(train_subset=1000))
    assert len(full.val) == 500
    assert np.array_equal(full.val, sub.val)
    assert len(sub.train) == 1000 and np.bincount(labels[sub.train]).tolist() == [100] * 10
    assert set(sub.train) <= set(full.train)


def test_subset_larger_than_the_training_split_is_a_clear_error():
    with pytest.raises(DataError, match="train_subset=4600 exceeds the 4500"):
        split_indices(np.arange(5000) % 10, DataConfig(train_subset=4600))


def test_device_tensors_are_uint8_nchw():
    data = to_device(synthetic_arrays(), DataConfig(val_size=100), torch.device("cpu"))
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (300, 3, 32, 32)
    assert data.val_x.shape == (100, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    assert data.train_y.dtype == torch.int64


def test_device_tensors_put_each_pixel_at_its_channel_row_and_column():
    # One lit value per test image at a known (row, column, channel) of the HWC array: NCHW
    # must hold it at [channel, row, column] (a reshape instead of a permute scrambles it).
    arrays = synthetic_arrays(n_train=20, n_test=3)
    marks = [(0, 3, 5, 2), (1, 31, 0, 0), (2, 7, 30, 1)]  # image, row, column, channel
    arrays.test_images[:] = 0
    for image, row, col, channel in marks:
        arrays.test_images[image, row, col, channel] = 200 + image
    data = to_device(arrays, DataConfig(val_size=10), torch.device("cpu"))
    assert int(data.test_x.count_nonzero()) == len(marks)
    for image, row, col, channel in marks:
        assert int(data.test_x[image, channel, row, col]) == 200 + image
    assert data.test_y.tolist() == arrays.test_labels.tolist()


def test_mirror_directory_round_trips(tmp_path):
    arrays = synthetic_arrays()
    loaded = load_mirror(write_mirror(tmp_path / "m", arrays))
    assert np.array_equal(loaded.train_images, arrays.train_images)
    assert np.array_equal(loaded.test_labels, arrays.test_labels)
    assert load_arrays(DataConfig(dir=str(tmp_path / "m"))).origin.startswith("mirror")


@pytest.mark.skipif(
    not (MIRROR / "train.npz").exists(), reason="the shared CIFAR-10 mirror is absent"
)
def test_real_mirror_loads_with_its_documented_first_labels():
    arrays = load_mirror(MIRROR)
    assert arrays.train_images.shape == (50000, 32, 32, 3)
    assert arrays.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert arrays.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_missing_mirror_directory_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: not a directory.*train\.npz and test\.npz"):
        load_mirror(tmp_path / "nowhere")


def test_missing_test_file_names_it(tmp_path):
    write_mirror(tmp_path, synthetic_arrays())
    (tmp_path / "test.npz").unlink()
    with pytest.raises(DataError, match=r"test\.npz: file missing"):
        load_mirror(tmp_path)


def test_truncated_npz_is_reported_as_such(tmp_path):
    write_mirror(tmp_path, synthetic_arrays())
    path = tmp_path / "train.npz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train\.npz: unreadable or truncated npz"):
        load_mirror(tmp_path)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (
            np.zeros((10, 3, 32, 32), np.uint8),
            np.zeros(10, np.uint8),
            r"shape \(10, 3, 32, 32\), expected \(N, 32, 32, 3\)",
        ),
        (
            np.zeros((10, 32, 32, 3), np.float32),
            np.zeros(10, np.uint8),
            "dtype float32, expected uint8",
        ),
        (
            np.zeros((10, 32, 32, 3), np.uint8),
            np.zeros(9, np.uint8),
            r"labels have shape \(9,\), expected \(10,\)",
        ),
        (
            np.zeros((10, 32, 32, 3), np.uint8),
            np.full(10, 12, np.uint8),
            "labels range over 12..12, expected 0..9",
        ),
    ],
)
def test_wrong_arrays_are_named(tmp_path, images, labels, message):
    write_mirror(tmp_path, synthetic_arrays())
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=message):
        load_mirror(tmp_path)


def test_wrong_array_names_are_named(tmp_path):
    write_mirror(tmp_path, synthetic_arrays())
    np.savez(tmp_path / "train.npz", x=np.zeros(3), y=np.zeros(3))
    with pytest.raises(DataError, match=r"arrays \['images', 'labels'\] missing"):
        load_mirror(tmp_path)


def test_torchvision_root_without_files_and_no_download_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"set data\.download=true"):
        load_torchvision(tmp_path / "tv", download=False)
