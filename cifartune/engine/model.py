"""The seed network of the practical work and its layer table (shape, weights, receptive field)."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cifartune.config.trial import ModelConfig
from cifartune.engine.data import NUM_CLASSES

log = logging.getLogger(__name__)


class SeedNet(nn.Module):
    """conv5x5(32)-pool, conv5x5(64)-pool, conv5x5(64)-pool, fc 1000, fc 10: 1,191,170 weights.

    Options: batch norm after each convolution, dropout with probability p before each
    fully-connected layer. ``image_size`` follows the crop size (28 gives 64*3*3 fc inputs).
    """

    def __init__(self, *, dropout: float = 0.0, batchnorm: bool = False, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 32, 64, 64]
        for index, (c_in, c_out) in enumerate(itertools.pairwise(channels), start=1):
            layers.append(_named(nn.Conv2d(c_in, c_out, kernel_size=5, padding=2), f"conv{index}"))
            if batchnorm:
                layers.append(_named(nn.BatchNorm2d(c_out), f"bn{index}"))
            layers.append(nn.ReLU(inplace=True))
            layers.append(_named(nn.MaxPool2d(2), f"pool{index}"))
        side = image_size // 8
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            _named(nn.Linear(64 * side * side, 1000), "fc4"),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            _named(nn.Linear(1000, NUM_CLASSES), "fc5"),
        )
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _named(module: nn.Module, name: str) -> nn.Module:
    module.display_name = name  # type: ignore[assignment]
    return module


def build_model(cfg: ModelConfig, *, image_size: int = 32) -> SeedNet:
    return SeedNet(dropout=cfg.dropout, batchnorm=cfg.batchnorm, image_size=image_size)


def compiled_forward(
    model: nn.Module, mode: str, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training forward for ``compile = mode``: the model itself (``none``), or
    ``torch.compile`` of it (``model``), replayed as CUDA graphs (``cudagraphs``: inductor's
    reduce-overhead mode, forward and backward; on a CPU the same as ``model``, logged).

    Where the compiler cannot run (no C++ compiler on a CPU, no Triton on CUDA) the model
    stays eager, logged. Shapes are static: full batches only (the epoch's last, partial batch
    runs eager) and evaluation runs eager, so each run compiles one graph.
    """
    if mode == "none":
        return model
    missing = _compiler_missing(device)
    if missing:
        log.warning("compile=%s: %s; training runs eager", mode, missing)
        return model
    if mode == "cudagraphs" and device.type != "cuda":
        log.info(
            "compile=cudagraphs: CUDA graphs apply on CUDA only; on %s as compile=model", device
        )
        mode = "model"
    options = "reduce-overhead" if mode == "cudagraphs" else "default"
    return torch.compile(model, mode=options, dynamic=False)


def _compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile's inductor backend cannot build kernels for `device`, or None."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++, clang++) on PATH"
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerRow:
    name: str
    output_shape: tuple[int, ...]
    weights: int
    receptive_field: int  # side, in input pixels, of the square a unit of this layer sees
    sees_whole_image: bool = False  # fully-connected units depend on every input pixel


def layer_table(model: SeedNet) -> list[LayerRow]:
    """Per named layer: output shape (C, H, W), weights and receptive field (seed Q7, Q10).

    The receptive field grows by (kernel - 1) * jump at each conv/pool, where jump is the product
    of the strides so far; it may exceed the image where it reaches into the zero padding.
    Fully-connected units see the whole input.
    """
    rows = [LayerRow("input", (3, model.image_size, model.image_size), 0, 1)]
    field, jump = 1, 1
    x = torch.zeros(1, 3, model.image_size, model.image_size)
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        for module in [*model.features, *model.classifier]:
            x = module(x)
            name = getattr(module, "display_name", None)
            if isinstance(module, nn.Conv2d | nn.MaxPool2d):
                kernel = _first(module.kernel_size)
                field += (kernel - 1) * jump
                jump *= _first(module.stride)
            if name is None:
                continue
            if isinstance(module, nn.BatchNorm2d):
                # Batch norm acts per unit of the conv before it; fold it into that row.
                previous = rows.pop()
                rows.append(
                    LayerRow(
                        previous.name + "+" + name,
                        previous.output_shape,
                        previous.weights + count_parameters(module),
                        previous.receptive_field,
                    )
                )
                continue
            rows.append(
                LayerRow(
                    name,
                    tuple(x.shape[1:]),
                    count_parameters(module),
                    field,
                    sees_whole_image=isinstance(module, nn.Linear),
                )
            )
    model.train(model_was_training)
    return rows


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value
