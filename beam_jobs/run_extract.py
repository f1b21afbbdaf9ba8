#!/usr/bin/env python
"""Launcher for the feature-extraction job: the same as the ``karpalign-extract`` console script.

Run from the repository root (or anywhere karpalign is installed); every argument is passed through, and the
ones karpalign-extract does not know are Beam pipeline options. See beam_jobs/README.md for the Dataflow,
Flink and Spark commands. This is a plain script, not a package: workers import karpalign by module path.
"""

import sys

from karpalign.cli.extract import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
