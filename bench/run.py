"""`make bench`: start the server, drive it from a separate process, print the figures.

Every figure is also given as a ratio against the no-op RPC measured in the same run, on the
same server stack, so results compare across machines. The scenarios alternate in short
windows (`--rounds`), so a noisy neighbour slows both sides of a ratio alike; the spread of
the per-window ratios is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.load import Result, measure
from bench.server import start


def _cpu_us(result: Result, process: str) -> float:
    """CPU of `process` per call (a scenario's calls, whichever RPC), in microseconds."""
    return result.cpu_s.get(process, 0.0) / result.calls * 1e6


def _report(results: list[Result]) -> None:
    print(f"{'scenario':<14}{'conc':>5}{'rpc':>13}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for result in results:
        for rpc in result.latencies_s:
            share = len(result.latencies_s[rpc]) / result.calls
            rate = result.calls_per_s * share
            print(
                f"{result.name:<14}{result.concurrency:>5}{rpc:>13}{rate:>10.0f}"
                f"{result.p50(rpc):>9.3f}{result.p(rpc, 0.99):>9.3f}"
            )
    print()
    by_key = {(r.name, r.concurrency): r for r in results}
    for concurrency in (1, 32):
        noop = by_key[("no-op", concurrency)]
        work = by_key[("place+cancel", concurrency)]
        ratio = work.calls_per_s / noop.calls_per_s
        windows = [w / n for w, n in zip(work.round_rates, noop.round_rates, strict=True)]
        extra = work.p50("PlaceOrder") - noop.p50("Noop")
        print(
            f"concurrency {concurrency:>2}: PlaceOrder+CancelOrder calls/s = {ratio:.2f}x no-op "
            f"(windows {min(windows):.2f}-{max(windows):.2f}; target >= 0.6); "
            f"PlaceOrder p50 = no-op p50 + {extra:.3f} ms"
            + (" (target <= 0.5 ms)" if concurrency == 1 else "")
        )
        if noop.cpu_s:
            server, base = _cpu_us(work, "server"), _cpu_us(noop, "server")
            print(
                f"{'':16}CPU per call: server {server:.0f} us ({server / base:.1f}x the "
                f"no-op's {base:.0f} us), its Redis {_cpu_us(work, 'redis'):.0f} us"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario")
    parser.add_argument("--rounds", type=int, default=4, help="windows per scenario")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the server (with its embedded Redis) on CPU 0, the load generator on CPU 1",
    )
    args = parser.parse_args()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        sys.exit("--pin needs two CPUs")
    # taskset's affinity is inherited: the server's threads and its Redis share CPU 0.
    server_cpu, load_cpu = (
        (("taskset", "-c", "0"), ("taskset", "-c", "1")) if args.pin else ((), ())
    )
    with tempfile.TemporaryDirectory(prefix="oms-bench-") as data_dir:
        server, address = start(Path(data_dir), server_cpu)
        try:
            load = subprocess.run(
                [
                    *load_cpu,
                    sys.executable,
                    "-m",
                    "bench.run",
                    "--load",
                    address,
                    str(args.seconds),
                    str(args.rounds),
                    str(server.pid),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            server.terminate()
            server.wait(30)
    results = [Result(**r) for r in json.loads(load.stdout)]
    _report(results)
    if args.json:
        args.json.write_text(load.stdout)


def load_main(address: str, seconds: float, rounds: int, server_pid: int) -> None:
    results = uvloop.run(measure(address, seconds, rounds, server_pid))
    json.dump([r.__dict__ for r in results], sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
