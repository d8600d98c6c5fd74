"""``scopegym-serve``: serve an instrument over Pyro5 for ``RemoteInstrument`` clients.

Examples::

    scopegym-serve                                   # the twin on 127.0.0.1:7737
    scopegym-serve --port 0                          # any free port; the URI line says which
    scopegym-serve --kwargs '{"family": "hbn", "seed": 3}'
    SCOPEGYM_SERVE_SECRET=<24+ random characters> scopegym-serve --host 0.0.0.0 \
        --tls-cert server.pem --tls-key server.key

When the instrument is ready, one line ``scopegym-serve: serving <name> at <URI>`` goes to
standard output. Binding anything but a loopback address needs a shared secret (``--secret`` or
the ``SCOPEGYM_SERVE_SECRET`` environment variable, which keeps it out of the process list) of
at least 16 characters; without one the server refuses to start. ``--tls-cert`` and
``--tls-key`` run every connection over TLS (clients pass the certificate they trust as
``tls_ca``). ``--max-connections`` and ``--handshake-timeout`` bound what idle or slow
connections can hold (see :mod:`scopegym.adapters.remote`). SIGTERM and SIGINT stop it cleanly.
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
    HANDSHAKE_TIMEOUT_S,
    MAX_CONNECTIONS,
    SECRET_ENV,
    InstrumentServer,
    check_secret,
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
        The namespace: ``instrument``, ``kwargs`` (a dict), ``host``, ``port``, ``secret``,
        ``tls_cert``, ``tls_key``, ``max_connections``, ``handshake_timeout``.

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
        help=f"shared secret clients must hold, 16 characters or more (default: ${SECRET_ENV}; "
        "prefer the variable)",
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        help="PEM certificate of this server: every connection then runs over TLS",
    )
    parser.add_argument(
        "--tls-key", default=None, help="PEM private key of --tls-cert (if not in that file)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"connections held at once, handshaking ones included (default: {MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=HANDSHAKE_TIMEOUT_S,
        help="seconds a new connection has to finish its handshake "
        f"(default: {HANDSHAKE_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    if args.max_connections < 1:
        parser.error(f"--max-connections must be at least 1, got {args.max_connections}")
    if not args.handshake_timeout > 0:
        parser.error(f"--handshake-timeout must be positive, got {args.handshake_timeout}")
    if args.tls_key is not None and args.tls_cert is None:
        parser.error("--tls-key needs --tls-cert")
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
    if args.secret is not None:
        try:
            check_secret(args.secret)
        except ValueError as error:
            return _fail(str(error), 2)
    try:
        instrument = make_instrument(args.instrument, **args.kwargs)
    except Exception as error:  # noqa: BLE001 - one line for the operator, not a traceback
        return _fail(f"cannot make instrument {args.instrument!r}: {error}", 1)
    try:
        server = InstrumentServer(
            instrument,
            host=args.host,
            port=args.port,
            secret=args.secret,
            name=args.instrument,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_connections=args.max_connections,
            handshake_timeout_s=args.handshake_timeout,
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
    if not is_loopback(args.host) and not server.tls:
        print(
            f"{PROG}: warning: the link is not encrypted; give --tls-cert and --tls-key, or "
            "tunnel it, over untrusted networks",
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
