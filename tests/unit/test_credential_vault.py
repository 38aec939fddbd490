"""The credential vault: AES-GCM blobs that open only under their key and their account."""

from __future__ import annotations

import base64
import os

import pytest

from oms.adapters.credential_vault import CredentialVault, MasterKeyError, parse_master_key
from oms.domain.accounts import Credentials

CREDENTIALS = Credentials(api_key="AK-3f9e", secret="SK-81c0d", password="PW-77a1")


def vault() -> CredentialVault:
    return CredentialVault(os.urandom(32))


def test_sealed_credentials_open_to_the_same_credentials() -> None:
    v = vault()
    sealed = v.seal("bob|okx", CREDENTIALS)
    assert v.open("bob|okx", sealed) == CREDENTIALS
    for secret in ("AK-3f9e", "SK-81c0d", "PW-77a1"):
        assert secret.encode() not in sealed


def test_each_seal_is_different() -> None:
    v = vault()
    assert v.seal("bob|okx", CREDENTIALS) != v.seal("bob|okx", CREDENTIALS)


def test_a_blob_moved_to_another_account_does_not_open() -> None:
    v = vault()
    sealed = v.seal("bob|okx", CREDENTIALS)
    with pytest.raises(MasterKeyError):
        v.open("eve|okx", sealed)


def test_another_key_does_not_open_it() -> None:
    sealed = vault().seal("bob|okx", CREDENTIALS)
    with pytest.raises(MasterKeyError, match="not the key"):
        vault().open("bob|okx", sealed)


def test_a_tampered_blob_does_not_open() -> None:
    v = vault()
    sealed = bytearray(v.seal("bob|okx", CREDENTIALS))
    sealed[-1] ^= 1
    with pytest.raises(MasterKeyError):
        v.open("bob|okx", bytes(sealed))


def test_the_check_value_tells_the_keys_apart() -> None:
    v = vault()
    v.verify_check_value(v.check_value())
    with pytest.raises(MasterKeyError):
        vault().verify_check_value(v.check_value())


def test_credentials_repr_hides_them() -> None:
    assert "SK-81c0d" not in repr(CREDENTIALS)
    assert "AK-3f9e" not in repr(CREDENTIALS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not base64 !!", "32 bytes|base64"),
        (base64.urlsafe_b64encode(bytes(range(16))).decode(), "32 bytes, not 16"),
    ],
)
def test_malformed_master_keys_are_refused(raw: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=message):
        parse_master_key(raw)
