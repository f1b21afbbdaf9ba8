"""karpalign-demo: the whole system end to end on the embedded synthetic scenes (what `make demo` runs).

    karpalign-demo --out runs/demo            # ~15 minutes on 2 CPU cores
    karpalign-demo --out /tmp/d --quick       # tiny sizes, ~2 minutes (the end-to-end test)

Steps: generate scenes -> Beam feature extraction (EfficientNet-Lite0 on the scenes' boxes) -> train the
alignment model -> retrieval evaluation (test, test_novel) -> MRF alignment (accuracy, pictures) -> train the
generator on full images and on region snippets -> caption evaluation (beam sizes, nearest-neighbour baseline)
-> SavedModel export -> development gRPC server in a subprocess -> caption test images with the client -> stop
the server -> HTML report (<out>/report/index.html).

Every step calls the same `main(argv)` as its command-line tool (in this process; the server runs in a
subprocess), checks its output, and is skipped when that output already exists, so an interrupted demo
continues where it stopped; `--fresh` starts over. Sizes and steps come from the packaged recipe `demo`
(karpalign/configs/demo.yaml; `--config` takes another YAML file or recipe name).
The report is rebuilt on every run (it takes seconds). Exit code 0 on success, 1 when a step fails (its name
and the reason are printed), 2 on bad arguments or config.
"""

from __future__ import annotations

import argparse
import sys
import time

from karpalign.demo import DEFAULT_CONFIG, DemoConfigError, DemoError, demo

PROG = "karpalign-demo"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"demo config: a YAML file or a packaged recipe's name (default {DEFAULT_CONFIG})")
    p.add_argument("--quick", action="store_true", help="tiny sizes from the config's `quick` section (~2 min)")
    p.add_argument("--fresh", action="store_true", help="delete the demo folder's earlier outputs and start over")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        index = demo(args.out, args.config, quick=args.quick, fresh=args.fresh)
    except DemoConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except DemoError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(f"{PROG}: finished in {time.time() - t0:.0f}s; report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
