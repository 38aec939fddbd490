from __future__ import annotations

import pytest
from pydantic import SecretStr

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
