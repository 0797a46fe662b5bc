"""
RFC 5321 syntax the SMTP server checks: paths in C{MAIL}/C{RCPT}, their
ESMTP parameters, and the argument of C{HELO}/C{EHLO}.

Everything here is pure (no I/O, no Twisted) so that the server protocol
stays a thin layer of states and replies.
"""

import ipaddress
import re
from typing import Dict, Optional, Tuple

# RFC 5321 4.5.3.1 size limits, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256  # including the angle brackets (4.5.3.1.3)

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# qtextSMTP (%d32-33 / %d35-91 / %d93-126) or quoted-pairSMTP (%d92 %d32-126).
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# A trailing dot is tolerated (it is stripped by normalizeAddress).
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_ADDRESS_LITERAL = r"\[[^\[\]\\\x00-\x20\x7f-\xff]+\]"
_AT_DOMAIN = rf"@(?:{_DOMAIN}|{_ADDRESS_LITERAL})"

_PATH = re.compile(
    rf"<(?:{_AT_DOMAIN}(?:,{_AT_DOMAIN})*:)?"
    rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})"
    rf"@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})>"
)
_NULL_PATH = re.compile(r"<>")
_POSTMASTER = re.compile(r"<postmaster>", re.IGNORECASE)

_HELO_DOMAIN = re.compile(
    # Underscores are not in RFC 5321's grammar but are common in the host
    # names of real clients (Windows machines); they do no harm here.
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)

_PARAM = re.compile(r"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


class PathSyntaxError(ValueError):
    """
    A path (reverse-path or forward-path) is not well formed or exceeds an
    RFC 5321 size limit.  The message is suitable for an SMTP reply.
    """


def validAddressLiteral(literal: str) -> bool:
    """
    Whether C{literal} (with its brackets) is an RFC 5321 address literal:
    C{[192.0.2.1]}, C{[IPv6:2001:db8::1]} or a general literal C{[tag:text]}.
    """
    if not (literal.startswith("[") and literal.endswith("]")):
        return False
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if re.fullmatch(r"[0-9.]+", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    return _GENERAL_LITERAL.fullmatch(inner) is not None


def validHeloArgument(argument: str) -> bool:
    """
    Whether C{argument} is acceptable as the client's name in C{HELO} or
    C{EHLO}: a domain (underscores tolerated) or an address literal, at
    most 255 octets.  The name is never verified against DNS (RFC 5321
    4.1.4 forbids refusing a session for that); only its syntax is checked,
    so that it can be written safely into a C{Received} header.
    """
    if not argument or len(argument) > MAX_DOMAIN:
        return False
    if argument.startswith("["):
        return validAddressLiteral(argument)
    return _HELO_DOMAIN.fullmatch(argument) is not None


def parsePath(text: str, allowNull: bool = False, allowPostmaster: bool = False) -> Tuple[Optional[str], str]:
    """
    Parse the path at the start of C{text}.

    A source route (C{<@a,@b:user@d>}) is accepted and dropped, as RFC 5321
    4.1.1.3 and appendix C tell servers to do.

    @param text: what follows C{FROM:} or C{TO:}, with at most one space
        already stripped.
    @param allowNull: accept C{<>} (reverse paths only).
    @param allowPostmaster: accept C{<postmaster>} without a domain
        (forward paths only, RFC 5321 4.1.1.3).
    @return: C{(address, rest)}: the mailbox (C{local@domain}, not yet
        normalised; C{None} for C{<>}; C{"postmaster"} for C{<postmaster>})
        and the text after the closing bracket.
    @raise PathSyntaxError: the path is malformed or too long.
    """
    if allowNull:
        match = _NULL_PATH.match(text)
        if match is not None:
            return None, text[match.end():]
    if allowPostmaster:
        match = _POSTMASTER.match(text)
        if match is not None:
            return "postmaster", text[match.end():]
    match = _PATH.match(text)
    if match is None:
        raise PathSyntaxError("Syntax error in mailbox address")
    if match.end() > MAX_PATH:
        raise PathSyntaxError("Path too long")
    local = match.group("local")
    domain = match.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise PathSyntaxError("Local part too long")
    if len(domain) > MAX_DOMAIN:
        raise PathSyntaxError("Domain too long")
    if domain.startswith("[") and not validAddressLiteral(domain):
        raise PathSyntaxError("Invalid address literal")
    return f"{local}@{domain}", text[match.end():]


def parseParameters(text: str) -> Dict[str, Optional[str]]:
    """
    Parse ESMTP parameters (C{esmtp-param *(SP esmtp-param)}) after a path.

    @param text: the text after the path's closing bracket: empty, or
        starting with a space.
    @return: upper-cased keyword -> value (C{None} when given without
        C{=value}).
    @raise ValueError: malformed text, or a keyword given twice.
    """
    params: Dict[str, Optional[str]] = {}
    if not text.strip():
        return params
    if not text.startswith(" "):
        raise ValueError("Syntax error in parameters")
    for word in text.split():
        match = _PARAM.fullmatch(word)
        if match is None:
            raise ValueError("Syntax error in parameters")
        key = match.group("key").upper()
        if key in params:
            raise ValueError(f"Duplicate {key} parameter")
        params[key] = match.group("value")
    return params
