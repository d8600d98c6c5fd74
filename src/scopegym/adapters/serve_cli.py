"""``scopegym-serve``: serve an instrument over Pyro5 for ``RemoteInstrument`` clients.

Examples::

    scopegym-serve                                   # the twin on 127.0.0.1:7737
    scopegym-serve --port 0                          # any free port; the URI line says which
    scopegym-serve --kwargs '{"family": "hbn", "seed": 3}'
    SCOPEGYM_SERVE_SECRET=s3cret scopegym-serve --host 0.0.0.0

When the instrument is ready, one line ``scopegym-serve: serving <name> at <URI>`` goes to
standard output. Binding anything but a loopback address needs a shared secret (``--secret`` or
the ``SCOPEGYM_SERVE_SECRET`` environment variable, which keeps it out of the process list);
without one the server refuses to start. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from scopegym.adapters.remote import (
    DEFAULT_PORT,
    SECRET_ENV,
    InstrumentServer,
    is_loopback,
)
from scopegym.instrument import make_instrument

__all__ = ["main", "parse_args"]

PROG = "scopegym-serve"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The namespace: ``instrument``, ``kwargs`` (a dict), ``host``, ``port``, ``secret``.

    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a scopegym instrument over Pyro5 for RemoteInstrument clients.",
    )
    parser.add_argument(
        "--instrument", default="twin", help="registered instrument name (default: twin)"
    )
    parser.add_argument(
        "--kwargs",
        default="{}",
        help="JSON object of keyword arguments for the instrument, e.g. '{\"seed\": 3}'",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; any other needs a secret)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--secret",
        default=None,
        help=f"shared secret clients must hold (default: ${SECRET_ENV}; prefer the variable)",
    )
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as error:
        parser.error(f"--kwargs is not JSON: {error}")
    if not isinstance(kwargs, dict):
        parser.error(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    args.kwargs = kwargs
    if args.secret is None:
        args.secret = os.environ.get(SECRET_ENV)
    args.secret = args.secret or None
    return args


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 after a clean stop, 1 if the instrument or the socket could not be
        set up, 2 for a bad command line (including a non-loopback address without a secret).

    """
    args = parse_args(argv)
    if args.secret is None and not is_loopback(args.host):
        return _fail(
            f"binding {args.host or 'every interface'} would expose the instrument to other "
            f"machines; set {SECRET_ENV} (or pass --secret) to require a shared secret",
            2,
        )
    try:
        instrument = make_instrument(args.instrument, **args.kwargs)
    except Exception as error:  # noqa: BLE001 - one line for the operator, not a traceback
        return _fail(f"cannot make instrument {args.instrument!r}: {error}", 1)
    try:
        server = InstrumentServer(
            instrument, host=args.host, port=args.port, secret=args.secret, name=args.instrument
        )
    except (OSError, ValueError) as error:
        instrument.close()
        return _fail(f"cannot serve on {args.host}:{args.port}: {error}", 1)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    if not is_loopback(args.host):
        print(
            f"{PROG}: warning: the link is not encrypted; tunnel it over untrusted networks",
            file=sys.stderr,
            flush=True,
        )
    print(f"{PROG}: serving {args.instrument} at {server.uri}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        instrument.close()
    print(f"{PROG}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
