"""generated/ is exactly what scripts/gen_protos.sh makes from protos/, and it loads."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pool

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "generated"
SCRIPT = ROOT / "scripts" / "gen_protos.sh"
PACKAGE = "tradingboost.oms.v1"
SERVICES = (
    "OrderService",
    "PositionService",
    "TrailingStopService",
    "MarketDataService",
    "AccountService",
)
STALE = "generated/ is stale: run make proto"


def _generated_files(out_dir: Path) -> dict[str, bytes]:
    """Every file the script owns under out_dir, by path relative to out_dir."""
    return {
        path.relative_to(out_dir).as_posix(): path.read_bytes()
        for path in sorted((out_dir / "tradingboost").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    # Regenerate with the interpreter running the tests: same grpcio-tools and mypy-protobuf.
    env = {**os.environ, "PY": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"gen_protos.sh failed:\n{result.stdout}\n{result.stderr}"

    expected = _generated_files(tmp_path)
    actual = _generated_files(GENERATED)

    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    shared = expected.keys() & actual.keys()
    different = sorted(name for name in shared if expected[name] != actual[name])
    assert expected, "gen_protos.sh generated nothing"
    assert not (missing or extra or different), (
        f"{STALE}\n  missing: {missing}\n  extra: {extra}\n  different: {different}"
    )


def test_every_service_is_in_the_descriptor_pool() -> None:
    module_dir = GENERATED / "tradingboost" / "oms" / "v1"
    modules = sorted(path.stem for path in module_dir.glob("*_pb2.py"))
    assert modules, f"no *_pb2.py modules in {module_dir}: {STALE}"
    for name in modules:
        importlib.import_module(f"{PACKAGE}.{name}")
        importlib.import_module(f"{PACKAGE}.{name}_grpc")

    pool = descriptor_pool.Default()
    for service in SERVICES:
        descriptor = pool.FindServiceByName(f"{PACKAGE}.{service}")
        assert descriptor.methods, f"{service} has no RPCs"
