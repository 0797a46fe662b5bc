"""
IMAP wire forms of values (RFC 3501 section 4): the one place that decides
between atom, quoted string, literal and NIL.
"""

from typing import Optional, Union

# Octets that cannot appear in a quoted string at all (RFC 3501 QUOTED-CHAR).
_NOT_QUOTABLE = frozenset(b"\r\n\x00") | frozenset(range(0x80, 0x100))


def string(value: Union[str, bytes]) -> bytes:
    """
    C{value} as an IMAP string: quoted when it can be (no CR, LF, NUL or
    8-bit octets; C{"} and C{\\} are escaped), a synchronising literal
    otherwise.  C{str} is encoded as UTF-8.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) < 1024 and _NOT_QUOTABLE.isdisjoint(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % (len(value),) + value


# ASTRING-CHAR (RFC 3501 section 9): ATOM-CHAR or "]"; anything else, and
# the word NIL, needs quoting.
_ASTRING_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'(){ %*"\\')


def astring(value: Union[str, bytes]) -> bytes:
    """
    C{value} as an IMAP astring: a bare atom when every octet may stand in
    one (as Dovecot writes ACL identifiers such as C{bob@example.test}),
    else as L{string} gives it.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    if value and _ASTRING_CHARS.issuperset(value) and value.upper() != b"NIL":
        return value
    return string(value)


def nstring(value: Optional[Union[str, bytes]]) -> bytes:
    """
    C{NIL} for L{None}, else L{string}.
    """
    if value is None:
        return b"NIL"
    return string(value)


def literal(value: bytes) -> bytes:
    """
    C{value} as a synchronising literal, always (for message bodies).
    """
    return b"{%d}\r\n" % (len(value),) + value
