"""Exchange credentials sealed at rest with AES-256-GCM under OMS_MASTER_KEY.

Each sealed blob is `version | nonce | ciphertext+tag`, with the account's (user, exchange)
as associated data, so a blob copied onto another account does not open. The master key is
32 random bytes in urlsafe base64 (a Fernet key has the same form):
`python -c "import os, base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`.
"""

from __future__ import annotations

import base64
import binascii
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oms.domain.accounts import Credentials

_VERSION = b"\x01"
_NONCE_BYTES = 12
_CHECK_PLAINTEXT = b"oms credential vault"


class MasterKeyError(ValueError):
    """The master key is malformed, or is not the key the stored credentials were sealed with."""


def parse_master_key(raw: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.strip().encode())
    except (binascii.Error, ValueError) as error:
        raise MasterKeyError("OMS_MASTER_KEY is not urlsafe base64") from error
    if len(key) != 32:
        raise MasterKeyError(f"OMS_MASTER_KEY must decode to 32 bytes, not {len(key)}")
    return key


class CredentialVault:
    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)

    def seal(self, owner: str, credentials: Credentials) -> bytes:
        plaintext = orjson.dumps(
            {"k": credentials.api_key, "s": credentials.secret, "p": credentials.password}
        )
        return self._seal(owner, plaintext)

    def open(self, owner: str, sealed: bytes) -> Credentials:
        doc = orjson.loads(self._open(owner, sealed))
        return Credentials(api_key=doc["k"], secret=doc["s"], password=doc["p"])

    def check_value(self) -> bytes:
        """A sealed constant kept beside the credentials: a later start with another key
        fails on it at once, before any account is touched."""
        return self._seal("check", _CHECK_PLAINTEXT)

    def verify_check_value(self, sealed: bytes) -> None:
        if self._open("check", sealed) != _CHECK_PLAINTEXT:
            raise MasterKeyError("the vault check value does not match")

    def _seal(self, owner: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, owner.encode())

    def _open(self, owner: str, sealed: bytes) -> bytes:
        if sealed[:1] != _VERSION:
            raise MasterKeyError("sealed credentials have an unknown format version")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, owner.encode())
        except InvalidTag as error:
            raise MasterKeyError(
                "OMS_MASTER_KEY is not the key the stored credentials were sealed with"
            ) from error
