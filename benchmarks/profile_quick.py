"""Where the quick suite's time goes, function by function: ``tlbench run quick`` under cProfile.

    python benchmarks/profile_quick.py [--out DIR] [--top 40] [--warm]

Prints the run's own phase line (pretraining, tuning, evaluation training, inference, report,
other), then the top functions by cumulative time, and keeps the whole profile as
``DIR/quick.prof`` (``python -m pstats DIR/quick.prof`` to explore it; snakeviz and similar
tools read it too). cProfile adds its own overhead to every Python call, so the phases' shares
are a little off the real run's; the functions it ranks first are where the time goes. Cold by
default (a fresh backbone cache, pretraining included); ``--warm`` reuses ``$TLBENCH_CACHE``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the run and the profile go (default: a "
                                                                   "temporary folder)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--warm", action="store_true", help="keep $TLBENCH_CACHE (pretrained backbones)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tlbench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.warm:
        os.environ["TLBENCH_CACHE"] = str(out / "cache")
    from tlbench.cli.main import main as tlbench

    profile = cProfile.Profile()
    code = profile.runcall(tlbench, ["run", "quick", "--out", str(out / "run")])
    profile.dump_stats(out / "quick.prof")
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.top)
    print(text.getvalue())
    print(f"profile: {out / 'quick.prof'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
