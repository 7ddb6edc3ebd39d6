"""QR images of ticket codes (segno): PNG, error correction M, a 4-module quiet zone."""

from __future__ import annotations

import io

import segno


def qr_png(text: str, scale: int = 6) -> bytes:
    """A PNG of ``text`` as a QR code; a base32 ticket code fits alphanumeric mode."""
    image = io.BytesIO()
    segno.make_qr(text, error="m", boost_error=False).save(image, kind="png", scale=scale, border=4)
    return image.getvalue()
