"""The payload codec (AES-GCM with key IDs): pure, no server."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from agentexec.settings import SettingsError, load_settings
from agentexec.temporal.codec import (
    ENCODING,
    KEY_ID_KEY,
    CodecConfigError,
    EncryptionCodec,
    KeyNotFound,
    KeyRing,
    build_codec,
    build_data_converter,
)

SECRET = "the prompt nobody else may read"


def add_key(directory: Path, key_id: str, size: int = 32) -> None:
    directory.mkdir(exist_ok=True)
    (directory / key_id).write_text(base64.b64encode(os.urandom(size)).decode() + "\n")


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    add_key(tmp_path / "keys", "k1")
    return tmp_path / "keys"


async def test_a_payload_round_trips_and_says_which_key_sealed_it(keys: Path) -> None:
    codec = EncryptionCodec(KeyRing(keys), "k1")
    [sealed] = await codec.encode([plain(SECRET)])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_KEY] == b"k1"
    assert SECRET.encode() not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [plain(SECRET)]
    # A fresh nonce each time: the same payload never seals the same way.
    [again] = await codec.encode([plain(SECRET)])
    assert again.data != sealed.data


async def test_payloads_from_before_encryption_pass_through(keys: Path) -> None:
    codec = EncryptionCodec(KeyRing(keys), "k1")
    assert await codec.decode([plain(SECRET)]) == [plain(SECRET)]


async def test_rotation_decrypts_with_any_known_key_and_encrypts_with_the_current(
    keys: Path,
) -> None:
    old = EncryptionCodec(KeyRing(keys), "k1")
    [by_old] = await old.encode([plain("before")])
    add_key(keys, "k2")
    new = EncryptionCodec(KeyRing(keys), "k2")
    [by_new] = await new.encode([plain("after")])
    assert by_new.metadata[KEY_ID_KEY] == b"k2"
    # The new process reads what the old one wrote, and the old one (which
    # never restarted) reads the new key's payloads: an unknown key ID
    # re-reads the directory.
    assert await new.decode([by_old]) == [plain("before")]
    assert await old.decode([by_new]) == [plain("after")]
    assert old.keys.ids == ["k1", "k2"]


async def test_an_unknown_key_names_itself_and_never_a_key(keys: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    add_key(other, "k9")
    [sealed] = await EncryptionCodec(KeyRing(other), "k9").encode([plain(SECRET)])
    codec = EncryptionCodec(KeyRing(keys), "k1")
    with pytest.raises(KeyNotFound, match=r"key 'k9', which is not in .*keys: k1"):
        await codec.decode([sealed])


async def test_a_payload_cannot_be_passed_off_under_another_key_id(keys: Path) -> None:
    add_key(keys, "k2")
    codec = EncryptionCodec(KeyRing(keys), "k1")
    [sealed] = await codec.encode([plain(SECRET)])
    sealed.metadata[KEY_ID_KEY] = b"k2"
    with pytest.raises(KeyNotFound, match="does not decrypt with key 'k2'"):
        await codec.decode([sealed])


def test_a_secret_mount_s_bookkeeping_is_not_a_key(keys: Path) -> None:
    # A mounted Secret's directory holds ..data and a timestamped folder.
    (keys / "..data").mkdir()
    (keys / "..2026_12_03").mkdir()
    (keys / ".hidden").write_text("not base64 at all")
    assert KeyRing(keys).ids == ["k1"]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not base64!", "'bad' .* is not base64 text"),
        (base64.b64encode(b"short").decode(), "'bad' .* decodes to 5 bytes; an AES key has 16"),
    ],
)
def test_a_bad_key_file_is_named(keys: Path, content: str, error: str) -> None:
    (keys / "bad").write_text(content)
    with pytest.raises(CodecConfigError, match=error):
        build_codec(keys, "k1")


def test_the_current_key_must_be_there(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(CodecConfigError, match=r"current payload key 'k7' is not in .*keys: k1"):
        build_codec(keys, "k7")
    with pytest.raises(CodecConfigError, match="cannot read the payload keys directory"):
        build_codec(tmp_path / "missing", "k1")
    assert build_codec(None, None) is None


def test_no_codec_is_the_sdk_default_converter(keys: Path) -> None:
    assert build_data_converter(None) is DataConverter.default
    converter = build_data_converter(build_codec(keys, "k1"))
    assert isinstance(converter.payload_codec, EncryptionCodec)
    # Failure messages and stack traces travel as (encrypted) payloads too.
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)


def test_settings_take_both_or_neither(keys: Path) -> None:
    settings = load_settings(
        {"AGENTEXEC_PAYLOAD_KEYS_DIR": str(keys), "AGENTEXEC_PAYLOAD_KEY_ID": "k1"}
    )
    assert (settings.payload_keys_dir, settings.payload_key_id) == (keys, "k1")
    with pytest.raises(SettingsError, match="set both"):
        load_settings({"AGENTEXEC_PAYLOAD_KEYS_DIR": str(keys)})
    with pytest.raises(SettingsError, match="set both"):
        load_settings({"AGENTEXEC_PAYLOAD_KEY_ID": "k1"})
    with pytest.raises(SettingsError, match="AGENTEXEC_PAYLOAD_KEYS_DIR: directory"):
        load_settings(
            {"AGENTEXEC_PAYLOAD_KEYS_DIR": str(keys / "nope"), "AGENTEXEC_PAYLOAD_KEY_ID": "k1"}
        )
