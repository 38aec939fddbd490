from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.cli import listen_refusal, main
from oms.config import AuthSettings, Settings, TokenSettings


def test_refuses_a_public_listen_address_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "0.0.0.0:50051"]) == 2
    assert "refusing to listen on 0.0.0.0:50051" in capsys.readouterr().err


def test_bad_settings_exit_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMS_RETENTION_EVENTS", "0")
    assert main(["serve"]) == 2
    assert "retention_events" in capsys.readouterr().err


def test_a_public_listen_address_is_allowed_with_tokens_or_insecure() -> None:
    token = TokenSettings(name="bot", token=SecretStr("t" * 16), users=["alice"])
    public = "0.0.0.0:50051"
    assert "refusing" in listen_refusal(Settings(listen=public))
    assert listen_refusal(Settings(listen=public, auth=AuthSettings(tokens=[token]))) == ""
    assert listen_refusal(Settings(listen=public, insecure=True)) == ""
    assert listen_refusal(Settings(listen="127.0.0.1:50051")) == ""


def test_a_start_up_failure_is_one_line_naming_the_cause(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def fails(*args: str) -> str:
        assert main(["serve", "--listen", "127.0.0.1:0", *args]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "cannot reach Redis" in fails("--redis-url", "redis://127.0.0.1:1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = fails("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "a"))
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
        err = fails("--metrics-listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "m"))
        assert f"metrics_listen 127.0.0.1:{port}: " in err
    # Not an address of this host (TEST-NET-3): the reason is the system's, not a guess.
    err = fails("--listen", "203.0.113.5:50051", "--insecure", "--data-dir", str(tmp_path / "n"))
    assert "cannot listen on 203.0.113.5:50051: Cannot assign requested address" in err
    with EmbeddedRedis(tmp_path / "b"):
        assert "in use by another OMS process" in fails("--data-dir", str(tmp_path / "b"))
    (tmp_path / "file").write_text("")
    assert f"cannot use {tmp_path / 'file' / 'c'}" in fails(
        "--data-dir", str(tmp_path / "file" / "c")
    )
    audit_log = tmp_path / "no-such-dir" / "audit.jsonl"
    config = tmp_path / "audit.toml"
    config.write_text(
        f'[auth]\naudit_log = "{audit_log}"\n[[auth.tokens]]\nname = "ops"\n'
        'token = "ops-token-0123456789"\nadmin = true\n'
    )
    assert f"audit log {audit_log}" in fails("--config", str(config))


def test_a_redis_url_of_another_scheme_is_a_settings_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--redis-url", "http://x"]) == 2
    assert "redis_url" in capsys.readouterr().err


def test_help_gives_the_defaults_and_where_the_other_settings_are(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside a value
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "default 127.0.0.1:50051" in shown and "default .oms-data" in shown
    assert "OMS_* environment variable or a key of the TOML file" in shown
