"""Ticket codes: genuine ones verify offline, anything forged, altered or of an unknown key does
not, and codes of a retired key keep verifying after a rotation."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cinema_grpc.adapters.ticket_codes import (
    Ed25519TicketCodec,
    key_id,
    load_private_key,
    new_private_key,
    raw_public_key,
    signing_key_text,
)
from cinema_grpc.domain.admission.model import CodeRejected, TicketCode
from cinema_grpc.settings import ConfigurationError

TICKET, SHOWTIME = uuid.uuid4(), uuid.uuid4()


KEYS: dict[str, Ed25519PrivateKey] = {}


def codec(retired: list[Ed25519TicketCodec] | None = None) -> Ed25519TicketCodec:
    """A codec with a new key, verifying also the codes of the ``retired`` codecs' keys."""
    key = load_private_key(new_private_key())
    made = Ed25519TicketCodec(key, [KEYS[old.current_key_id].public_key() for old in retired or []])
    KEYS[made.current_key_id] = key
    return made


def _raw(code: str) -> bytearray:
    return bytearray(base64.b32decode(code + "=" * (-len(code) % 8)))


def _text(raw: bytes) -> str:
    return base64.b32encode(bytes(raw)).decode().rstrip("=")


def test_a_signed_code_verifies_offline_to_its_ticket_showtime_seat_and_issue() -> None:
    signer = codec()
    code = signer.sign(TICKET, SHOWTIME, "F10", 1)
    assert set(code) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")  # QR alphanumeric mode
    assert len(code) <= 180
    assert signer.verify(code) == TicketCode(signer.current_key_id, TICKET, SHOWTIME, "F10", 1)
    # What a camera or a person types: lower case, spaces around.
    assert signer.verify(f"  {code.lower()}\n").ticket_id == TICKET


def test_a_code_signed_with_another_key_is_refused() -> None:
    forger = codec()
    with pytest.raises(CodeRejected, match="unknown key"):
        codec().verify(forger.sign(TICKET, SHOWTIME, "F10", 1))


def test_a_forged_signature_under_our_key_id_is_refused() -> None:
    ours, forger = codec(), codec()
    raw = _raw(forger.sign(TICKET, SHOWTIME, "F10", 1))
    raw[1:5] = bytes.fromhex(ours.current_key_id)  # claims to be ours
    with pytest.raises(CodeRejected, match="signature"):
        ours.verify(_text(raw))


@pytest.mark.parametrize(
    ("offset", "what"),
    [(5, "ticket id"), (21, "showtime id"), (38, "issue"), (40, "seat label"), (-1, "signature")],
)
def test_an_altered_byte_anywhere_is_refused(offset: int, what: str) -> None:
    signer = codec()
    raw = _raw(signer.sign(TICKET, SHOWTIME, "F10", 1))
    raw[offset] ^= 0x01
    with pytest.raises(CodeRejected):
        signer.verify(_text(raw))


def test_a_changed_key_id_is_refused_even_when_it_names_a_known_key() -> None:
    old = codec()
    new = codec(retired=[old])
    raw = _raw(new.sign(TICKET, SHOWTIME, "F10", 1))
    raw[1:5] = bytes.fromhex(old.current_key_id)  # a known key, but not the one that signed
    with pytest.raises(CodeRejected, match="signature"):
        new.verify(_text(raw))


@pytest.mark.parametrize("text", ["", "   ", "not a code", "A" * 600, "AAAA", "0189", "ÄÖÜ", "MFRGG===", "\x00" * 10])
def test_text_that_is_not_a_code_is_refused(text: str) -> None:
    with pytest.raises(CodeRejected):
        codec().verify(text)


def test_a_truncated_or_extended_code_is_refused() -> None:
    signer = codec()
    code = signer.sign(TICKET, SHOWTIME, "F10", 1)
    for changed in (code[:-8], code + "AAAAAAAA", code[8:]):
        with pytest.raises(CodeRejected):
            signer.verify(changed)


def test_after_a_rotation_codes_of_the_retired_key_still_verify_and_new_codes_use_the_new_key() -> None:
    old = codec()
    issued_before = old.sign(TICKET, SHOWTIME, "B4", 1)
    rotated = codec(retired=[old])
    assert rotated.verify(issued_before).key_id == old.current_key_id
    issued_after = rotated.sign(TICKET, SHOWTIME, "B4", 2)
    assert rotated.verify(issued_after).key_id == rotated.current_key_id != old.current_key_id
    # A scanner still on the old configuration does not know the new key.
    with pytest.raises(CodeRejected, match="unknown key"):
        old.verify(issued_after)
    keys = {k.key_id: k for k in rotated.verification_keys()}
    assert keys[rotated.current_key_id].current and not keys[old.current_key_id].current


def test_key_ids_are_the_start_of_the_public_keys_hash() -> None:
    signer = codec()
    public = raw_public_key(KEYS[signer.current_key_id].public_key())
    assert signer.current_key_id == key_id(public) and len(signer.current_key_id) == 8


def test_without_a_configured_key_one_is_generated_once_in_the_data_dir_readable_by_the_owner_only(
    tmp_path: Path,
) -> None:
    first = signing_key_text(None, tmp_path)
    assert signing_key_text(None, tmp_path) == first
    mode = stat.S_IMODE(os.stat(tmp_path / "ticket-signing-key").st_mode)
    assert mode == 0o600
    configured = new_private_key()
    assert signing_key_text(configured, tmp_path) == configured


@pytest.mark.parametrize("bad", ["short", base64.b64encode(b"x" * 31).decode(), "!!!"])
def test_a_malformed_signing_key_setting_is_refused_at_start_without_showing_it(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ticket signing key") as refused:
        Ed25519TicketCodec.from_settings(bad, "", tmp_path)
    assert bad not in str(refused.value)


def test_processes_starting_together_agree_on_one_generated_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: signing_key_text(None, tmp_path), range(16)))
    assert len(keys) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ticket-signing-key"]  # no temporary files left


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    signing_key_text(None, tmp_path)
    (tmp_path / "ticket-signing-key").chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        signing_key_text(None, tmp_path)
