from __future__ import annotations

import pytest

from oms.cli import main


def test_refuses_a_public_listen_address_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "0.0.0.0:50051"]) == 2
    assert "refusing to listen on 0.0.0.0:50051" in capsys.readouterr().err


def test_bad_settings_exit_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMS_RETENTION_EVENTS", "0")
    assert main(["serve"]) == 2
    assert "retention_events" in capsys.readouterr().err
