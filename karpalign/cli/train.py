"""karpalign-train: train the alignment model, the generator or the region proposer under a tf.distribute
strategy.

  karpalign-train --task align   --config C.yaml --set data.records_dir=runs/records --set train.steps=2000
  karpalign-train --task caption --on images  --config C.yaml --set runtime.output_dir=runs/gen
  karpalign-train --task caption --on regions --set data.region_records_dir=runs/align/regions
  karpalign-train --task propose --set data.dataset=data/scenes/dataset.json --set runtime.output_dir=runs/proposer

Re-running the same command resumes from the newest checkpoint in runtime.output_dir.
"""

from __future__ import annotations

import argparse
import json
import sys

from karpalign.config import ConfigError, load_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["align", "caption", "propose"], required=True)
    p.add_argument("--on", choices=["images", "regions"], default=None, help="caption task: training data")
    p.add_argument("--config", default=None, help="YAML config (see karpalign/config.py for every key)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--strategy", default=None, help="shortcut for --set runtime.strategy=NAME")
    p.add_argument("--output-dir", default=None, help="shortcut for --set runtime.output_dir=DIR")
    p.add_argument("--cpu-replicas", type=int, default=0,
                   help="split the CPU into this many logical devices (to try 'mirrored' without GPUs)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    overrides = [f"train.task={args.task}"] + list(args.set)
    if args.on:
        overrides.append(f"train.on={args.on}")
    if args.strategy:
        overrides.append(f"runtime.strategy={args.strategy}")
    if args.output_dir:
        overrides.append(f"runtime.output_dir={args.output_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"karpalign-train: {e}", file=sys.stderr)
        return 2
    if args.cpu_replicas > 1:
        from karpalign.training.strategy import split_cpu

        split_cpu(args.cpu_replicas)
    from karpalign.training.loop import train
    from karpalign.training.tasks import TASKS

    try:
        result = train(cfg, TASKS[args.task], progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"karpalign-train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"steps": result.steps, "final_loss": result.final_loss, "best": result.best,
                      "seconds": round(result.seconds, 1), "output_dir": cfg.runtime.output_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
