"""Ticket codes signed with Ed25519 (the domain's TicketCodec port), and the signing key's
home: a setting, or a 0600 file generated once in the data dir.

A code is base32 (RFC 4648, no padding: A-Z and 2-7, so a QR code stores it in alphanumeric
mode) of ``payload || signature``; the payload is version (1 byte), key id (4), ticket id (16),
showtime id (16), issue (2), seat label length (1) and the seat label (UTF-8). The signature
covers a domain-separation prefix and the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cinema_grpc.adapters.tokens import private_key_file
from cinema_grpc.domain.admission.model import CodeRejected, TicketCode, VerificationKey
from cinema_grpc.settings import ConfigurationError

VERSION = 1
SIGNED_PREFIX = b"cinema-ticket-code:"
SIGNATURE_LENGTH = 64
_HEAD = struct.Struct(">B4s16s16sHB")
MAX_SEAT_LABEL = 32
KEY_FILE = "ticket-signing-key"


def key_id(public_key: bytes) -> str:
    """8 hex digits naming a public key: the start of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:8]


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def new_private_key() -> str:
    """A fresh signing key as a setting holds it: base64 of the 32-byte Ed25519 seed."""
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(seed).decode()


def _b64(value: str, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), altchars=b"-_" if ("-" in value or "_" in value) else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the {what} must be base64") from exc
    if len(raw) != length:
        raise ValueError(f"the {what} must be {length} bytes (base64 of the raw Ed25519 key)")
    return raw


def load_private_key(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_b64(text, "ticket signing key", 32))


def load_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_b64(text, "retired ticket public key", 32))


def signing_key_text(configured: str | None, data_dir: Path) -> str:
    """The configured key, or one generated once and kept (0600) in the data dir. Processes
    starting together agree on one: the file appears whole (a link of a finished temporary
    file), and a process that finds it there already reads that one. As for the token key, a
    file someone else owns or may read or write is refused."""
    if configured:
        return configured
    return private_key_file(data_dir / KEY_FILE, "the ticket signing key", new_private_key)


class Ed25519TicketCodec:
    """Signs with the current key; verifies codes of the current key and of retired ones."""

    def __init__(self, signing_key: Ed25519PrivateKey, retired: Iterable[Ed25519PublicKey] = ()) -> None:
        self._signing_key = signing_key
        current = raw_public_key(signing_key.public_key())
        self._current_id = key_id(current)
        self._keys: dict[str, tuple[Ed25519PublicKey, bytes]] = {
            key_id(raw): (key, raw) for key in retired for raw in [raw_public_key(key)]
        }
        self._keys[self._current_id] = (signing_key.public_key(), current)

    @classmethod
    def from_settings(cls, configured: str | None, retired: str, data_dir: Path) -> Ed25519TicketCodec:
        try:
            retired_keys = [load_public_key(item) for item in retired.split(",") if item.strip()]
            signing_key = load_private_key(signing_key_text(configured, data_dir))
        except ValueError as exc:  # the message names what is wrong, never the key
            raise ConfigurationError(f"ticket keys: {exc}") from exc
        return cls(signing_key, retired_keys)

    @property
    def current_key_id(self) -> str:
        return self._current_id

    def verification_keys(self) -> list[VerificationKey]:
        return [VerificationKey(kid, raw, kid == self._current_id) for kid, (_, raw) in self._keys.items()]

    def sign(self, ticket_id: uuid.UUID, showtime_id: uuid.UUID, seat_label: str, issue: int) -> str:
        label = seat_label.encode()
        if len(label) > MAX_SEAT_LABEL or not 1 <= issue < 2**16:
            raise ValueError("a seat label of at most 32 bytes and an issue of 1..65535")
        kid = bytes.fromhex(self._current_id)
        payload = _HEAD.pack(VERSION, kid, ticket_id.bytes, showtime_id.bytes, issue, len(label)) + label
        signature = self._signing_key.sign(SIGNED_PREFIX + payload)
        return base64.b32encode(payload + signature).decode().rstrip("=")

    def verify(self, text: str) -> TicketCode:
        cleaned = text.strip().upper()
        if not cleaned or len(cleaned) > 512 or not cleaned.isascii():
            raise CodeRejected("not a ticket code")
        try:
            raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
        except (binascii.Error, ValueError) as exc:
            raise CodeRejected("not base32") from exc
        if len(raw) < _HEAD.size + SIGNATURE_LENGTH:
            raise CodeRejected("too short")
        version, kid, ticket, showtime, issue, label_length = _HEAD.unpack_from(raw)
        payload_length = _HEAD.size + label_length
        if version != VERSION or len(raw) != payload_length + SIGNATURE_LENGTH or label_length > MAX_SEAT_LABEL:
            raise CodeRejected("unknown version or wrong length")
        known = self._keys.get(kid.hex())
        if known is None:
            raise CodeRejected("signed with an unknown key")
        payload, signature = raw[:payload_length], raw[payload_length:]
        try:
            known[0].verify(signature, SIGNED_PREFIX + payload)
        except InvalidSignature as exc:
            raise CodeRejected("the signature does not match") from exc
        try:
            label = payload[_HEAD.size :].decode()
        except UnicodeDecodeError as exc:  # signed by us, so never; checked all the same
            raise CodeRejected("the seat label is not UTF-8") from exc
        return TicketCode(kid.hex(), uuid.UUID(bytes=ticket), uuid.UUID(bytes=showtime), label, issue)
