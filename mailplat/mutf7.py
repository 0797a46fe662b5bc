"""
Modified UTF-7 (RFC 3501 section 5.1.3): the wire form of IMAP mailbox
names, and the on-disk form of Maildir++ folder levels (as Dovecot keeps
them), where C{.} is encoded too.

Printable US-ASCII stands for itself except C{&}, which is C{&-}; any other
character is written as UTF-16BE in base64 (with C{,} for C{/} and no
padding) between C{&} and C{-}.  L{decode} accepts only the one canonical
encoding of a name, so that two wire forms never name the same mailbox.
"""

import base64
import binascii
from typing import List, Union

__all__ = ["MUTF7Error", "encode", "decode"]


class MUTF7Error(ValueError):
    """
    The octets are not a valid modified UTF-7 mailbox name.
    """


def _isDirect(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def _encodeRun(run: str) -> bytes:
    raw = run.encode("utf-16-be", "surrogatepass")
    return b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-"


def encode(name: str, alsoEncode: str = "") -> bytes:
    """
    The modified UTF-7 form of C{name}.

    @param name: a mailbox name (any Unicode text).
    @param alsoEncode: printable characters to encode as well (Maildir++
        passes C{"."}, its hierarchy separator, which becomes C{&AC4-}).
    @return: US-ASCII octets.
    """
    out: List[bytes] = []
    run: List[str] = []
    for ch in name:
        if _isDirect(ch) and ch not in alsoEncode:
            if run:
                out.append(_encodeRun("".join(run)))
                run = []
            out.append(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            run.append(ch)
    if run:
        out.append(_encodeRun("".join(run)))
    return b"".join(out)


_B64CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def decode(data: Union[bytes, str], alsoEncoded: str = "") -> str:
    """
    The mailbox name that C{data} encodes.

    @param data: modified UTF-7 octets as received (or the same as text:
        a file name, which must be ASCII).
    @param alsoEncoded: printable characters allowed inside encoded
        sections (the counterpart of L{encode}'s C{alsoEncode}).
    @raise MUTF7Error: C{data} has 8-bit or control octets, an
        unterminated or malformed C{&...-} section, an encoded section that
        is not UTF-16, or any form other than the canonical one (printable
        characters encoded, two adjacent encoded sections, non-zero
        padding bits).
    """
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise MUTF7Error("mailbox name has non-ASCII characters; use modified UTF-7")
    out = []
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x26:  # &
            end = data.find(b"-", i + 1)
            if end < 0:
                raise MUTF7Error("mailbox name has an unterminated '&' section")
            chunk = data[i + 1:end]
            i = end + 1
            if not chunk:
                out.append("&")
                continue
            if not _B64CHARS.issuperset(chunk):
                raise MUTF7Error("mailbox name has a malformed '&' section")
            if len(chunk) % 4 == 1:
                raise MUTF7Error("mailbox name has a malformed '&' section")
            padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
            try:
                raw = base64.b64decode(padded, validate=True)
            except (binascii.Error, ValueError):
                raise MUTF7Error("mailbox name has a malformed '&' section")
            if len(raw) % 2:
                raise MUTF7Error("mailbox name has a malformed '&' section")
            try:
                text = raw.decode("utf-16-be")
            except UnicodeDecodeError:
                raise MUTF7Error("mailbox name has invalid UTF-16 in an '&' section")
            if any(_isDirect(ch) and ch not in alsoEncoded for ch in text):
                raise MUTF7Error("mailbox name encodes printable ASCII characters")
            if _encodeRun(text) != b"&" + chunk + b"-":
                raise MUTF7Error("mailbox name is not in canonical modified UTF-7")
            if out and isinstance(out[-1], _Encoded):
                raise MUTF7Error("mailbox name has two adjacent '&' sections")
            out.append(_Encoded(text))
        elif 0x20 <= c <= 0x7E:
            j = i
            while j < n and 0x20 <= data[j] <= 0x7E and data[j] != 0x26:
                j += 1
            out.append(data[i:j].decode("ascii"))
            i = j
        else:
            raise MUTF7Error("mailbox name has 8-bit or control octets; use modified UTF-7")
    return "".join(out)


class _Encoded(str):
    """
    Text that came from an encoded section (to refuse adjacent sections).
    """
