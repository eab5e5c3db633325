"""``run`` (the experiments as a function) and ``main`` (the command line)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

from .. import __version__, get_num_threads, info, set_num_threads
from .._runtime import MAX_THREADS
from .._validate import SEED_LIMIT
from ..__main__ import _print_info
from ._setup import load_data
from .experiments import EXPERIMENTS, Context
from .report import write_report, write_results

DEFAULT_OUT = "gradcore-lab"
DEFAULT_SEED = 42  # the documents' seed


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(experiments: Optional[Sequence[str]] = None, out: Optional[str] = DEFAULT_OUT, quick: bool = False,
        seed: int = DEFAULT_SEED, plots: bool = True, print_fn: Optional[Callable[[str], None]] = print,
        threads: Optional[int] = 1) -> Dict[str, Any]:
    """Run the documents' experiments and return their results.

    ``experiments``: names from ``EXPERIMENTS`` (vanishing, exploding, clipping, batchnorm,
    compare, repair), in the order given (a repeated name runs once); None runs them all. ``out``: the folder for
    ``report.md``, ``results.json`` and the figures (created if needed); None writes
    nothing. ``quick``: fewer rows (400) and epochs, for CI. ``seed`` seeds the data set,
    the split and every network's initial weights, so a seed repeats its numbers exactly
    (gradcore's random stream is reseeded with it, as ``gradcore.manual_seed`` does).
    ``plots``: draw PNG figures (needs matplotlib; without it the report says so).
    ``print_fn`` receives each experiment's tables as text as soon as it finishes (None:
    silent). ``threads``: gradcore / BLAS threads during the run, restored after it (None:
    leave them). The default is 1: the networks are small (at most 800 x 50) so a second
    thread does not pay, and on a busy machine waiting for it made the lab 5x slower.

    Returns ``{"gradcore": {...}, "seed", "quick", "experiments": {name: section}}``,
    each section a dict with ``title``, ``setup``, ``tables`` (title, columns, rows),
    ``notes``, ``missing``, ``plots`` and ``data`` (the raw numbers), as written to
    results.json (which has non-finite numbers as the strings "nan" / "inf").
    """
    if isinstance(experiments, str):
        experiments = [experiments]
    names = list(EXPERIMENTS) if experiments is None else list(dict.fromkeys(experiments))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"run: unknown experiment(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(EXPERIMENTS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"run: seed must be a non-negative int below 2**64, got {seed!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"run: threads must be None or a positive int (at most {MAX_THREADS}), got {threads!r}")
    say = print_fn or (lambda text: None)
    draw = bool(plots) and out is not None
    if draw and not _matplotlib_available():
        say("matplotlib is not installed: no figures (pip install gradcore[plot])")
        draw = False
    if out is not None:
        os.makedirs(out, exist_ok=True)
    ctx = Context(load_data(seed, 400 if quick else 1000), seed, bool(quick), out, draw)

    sections, seconds = [], {}
    previous_threads = get_num_threads()
    if threads is not None:
        set_num_threads(threads)
    try:
        build = info()
        for name in names:
            t0 = time.perf_counter()
            section = EXPERIMENTS[name](ctx)
            seconds[name] = time.perf_counter() - t0
            sections.append(section)
            say(section.to_text() + f"({seconds[name]:.2f} s)\n")
    finally:
        if threads is not None:
            set_num_threads(previous_threads)

    results = {"gradcore": {"version": __version__, "info": build}, "seed": seed, "quick": bool(quick),
               "data": ctx.data.describe(), "experiments": {s.name: s.to_dict() for s in sections}}
    if out is not None:
        command = " ".join(["python -m gradcore.lab"] + ([] if experiments is None else names)
                           + (["--quick"] if quick else []) + [f"--seed {seed}"])
        header = ["# gradcore lab: the documents' gradient experiments", "",
                  f"gradcore {__version__} (" + "; ".join(f"{k}: {v}" for k, v in build.items() if k != "version")
                  + ")", "", f"Command: `{command}`{'' if draw else ' (no figures)'}", "",
                  f"Data: {ctx.data.describe()}.", "",
                  "Run time: " + ", ".join(f"{n} {s:.2f} s" for n, s in seconds.items())
                  + f"; total {sum(seconds.values()):.2f} s.", "",
                  "Numbers are float64 unless a run says otherwise; figures are linked under each section; "
                  "`results.json` holds every number below and the per-epoch records."]
        write_report(os.path.join(out, "report.md"), header, sections)
        write_results(os.path.join(out, "results.json"), results)
        say(f"wrote {os.path.join(out, 'report.md')} and results.json ({sum(seconds.values()):.2f} s)")
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gradcore.lab",
        description="Reproduce the documents' vanishing / exploding gradient experiments with gradcore and write "
                    "report.md (tables and figures) and results.json.",
        epilog=f"experiments: {', '.join(EXPERIMENTS)} (default: all, in this order)")
    parser.add_argument("experiments", nargs="*", metavar="experiment",
                        help="which experiments to run (default: all)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for report.md, results.json and the figures (default: ./{DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="fewer rows and epochs: a few seconds, for CI")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N",
                        help=f"seed of the data and every network's weights (default: {DEFAULT_SEED})")
    parser.add_argument("--no-plots", action="store_true", help="write no figures")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="gradcore / BLAS threads for the run (default: 1, the networks are small)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m gradcore.lab [experiment ...] [--out DIR] [--quick] [--seed N]
    [--no-plots] [--threads N]``: print gradcore's build information, then run the experiments. A bad
    argument (an unknown experiment, a seed outside [0, 2**64), threads outside [1, MAX_THREADS],
    an --out that is a file or cannot be created) prints the usage and exits with status 2
    before anything runs."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    unknown = [n for n in args.experiments if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r} (choose from {', '.join(EXPERIMENTS)})")
    if not 0 <= args.seed < SEED_LIMIT:
        parser.error(f"--seed must be a non-negative integer below 2**64, got {args.seed}")
    if not 1 <= args.threads <= MAX_THREADS:
        parser.error(f"--threads must be a positive integer (at most {MAX_THREADS}), got {args.threads}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a file, not a folder")
    try:  # a folder that cannot be made (a file on its path, no permission) is a usage error too
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out!r}: cannot create the folder ({exc.strerror or exc})")
    if not os.access(args.out, os.W_OK | os.X_OK):
        parser.error(f"--out {args.out!r}: the folder is not writable")
    _print_info()
    print()
    run(args.experiments or None, out=args.out, quick=args.quick, seed=args.seed, plots=not args.no_plots,
        threads=args.threads)
    return 0
