import pytest
import torch
import torch.nn.functional as F

from cifartune.engine.transforms import (
    build_augment,
    fit_normalizer,
    random_color_jitter,
    random_crop,
    random_cutout,
    random_flip,
    random_rotate,
)

from ..support import quick_config


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


def _spot_angles(x: torch.Tensor) -> torch.Tensor:
    """Angle in degrees, about the image centre, of each image's intensity centroid."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = x[:, 0]
    cy = (mass * rows).sum((1, 2)) / mass.sum((1, 2)) - 15.5
    cx = (mass * cols).sum((1, 2)) / mass.sum((1, 2)) - 15.5
    return torch.rad2deg(torch.atan2(cy, cx))


def test_rotation_turns_each_image_by_an_angle_within_the_degrees_given():
    # A 2x2 spot 10 pixels right of the centre (angle 0): after rotation its centroid's angle is
    # the image's rotation angle, which must lie in [-30, 30] degrees and use that range.
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 15:17, 25:27] = 1
    assert _spot_angles(x).abs().max() < 1e-4
    angles = _spot_angles(random_rotate(x, gen(), degrees=30))
    assert angles.abs().max() <= 30.5
    assert angles.max() > 20 and angles.min() < -20  # spread over the range, both directions
    assert torch.allclose(random_rotate(x, gen(), degrees=0.0), x, atol=1e-5)


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


def test_standardization_maps_the_training_statistics_to_zero_mean_unit_std():
    # Channel c of every image alternates between two known values: its mean and std are exact.
    low, high = torch.tensor([0, 51, 102]), torch.tensor([102, 153, 255])
    board = torch.arange(32)[:, None] + torch.arange(32)[None, :]
    odd = (board % 2).bool()
    train = torch.where(odd, high[:, None, None], low[:, None, None]).expand(20, 3, 32, 32)
    normalizer = fit_normalizer(train.to(torch.uint8), "standardize")
    mean, std = (low + high) / 2 / 255, (high - low) / 2 / 255
    assert normalizer.mean.flatten().tolist() == pytest.approx(mean.tolist(), abs=1e-6)
    assert normalizer.matrix.flatten().tolist() == pytest.approx((1 / std).tolist(), rel=1e-5)
    out = normalizer(train.float() / 255)
    assert out.mean().item() == pytest.approx(0, abs=1e-5)
    assert out.std((0, 2, 3), correction=0).tolist() == pytest.approx([1, 1, 1], abs=1e-4)


def test_zca_is_the_symmetric_whitening_of_the_training_images():
    # 8x8 images (192 dimensions) keep the fit fast; fit_normalizer works on any image size.
    # Neighbouring pixels are strongly correlated: upsampled low-resolution noise plus noise.
    rng = torch.Generator().manual_seed(0)
    n = 1500
    low = torch.rand(n, 3, 2, 2, generator=rng)
    smooth = F.interpolate(low, size=8, mode="bilinear", align_corners=False)
    noisy = smooth * 0.8 + 0.2 * torch.rand(n, 3, 8, 8, generator=rng)
    images = (noisy * 255).to(torch.uint8)
    flat = images.double().reshape(n, -1) / 255
    cov = torch.cov(flat.T, correction=0)
    assert cov[0, 1] / cov[0, 0] > 0.5

    normalizer = fit_normalizer(images, "zca", zca_epsilon=1e-8)
    w = normalizer.matrix.double()
    assert torch.allclose(w, w.T, atol=1e-6 * w.abs().max().item())  # symmetric: ZCA, not PCA
    assert torch.linalg.eigvalsh(w).min() > 0  # the positive square root
    assert torch.allclose(normalizer.mean.double(), flat.mean(0), atol=1e-6)
    white = normalizer(images.float() / 255).reshape(n, -1).double()
    assert torch.allclose(white.mean(0), torch.zeros(192, dtype=torch.float64), atol=1e-3)
    white_cov = torch.cov(white.T, correction=0)
    assert torch.allclose(white_cov, torch.eye(192, dtype=torch.float64), atol=0.02)
    # W C W = I: the covariance that W whitens is the training covariance.
    assert torch.allclose(w @ cov @ w, torch.eye(192, dtype=torch.float64), atol=0.02)
