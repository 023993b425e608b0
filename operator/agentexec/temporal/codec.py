"""Payloads encrypted at rest in Temporal: an AES-GCM payload codec with key IDs.

Temporal keeps every workflow input, activity input and result, heartbeat
detail and failure in its history, in plaintext unless a codec transforms
them on the way: prompts and answers are in there. With keys configured, the
operator, the runners and programs of the public runner API
(``agentexec.runner.serve``) all encode through :class:`EncryptionCodec`
(the SDK's ``PayloadCodec`` hook, passed to the client where it is dialled),
and failure messages and stack traces travel as encoded attributes too.

Keys live in a directory, one file per key, named by its key ID (a mounted
Secret: ``kubectl create secret generic payload-keys --from-literal=k1=$(openssl
rand -base64 32)``), each holding 16, 24 or 32 bytes in base64. The current
key ID (AGENTEXEC_PAYLOAD_KEY_ID) encrypts; any key in the directory
decrypts, and each payload says which one it needs. So a rotation needs no
downtime: add the new key (every process can read it once the kubelet
updates the mount; an unknown key ID re-reads the directory at once), then
make it current, then drop the old one after Temporal's retention. Payloads
written before encryption was turned on (no key ID) are passed through.

Nothing here logs or raises a key; errors name the file and the key ID.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

log = logging.getLogger("agentexec.codec")

ENCODING = b"binary/encrypted"
ENCODING_KEY = "encoding"
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
KEY_SIZES = (16, 24, 32)
# A key ID no file names re-reads the directory at most this often (a
# Secret's mount is updated by the kubelet within about a minute).
RELOAD_AT_MOST_EVERY = 1.0


class CodecConfigError(ValueError):
    """The payload keys cannot be used as configured (names the file, never a key)."""


class KeyNotFound(ValueError):
    """A payload was encrypted with a key this process does not have."""


def read_keys(directory: Path) -> dict[str, bytes]:
    """Every key in ``directory``: file name = key ID, content = base64 key.

    Dot-files are skipped: a Secret's mount holds ``..data`` and timestamped
    folders beside the keys (its files are links into them).
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise CodecConfigError(
            f"cannot read the payload keys directory {str(directory)!r} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    keys: dict[str, bytes] = {}
    for path in entries:
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            text = path.read_text().strip()
            key = base64.b64decode(text, validate=True)
        except (OSError, UnicodeDecodeError, binascii.Error):
            raise CodecConfigError(
                f"payload key {path.name!r} in {str(directory)!r} is not base64 text"
            ) from None
        if len(key) not in KEY_SIZES:
            raise CodecConfigError(
                f"payload key {path.name!r} in {str(directory)!r} decodes to {len(key)} bytes; "
                "an AES key has 16, 24 or 32 (openssl rand -base64 32)"
            )
        keys[path.name] = key
    return keys


class KeyRing:
    """The keys of a directory, read again when it changes or an unknown key
    ID is asked for."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self._clock = clock
        self._keys: dict[str, AESGCM] = {}
        self._stamp: tuple[float, ...] = ()
        self._last_reload = float("-inf")
        self.reload()

    def _mtimes(self) -> tuple[float, ...]:
        try:
            return tuple(
                os.stat(entry.path).st_mtime
                for entry in sorted(os.scandir(self.directory), key=lambda e: e.name)
            )
        except OSError:
            return ()

    def reload(self) -> None:
        keys = read_keys(self.directory)
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._stamp = self._mtimes()
        self._last_reload = self._clock()

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, key_id: str) -> AESGCM:
        key = self._keys.get(key_id)
        if key is not None:
            return key
        if (
            self._clock() - self._last_reload >= RELOAD_AT_MOST_EVERY
            or self._mtimes() != self._stamp
        ):
            try:
                self.reload()
            except CodecConfigError as exc:
                log.warning("payload keys could not be re-read", extra={"error": str(exc)})
            key = self._keys.get(key_id)
            if key is not None:
                log.info("payload key loaded", extra={"key_id": key_id})
                return key
        raise KeyNotFound(
            f"payload encrypted with key {key_id!r}, which is not in {str(self.directory)!r} "
            f"(keys: {', '.join(self.ids) or 'none'}); add it to the keys Secret"
        )


class EncryptionCodec(PayloadCodec):
    """AES-GCM: each payload, serialised whole (metadata included), becomes
    a payload with encoding ``binary/encrypted``, the key ID in its
    metadata and ``nonce + ciphertext`` as data. The key ID is the
    associated data, so a payload cannot be passed off under another key."""

    def __init__(self, keys: KeyRing, current: str) -> None:
        self.keys = keys
        self.current = current
        if current not in keys.ids:
            raise CodecConfigError(
                f"the current payload key {current!r} is not in {str(keys.directory)!r} "
                f"(keys: {', '.join(keys.ids) or 'none'})"
            )

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current.encode()
        sealed = self.keys.get(self.current).encrypt(nonce, payload.SerializeToString(), kid)
        return Payload(
            metadata={ENCODING_KEY: ENCODING, KEY_ID_KEY: kid},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get(ENCODING_KEY) != ENCODING:
            return payload  # written before encryption was on: as it is
        kid = payload.metadata.get(KEY_ID_KEY, b"")
        key_id = kid.decode(errors="replace")
        try:
            plain = self.keys.get(key_id).decrypt(
                payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], kid
            )
        except InvalidTag:
            raise KeyNotFound(
                f"payload does not decrypt with key {key_id!r}: the key of that ID changed, "
                "or the payload was altered"
            ) from None
        return Payload.FromString(plain)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


def build_codec(directory: Path | None, current: str | None) -> EncryptionCodec | None:
    """The codec for the keys in ``directory`` with ``current`` encrypting
    (None without a directory: payloads are not encrypted). CodecConfigError
    names what is wrong, at start rather than at first use."""
    if directory is None or current is None:
        return None
    return EncryptionCodec(KeyRing(directory), current)


def build_data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The SDK's default converter, with ``codec`` on every payload and
    failure messages and stack traces moved into (encoded) payloads too:
    a provider's error may quote the prompt."""
    if codec is None:
        return DataConverter.default
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def describe(codec: EncryptionCodec | None) -> Mapping[str, object]:
    """For start-up logs: whether payloads are encrypted and with which key ID."""
    if codec is None:
        return {"payload_encryption": False}
    return {"payload_encryption": True, "payload_key_id": codec.current}
