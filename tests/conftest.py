"""Fixtures shared by every test under tests/.

Registered as a plugin by module name, so mypy needs no extra search path. pytest puts
tests/ on sys.path to import this conftest while tests/ is not a package; should it become
one, __package__ ("tests") keeps the name right.
"""

_PREFIX = f"{__package__}." if __package__ else ""
pytest_plugins = [
    f"{_PREFIX}fixtures.redis_server",
    f"{_PREFIX}fixtures.redis_proxy",
    f"{_PREFIX}fixtures.postgres_server",
    f"{_PREFIX}fixtures.oms_server",
    f"{_PREFIX}fixtures.fake_exchange",
]
