"""The end-to-end demo on the embedded synthetic scenes dataset (what `make demo` runs).

Each step checks for its output and is skipped when that output exists (re-running reuses finished steps);
`--fresh` starts over. Progress of every long step goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time


def _step(name: str, done: bool, fn) -> None:
    if done:
        print(f"[demo] {name}: already done, reusing", file=sys.stderr)
        return
    t0 = time.time()
    print(f"[demo] {name} ...", file=sys.stderr)
    fn()
    print(f"[demo] {name}: done in {time.time() - t0:.1f}s", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-demo", description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs and start over")
    args = p.parse_args(argv)
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)
    scenes = os.path.join(args.out, "scenes")
    dataset = os.path.join(scenes, "dataset.json")
    vocab_path = os.path.join(args.out, "vocab.txt")

    def make_scenes():
        from karpalign.datasets import generate_scenes

        generate_scenes(scenes, args.num_images, seed=args.seed, image_size=args.image_size, progress=True)

    def build_vocab():
        from karpalign.cli.vocab import main as vocab_main

        if vocab_main([dataset, "--min-count", "5", "--out", vocab_path]) != 0:
            raise SystemExit(2)

    _step("generate synthetic scenes", os.path.exists(dataset), make_scenes)
    _step("build the vocabulary (train split only)", os.path.exists(vocab_path), build_vocab)

    from karpalign.data.records import by_split, read_karpathy_json
    from karpalign.data.text import Vocabulary

    records = read_karpathy_json(dataset)
    vocab = Vocabulary.load(vocab_path)
    summary = {"images": {k: len(v) for k, v in sorted(by_split(records).items())},
               "sentences": sum(len(r.sentences) for r in records), "vocabulary": len(vocab),
               "example": {"image": records[0].path, "captions": [s.raw for s in records[0].sentences]}}
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
