"""`make bench-instructions`: the server's instructions per call, counted by callgrind.

Wall-clock figures on a shared 2-core VM drift by 20% within minutes and by 2x between
machines; instruction counts do not (two runs of the same code agreed within ~2%).
This runs the bench server under `valgrind --tool=callgrind`, drives the same two scenarios
as `make bench` one call at a time, and prints the instructions the whole server process
(every thread; the embedded redis-server is a child valgrind does not follow) executed per
no-op call and per PlaceOrder+CancelOrder pair. Use it to A/B a change to the hot path.
Waits and wake-ups cost no instructions, so this complements `make bench`, not replaces it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench.load import Step, scenarios
from bench.server import start


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _dumped_total(out_dir: Path, pid: int, trigger: str) -> int:
    for dump in out_dir.glob(f"callgrind.out.{pid}*"):
        text = dump.read_text(errors="replace")
        if f"Trigger: dump {trigger}" in text:
            found = re.search(r"^totals: (\d+)", text, re.MULTILINE)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"no callgrind dump {trigger!r} of process {pid}")


async def _repeat(step: Step, times: int) -> None:
    for n in range(times):
        await step(n, {})


async def _count(out_dir: Path, pid: int, address: str, calls: int) -> dict[str, float]:
    """Instructions per step of each scenario, over one channel opened before counting."""
    async with scenarios(address) as steps:
        for step in steps.values():  # connections, caches, allocator
            await _repeat(step, 20)
        _control(pid, "--instr=on")
        for step in steps.values():  # the same again, instrumented
            await _repeat(step, 20)
        per_step = {}
        for number, (scenario, step) in enumerate(steps.items()):
            _control(pid, "--zero")
            started = time.monotonic()
            await _repeat(step, calls)
            _control(pid, f"--dump=s{number}")
            print(f"  {scenario}: {calls} steps in {time.monotonic() - started:.0f} s")
            per_step[scenario] = _dumped_total(out_dir, pid, f"s{number}") / calls
        return per_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200, help="steps per scenario")
    args = parser.parse_args()
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        sys.exit(f"bench-instructions needs {' and '.join(missing)} (Debian: apt install valgrind)")
    with tempfile.TemporaryDirectory(prefix="oms-bench-instructions-") as tmp:
        out_dir = Path(tmp)
        callgrind = (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",  # start-up runs at full speed
            f"--callgrind-out-file={out_dir}/callgrind.out.%p",
        )
        server, address = start(out_dir / "data", callgrind)
        try:
            per_step = uvloop.run(_count(out_dir, server.pid, address, args.calls))
        finally:
            server.terminate()
            server.wait(60)
            import shutil as _s; _s.rmtree("/tmp/cg", ignore_errors=True); _s.copytree(out_dir, "/tmp/cg", ignore=_s.ignore_patterns("data"))
    noop, pair = per_step["no-op"], per_step["place+cancel"]
    print(f"server instructions per no-op call:             {noop / 1000:6.0f}k")
    print(f"server instructions per PlaceOrder+CancelOrder: {pair / 1000:6.0f}k")
    print(
        f"per call, no-op / place+cancel = {noop / (pair / 2):.2f} "
        "(make bench's throughput ratio if the server's CPU were all that counted)"
    )


if __name__ == "__main__":
    main()
