"""Time a 256² frame through scopegym-serve over loopback against the twin in process.

Starts ``scopegym-serve`` (the twin) on 127.0.0.1 with an OS-assigned port, then alternates
``Scan(256, dwell)`` on a RemoteInstrument and on an in-process twin built with the same
arguments, and prints the median wall time of each and the overhead (target ≤ 20 ms).

    .venv/bin/python scripts/bench_remote.py --frames 30 --dwell-us 4
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from scopegym.adapters.remote import RemoteInstrument
from scopegym.instrument import Instrument, Scan, make_instrument


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scopegym.adapters.serve_cli", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"PYRO:\S+", line)
    if found is None:
        process.kill()
        raise SystemExit(f"scopegym-serve did not start: {line!r}")
    return process, found.group(0)


def time_scan(instrument: Instrument, command: Scan) -> float:
    start = time.perf_counter()
    instrument.execute(command)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=30, help="frames per side")
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--dwell-us", type=float, default=4.0)
    args = parser.parse_args()
    command = Scan(args.size_px, args.dwell_us)
    process, uri = start_server()
    try:
        remote = RemoteInstrument(uri)
        local = make_instrument("twin")
        # Warm both (caches, first-call imports) before timing.
        for instrument in (remote, local):
            instrument.execute(command)
        start = time.perf_counter()
        for _ in range(200):
            remote.state()
        state_ms = 1e3 * (time.perf_counter() - start) / 200
        remote_s, local_s = [], []
        for _ in range(args.frames):  # interleaved, so load drifts hit both alike
            remote_s.append(time_scan(remote, command))
            local_s.append(time_scan(local, command))
        remote.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    remote_ms = 1e3 * statistics.median(remote_s)
    local_ms = 1e3 * statistics.median(local_s)
    print(f"Scan({args.size_px}, {args.dwell_us} us), median of {args.frames} frames:")
    print(f"  twin in process        {local_ms:8.2f} ms")
    print(f"  twin over loopback     {remote_ms:8.2f} ms")
    print(f"  overhead               {remote_ms - local_ms:8.2f} ms  (target <= 20 ms)")
    print(f"  state() round trip     {state_ms:8.2f} ms  (mean of 200)")


if __name__ == "__main__":
    main()
