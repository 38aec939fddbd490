"""`pip install .` gives what the contract's section 1 promises: the `oms` console script and
the packages `oms`, `tradingboost.oms.v1` and `oms_client`, each typed for its users' mypy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What the build reads; copied so that nothing left in the checkout's build/ can mask a loss.
SOURCES = ("pyproject.toml", "README.md", "src", "generated", "clients")
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation")
MYPY = (sys.executable, "-m", "mypy", "--strict", "--no-incremental")


def _build_wheel(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tree / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*PIP_WHEEL, "-w", str(wheels), str(tree)],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("*.whl")
    return wheel


def test_the_wheel_holds_the_script_the_packages_their_stubs_and_scripts(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "oms = oms.cli:main" in wheel.read(entry_points).decode()
    for marker in ("oms/py.typed", "oms_client/py.typed", "tradingboost/py.typed"):
        assert marker in names
    generated = ROOT / "generated"
    stubs = {p.relative_to(generated).as_posix() for p in generated.rglob("*.pyi")}
    assert stubs and stubs <= names
    lua = ROOT / "src" / "oms" / "adapters" / "redis_store" / "lua"
    assert {f"oms/adapters/redis_store/lua/{p.name}" for p in lua.glob("*.lua")} <= names


def test_a_strategy_type_checks_against_the_installed_client(tmp_path: Path) -> None:
    # Installed = unpacked into a site-packages, where mypy reads a package's types only when
    # it carries py.typed (PEP 561).
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        env = tmp_path / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        site = sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})
        wheel.extractall(site)
    # What the client needs (grpcio, protobuf, their stubs) from the environment running this.
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    strategy = tmp_path / "strategy.py"
    strategy.write_text(
        "from oms_client import OmsClient\n"
        "\n"
        "async def run(client: OmsClient) -> None:\n"
        "    order = await client.get_order(user_id='alice', order_id='x')\n"
        "    order.no_such_field\n"
    )
    result = subprocess.run(
        [*MYPY, "--python-executable", str(env / "bin" / "python"), str(strategy)],
        cwd=tmp_path,  # away from the repository's own mypy settings
        capture_output=True,
        text=True,
    )
    assert '"Order" has no attribute "no_such_field"' in result.stdout, result.stdout
    assert "missing library stubs or py.typed marker" not in result.stdout
