"""The commands that run no study: ``train`` (one configuration, no Ray), ``inspect`` and
``validate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cifartune.cli.arguments import Command, overrides_arg, trial_config_args
from cifartune.config.trial import TrialConfig, load_trial_config
from cifartune.errors import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from cifartune.local.replay import Replay


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

    from cifartune.local.train import CONFIG_FILE, train_local

    out: Path = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    replay = _replay(args, out)
    if replay is not None:
        config, schedule = replay.config, replay.schedule
        if args.device:
            config = config.model_copy(update={"device": args.device})
        print(f"replaying trial {replay.trial_id}: {_trained_by(replay.trained_by)}")
        for epoch, changed in schedule.items():
            print(f"  from epoch {epoch}: {_changes(config, changed)}")
    else:
        config_file = args.config
        if args.resume and config_file is None and not args.overrides:
            config_file = out / CONFIG_FILE
        overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
        config, schedule = load_trial_config(config_file, overrides), {}
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
        result = train_local(
            config,
            out,
            resume=args.resume,
            on_epoch=on_epoch,
            progress=progress,
            schedule=schedule,
        )
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


def _replay(args: argparse.Namespace, out: Path) -> Replay | None:
    """The replay `args` ask for: ``--replay``, or the one a resumed ``--out`` was started with
    (its REPLAY_FILE), None for a plain run."""
    import yaml

    from cifartune.config.files import read_yaml
    from cifartune.errors import ConfigError
    from cifartune.local.replay import plan_replay
    from cifartune.local.train import REPLAY_FILE

    if args.replay is None and args.trial is not None:
        raise ConfigError("--trial: names a trial of --replay RESULTS; pass --replay too")
    source = out / REPLAY_FILE
    if args.replay is None and not (args.resume and source.is_file()):
        return None
    if args.config is not None or args.overrides:
        raise ConfigError(
            "--replay: the study's results give the config; drop --config and --set "
            "(--device still applies)"
        )
    if args.replay is None:
        asked = read_yaml(source)
        return plan_replay(str(asked["results"]), str(asked["trial"]))
    replay = plan_replay(args.replay, args.trial)
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        source.write_text(yaml.safe_dump({"results": args.replay, "trial": replay.trial_id}))
    return replay


def _trained_by(trained_by: list[tuple[int, str]]) -> str:
    """'epochs 1-4 as trial a, 5-8 as trial b' from [(epoch, trial)]."""
    from cifartune.store.lineage import spans

    return ", ".join(f"epochs {a}-{b} as trial {t}" for a, b, t in spans(trained_by))


def _changes(before: TrialConfig, after: TrialConfig) -> str:
    from cifartune.engine.run import hyperparameters

    old, new = hyperparameters(before), hyperparameters(after)
    return ", ".join(f"{k} {old[k]} -> {new[k]}" for k in new if new[k] != old[k]) or "-"


def cmd_validate(args: argparse.Namespace) -> int:
    from cifartune.config.resolved import resolve
    from cifartune.config.validation import load_spec
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


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune train``'s arguments."""
    trial_config_args(parser)
    parser.add_argument("--out", type=Path, help="output directory (default runs/train-<time>)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides `device`")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--replay",
        metavar="RESULTS[/TRIAL]",
        help="train a study's trial again from scratch with the hyperparameters it had at each "
        "epoch (a PBT trial's schedule, following its exploits); RESULTS is the study's "
        "results directory (path or URI), TRIAL one of its trial ids (default: the best)",
    )
    parser.add_argument("--trial", help="with --replay: the trial (default: the study's best)")


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune inspect``'s arguments."""
    trial_config_args(parser)


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune validate``'s arguments."""
    parser.add_argument("spec", type=Path, help="the study spec (YAML), e.g. studies/smoke.yaml")
    overrides_arg(
        parser,
        "override a spec key as run would, e.g. --set base.epochs=2 (repeatable)",
    )


TRAIN = Command(
    "train", "train one configuration locally, without Ray", _train_arguments, cmd_train
)
INSPECT = Command(
    "inspect", "print the network's layer table (seed Q7, Q10)", _inspect_arguments, cmd_inspect
)
VALIDATE = Command(
    "validate", "check a study spec fully; start nothing", _validate_arguments, cmd_validate
)
