import math

import pytest
import torch
import torch.nn.functional as F

from cifartune.transforms import (
    build_augment,
    fit_normalizer,
    random_color_jitter,
    random_crop,
    random_cutout,
    random_flip,
    random_rotate,
)

from .helpers import quick_config


def batch(n=16, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_flip_mirrors_exactly_the_chosen_images():
    x = batch(64)
    y = random_flip(x, gen())
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, y, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, y, strict=True)])
    assert bool((flipped | kept).all())
    assert 10 < int(flipped.sum()) < 54  # about half, not none and not all


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = batch(32)
    y = random_crop(x, gen(), padding=4, size=32)
    padded = F.pad(x, (4, 4, 4, 4))
    shifts = set()
    for img, out in zip(padded, y, strict=True):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(img[:, dy : dy + 32, dx : dx + 32], out)
        ]
        assert matches, "crop output is not a window of the padded image"
        shifts.add(matches[0])
    assert len(shifts) > 5


def test_crop_size_variant_returns_smaller_windows_without_padding():
    x = batch(8)
    y = random_crop(x, gen(), padding=0, size=28)
    assert y.shape == (8, 3, 28, 28)
    for img, out in zip(x, y, strict=True):
        assert any(
            torch.equal(img[:, dy : dy + 28, dx : dx + 28], out)
            for dy in range(5)
            for dx in range(5)
        )


def test_same_seed_gives_the_same_augmented_batch_and_another_seed_does_not():
    config = quick_config(data__augment="crop+flip+rotate+jitter+cutout")
    augment = build_augment(config.data)
    x = batch(16)
    assert torch.equal(augment(x, gen(7)), augment(x, gen(7)))
    assert not torch.equal(augment(x, gen(7)), augment(x, gen(8)))


def test_rotation_by_zero_degrees_is_identity_and_90_degrees_is_rot90():
    x = batch(4)
    assert torch.allclose(random_rotate(x, gen(), degrees=0.0), x, atol=1e-5)
    # With degrees=90 every angle is in [-90, 90]; check one exact quarter turn directly.
    angle = torch.full((4,), math.pi / 2)
    theta = torch.stack(
        [
            torch.stack([angle.cos(), -angle.sin(), torch.zeros(4)], 1),
            torch.stack([angle.sin(), angle.cos(), torch.zeros(4)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [4, 3, 32, 32], align_corners=False)
    turned = F.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(turned, torch.rot90(x, 1, (2, 3)), atol=1e-4) or torch.allclose(
        turned, torch.rot90(x, -1, (2, 3)), atol=1e-4
    )


def test_rotation_angles_differ_per_image():
    x = batch(1).expand(8, -1, -1, -1).contiguous()
    y = random_rotate(x, gen(), degrees=30)
    assert len({round(float(img.sum()), 3) for img in y}) == 8


def test_color_jitter_with_zero_strength_is_identity_and_stays_in_range():
    x = batch(8)
    same = random_color_jitter(x, gen(), brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.allclose(same, x, atol=1e-6)
    y = random_color_jitter(x, gen(), brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_hue_shift_keeps_gray_images_gray():
    gray = batch(4)[:, :1].expand(-1, 3, -1, -1).contiguous()
    y = random_color_jitter(gray, gen(), brightness=0, contrast=0, saturation=0, hue=0.5)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-4) and torch.allclose(
        y[:, 1], y[:, 2], atol=1e-4
    )


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(32, 3, 32, 32)
    y = random_cutout(x, gen(), size=8)
    holes = y[:, 0] == 0
    assert bool((y[:, 0] == y[:, 1]).all())
    areas = holes.sum((1, 2))
    assert bool((areas <= 64).all()) and bool((areas > 0).all())
    assert int((areas == 64).sum()) > 10  # most squares lie fully inside


def test_standardization_statistics_come_from_the_training_images_only():
    train = torch.randint(0, 128, (200, 3, 32, 32), dtype=torch.uint8)
    normalizer = fit_normalizer(train, "standardize")
    out = normalizer(train.float() / 255)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    # A different (brighter) set is not centred: nothing was fitted on it.
    other = torch.randint(128, 256, (50, 3, 32, 32), dtype=torch.uint8)
    assert normalizer(other.float() / 255).mean() > 1


@pytest.mark.slow
def test_zca_whitens_the_training_images():
    # Correlated pixels: a low-resolution random image upsampled, plus noise, so the covariance
    # is far from diagonal before whitening. More images than dimensions (3072).
    rng = torch.Generator().manual_seed(0)
    low = torch.rand(4000, 3, 8, 8, generator=rng)
    smooth = F.interpolate(low, size=32, mode="bilinear", align_corners=False)
    images = ((smooth * 0.8 + 0.2 * torch.rand(4000, 3, 32, 32, generator=rng)) * 255).to(
        torch.uint8
    )
    flat = images.float().reshape(4000, -1) / 255
    before = torch.cov(flat.T)
    assert before[0, 1] / before[0, 0] > 0.5  # neighbouring pixels strongly correlated

    normalizer = fit_normalizer(images, "zca", zca_epsilon=1e-6)
    white = normalizer(images.float() / 255).reshape(4000, -1)
    cov = torch.cov(white.T.double())
    assert torch.allclose(white.mean(0), torch.zeros(3072), atol=1e-3)
    assert (cov.diagonal() - 1).abs().mean() < 0.05
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().mean() < 0.01
