"""The ``cifartune`` command line. The only module that prints; library code logs."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import ConfigError, load_trial_config

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _trial_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="trial config YAML (defaults otherwise)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    from .engine import input_size
    from .model import build_model, count_parameters, layer_table

    config = load_trial_config(args.config, args.overrides)
    model = build_model(config.model, image_size=input_size(config))
    print(f"{'layer':<12}{'output shape':>16}{'weights':>12}{'receptive field':>18}")
    for row in layer_table(model):
        shape = "x".join(map(str, row.output_shape))
        field = (
            "whole image"
            if row.sees_whole_image
            else f"{row.receptive_field}x{row.receptive_field}"
        )
        print(f"{row.name:<12}{shape:>16}{row.weights:>12,}{field:>18}")
    print(f"{'total':<12}{'':>16}{count_parameters(model):>12,}")
    return 0


def _epoch_line(m: dict[str, float]) -> str:
    line = (
        f"epoch {m['epoch']:>3}  train loss {m['train/loss']:.4f} top1 {m['train/top1']:5.2f}  "
        f"val loss {m['val/loss']:.4f} top1 {m['val/top1']:5.2f} top5 {m['val/top5']:5.2f}"
    )
    if "test/top1" in m:
        line += f"  test top1 {m['test/top1']:5.2f}"
    return line + f"  lr {m['lr']:.3g}  {m['time/epoch_s']:.1f}s {m['time/images_per_s']:.0f} img/s"


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .local import CONFIG_FILE, train_local

    out: Path = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if args.resume and args.config is None and not args.overrides:
        args.config = out / CONFIG_FILE
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    config = load_trial_config(args.config, overrides)
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="img", leave=False, dynamic_ncols=True, disable=None)
        bar.update(done - bar.n)
        if done == total:
            bar.close()
            bar = None

    def on_epoch(metrics: dict[str, float]) -> None:
        tqdm.write(_epoch_line(metrics))

    try:
        result = train_local(config, out, resume=args.resume, on_epoch=on_epoch, progress=progress)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the finished epochs are in {out} "
            f"(continue with: cifartune train --resume --out {out})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    best = max(result.history, key=lambda m: m["val/top1"]) if result.history else None
    print(f"{result.status}: {len(result.history)} epochs; results in {out}")
    if best is not None:
        print(f"best val top1 {best['val/top1']:.2f}% at epoch {best['epoch']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifartune", description="Hyperparameter studies of CIFAR-10 classifiers on Ray Tune."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train one configuration locally, without Ray")
    _trial_config_args(train)
    train.add_argument("--out", type=Path, help="output directory (default runs/train-<time>)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides `device`")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.set_defaults(func=cmd_train)

    inspect = sub.add_parser("inspect", help="print the network's layer table (seed Q7, Q10)")
    _trial_config_args(inspect)
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        if args.debug or not _is_user_error(exc):
            raise
        print(f"cifartune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(exc: Exception) -> bool:
    from .data import DataError

    return isinstance(exc, ConfigError | DataError)


if __name__ == "__main__":
    sys.exit(main())
