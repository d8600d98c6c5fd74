"""``scopegym-export``: turn an experiment record into a NeXus or NSID file.

Examples::

    scopegym-export outputs/run/record.h5                   # -> outputs/run/record.nxs
    scopegym-export record.h5 --to nsid                     # -> record_nsid.h5
    scopegym-export record.h5 --to nexus --out scan.nxs --force

Frames, spectra and Ronchigrams become datasets with units and axes (see
:mod:`scopegym.adapters.export`); the step log, the commands and their times come along. A
record left open by a crash exports as it is, with every completed step. On success one line
says what was written; errors are one line on standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scopegym.adapters.export import FORMATS, export_record

__all__ = ["main", "parse_args"]

PROG = "scopegym-export"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The namespace: ``record``, ``to``, ``out`` (None for the default), ``force``.

    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Export a scopegym record.h5 so that HyperSpy, nexusformat, h5web, HDFView or "
            "pycroscopy's pyNSID/sidpy open its frames, spectra and Ronchigrams with units and "
            "axes."
        ),
    )
    parser.add_argument("record", help="the record written by scopegym-run (record.h5)")
    parser.add_argument(
        "--to",
        choices=FORMATS,
        default="nexus",
        help="layout: nexus (.nxs, for HyperSpy, nexusformat, h5web) or nsid (pyNSID/sidpy); "
        "default: nexus",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output file (default: beside the record, record.nxs or record_nsid.h5)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Export one record.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 when the file was written, 1 when the record could not be read or
        the output not written, 2 for a bad command line.

    """
    args = parse_args(argv)
    try:
        summary = export_record(args.record, args.out, layout=args.to, overwrite=args.force)
    except (OSError, ValueError, KeyError) as error:
        # One line for the user, not a traceback: a missing or foreign file, an existing output.
        print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
        return 1
    print(
        f"{PROG}: wrote {summary.path} ({summary.layout}): {summary.count('frame')} frames, "
        f"{summary.count('spectrum')} spectra, {summary.count('ronchigram')} Ronchigrams, "
        f"{summary.n_steps} steps in the log",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
