"""Batched, device-side image transforms: augmentation and normalization.

Every augmentation is a pure function of a float batch (B, C, H, W) in [0, 1] and an explicit
``torch.Generator``, so a seed fixes the batch exactly and nothing loops over images in Python.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cifartune.config.trial import DataConfig

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(
    n: int, low: float, high: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_crop(x: torch.Tensor, gen: torch.Generator, *, padding: int, size: int) -> torch.Tensor:
    """A `size` x `size` window at a random offset of the zero-padded image, one per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    dy = torch.randint(0, h + 2 * padding - size + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, w + 2 * padding - size + 1, (b,), generator=gen, device=x.device)
    offsets = torch.arange(size, device=x.device)
    rows = (dy[:, None] + offsets)[:, :, None]
    cols = (dx[:, None] + offsets)[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # One gather over an NHWC view; the result comes back as NCHW in channels_last layout.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1, the space every augmentation works in."""
    return images.to(torch.float32) / 255


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    if size == x.shape[-1]:
        return x
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_rotate(x: torch.Tensor, gen: torch.Generator, *, degrees: float) -> torch.Tensor:
    """Rotate each image by its own angle in [-degrees, degrees]; corners are filled with 0."""
    angle = _uniform(x.shape[0], -degrees, degrees, gen, x.device) * (math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# RGB <-> YIQ: hue is the angle of the (I, Q) chroma vector, so a hue shift is a 2-D rotation.
# The first row (Y) holds the luma weights that contrast and saturation use.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@functools.cache
def _color_matrices(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB->YIQ and its inverse on `device`, copied there once: a per-batch copy from host
    memory (or a matrix inverse on the GPU) would make the host wait for the GPU every batch."""
    return _RGB_TO_YIQ.to(device, dtype), _YIQ_TO_RGB.to(device, dtype)


def random_color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation factors in [1-a, 1+a] and a hue shift in
    [-hue, hue] turns, as in torchvision's ColorJitter but batched with one factor per image."""
    n, dev = x.shape[0], x.device

    def factor(amount: float) -> torch.Tensor:
        return _uniform(n, 1 - amount, 1 + amount, gen, dev)[:, None, None, None]

    to_yiq, to_rgb = _color_matrices(dev, x.dtype)
    weights = to_yiq[0][None, :, None, None]
    x = x * factor(brightness)
    gray_mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - gray_mean) * factor(contrast) + gray_mean
    gray = (x * weights).sum(1, keepdim=True)
    x = (x - gray) * factor(saturation) + gray
    if hue > 0:
        yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
        turn = _uniform(n, -hue, hue, gen, dev) * (2 * math.pi)
        cos, sin = turn.cos()[:, None, None], turn.sin()[:, None, None]
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
        x = torch.einsum("ij,bjhw->bihw", to_rgb, yiq)
    return x.clamp(0, 1)


def random_cutout(x: torch.Tensor, gen: torch.Generator, *, size: int) -> torch.Tensor:
    """Zero one `size` x `size` square per image, centred anywhere (it may overhang the border)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=x.device)[:, None, None]
    cx = torch.randint(0, w, (b,), generator=gen, device=x.device)[:, None, None]
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~hole)[:, None].to(x.dtype)


def build_augment(cfg: DataConfig) -> Transform:
    """Compose the augmentations named in ``cfg.augment``, in the order given."""
    steps: dict[str, Transform] = {
        "crop": lambda x, g: random_crop(x, g, padding=cfg.crop_padding, size=cfg.crop_size),
        "flip": random_flip,
        "rotate": lambda x, g: random_rotate(x, g, degrees=cfg.rotate_degrees),
        "jitter": lambda x, g: random_color_jitter(
            x,
            g,
            brightness=cfg.jitter_brightness,
            contrast=cfg.jitter_contrast,
            saturation=cfg.jitter_saturation,
            hue=cfg.jitter_hue,
        ),
        "cutout": lambda x, g: random_cutout(x, g, size=cfg.cutout_size),
    }
    chosen = [steps[name] for name in cfg.augment]

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in chosen:
            x = step(x, gen)
        return x

    return augment


class Normalizer(torch.nn.Module):
    """A fixed affine map ``(x - mean) @ matrix`` fitted on the training split only (seed Q20).

    ``standardize`` uses a per-channel mean and diagonal 1/std; ``zca`` the full 3072x3072
    whitening matrix over flattened images. ``none`` is the identity.
    """

    mean: torch.Tensor
    matrix: torch.Tensor

    def __init__(
        self, kind: str, mean: torch.Tensor | None = None, matrix: torch.Tensor | None = None
    ):
        super().__init__()
        self.kind = kind
        self.register_buffer("mean", mean)
        self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "standardize":
            return (x - self.mean) * self.matrix
        if self.kind == "zca":
            flat = x.reshape(x.shape[0], -1) - self.mean
            return (flat @ self.matrix).reshape(x.shape)
        return x


def fit_normalizer(
    train_images: torch.Tensor, kind: str, *, zca_epsilon: float = 0.1
) -> Normalizer:
    """Fit `kind` (none | standardize | zca) on uint8 training images (N, 3, H, W)."""
    if kind == "none":
        return Normalizer("none")
    if kind == "standardize":
        mean = torch.zeros(3, dtype=torch.float64, device=train_images.device)
        sq = torch.zeros_like(mean)
        # Chunked float64 sums: the full float copy of 45k images would cost 550 MB.
        for chunk in train_images.split(4096):
            x = to_float(chunk).double()
            mean += x.sum((0, 2, 3))
            sq += (x * x).sum((0, 2, 3))
        count = train_images.shape[0] * train_images.shape[2] * train_images.shape[3]
        mean /= count
        std = (sq / count - mean**2).sqrt()
        return Normalizer(
            "standardize", mean.float()[None, :, None, None], (1 / std).float()[None, :, None, None]
        )
    if kind == "zca":
        n = train_images.shape[0]
        dims = train_images[0].numel()
        mean = torch.zeros(dims, dtype=torch.float64, device=train_images.device)
        for chunk in train_images.split(4096):
            mean += to_float(chunk).double().reshape(len(chunk), -1).sum(0)
        mean /= n
        cov = torch.zeros(dims, dims, dtype=torch.float64, device=train_images.device)
        for chunk in train_images.split(4096):
            centered = to_float(chunk).double().reshape(len(chunk), -1) - mean
            cov += centered.T @ centered
        cov /= n
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        scale = (eigenvalues.clamp_min(0) + zca_epsilon).rsqrt()
        matrix = (eigenvectors * scale) @ eigenvectors.T
        return Normalizer("zca", mean.float(), matrix.float())
    raise ValueError(f"unknown normalization {kind!r}")
