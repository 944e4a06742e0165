"""EnKash body encryption: AES-128-ECB with PKCS#7 padding, base64 on the wire.

Some EnKash environments require request and response bodies to be encrypted. The
scheme is theirs, not ours: ECB leaks patterns and offers no integrity, so this module
promises wire compatibility only, never confidentiality beyond what the server asks for.
The key is the first 16 bytes of SHA-256 of the client secret.

Pure functions: no I/O, no state, nothing logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from coins_sync.errors import ApiError

__all__ = ["decrypt_to_text", "encrypt_json_text", "key_from_secret"]

_KEY_BYTES = 16
_BLOCK_BITS = 128


def key_from_secret(client_secret: str) -> bytes:
    """The AES-128 key EnKash derives from a client secret: SHA-256(secret)[:16]."""
    return hashlib.sha256(client_secret.encode("utf-8")).digest()[:_KEY_BYTES]


def _cipher(key: bytes) -> Cipher[modes.ECB]:
    if len(key) != _KEY_BYTES:
        raise ValueError(f"an AES-128 key has {_KEY_BYTES} bytes, not {len(key)}")
    return Cipher(algorithms.AES(key), modes.ECB())


def encrypt_json_text(text: str, key: bytes) -> str:
    """Encrypt UTF-8 ``text`` (normally a JSON document) and return standard base64."""
    padder = padding.PKCS7(_BLOCK_BITS).padder()
    padded = padder.update(text.encode("utf-8")) + padder.finalize()
    encryptor = _cipher(key).encryptor()
    sealed = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(sealed).decode("ascii")


def decrypt_to_text(b64: str, key: bytes) -> str:
    """Reverse :func:`encrypt_json_text`.

    Raises :class:`ApiError` when ``b64`` is not base64, not a whole number of AES
    blocks, badly padded (usually: the wrong client secret) or not UTF-8. The message
    never quotes the input, which may hold anything the server sent.
    """
    decryptor = _cipher(key).decryptor()
    try:
        sealed = base64.b64decode(b64.strip().encode("ascii"), validate=True)
        padded = decryptor.update(sealed) + decryptor.finalize()
        unpadder = padding.PKCS7(_BLOCK_BITS).unpadder()
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError) as e:
        # UnicodeError covers non-ASCII input and non-UTF-8 plaintext; ValueError covers
        # partial blocks and bad padding. None of these may leak the bytes involved.
        raise ApiError("could not decrypt the response") from e
