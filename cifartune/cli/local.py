"""The commands that run no study: ``train`` (one configuration, no Ray), ``inspect`` and
``validate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cifartune.config.trial import load_trial_config
from cifartune.study.signals import EXIT_INTERRUPTED


def cmd_inspect(args: argparse.Namespace) -> int:
    from cifartune.engine.model import build_model, count_parameters, layer_table
    from cifartune.engine.run import input_size

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

    from cifartune.study.local import CONFIG_FILE, train_local

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


def cmd_validate(args: argparse.Namespace) -> int:
    from cifartune.config.resolved import resolve
    from cifartune.config.spec import load_spec
    from cifartune.engine.data import describe_source

    resolved = resolve(load_spec(args.spec, args.overrides))
    spec = resolved.spec
    # What depends on the data too (a subset larger than the images), for every configuration
    # the study can run, from the data's file headers: no image is loaded.
    data = describe_source(resolved.base.data, also=resolved.data_probes)
    print(
        f"{args.spec}: valid study '{spec.name}' ({resolved.trials} trials, "
        f"{spec.search.algorithm} search, {spec.scheduler.name} scheduler; data: {data})"
    )
    return 0
