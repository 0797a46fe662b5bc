"""
RFC 5321 syntax the SMTP server checks: paths in C{MAIL}/C{RCPT}, their
ESMTP parameters, and the argument of C{HELO}/C{EHLO}.

Everything here is pure (no I/O, no Twisted) so that the server protocol
stays a thin layer of states and replies.
"""

import ipaddress
import re
from typing import Dict, List, Optional, Tuple

try:
    import idna as _idna
except ImportError:  # pragma: no cover - the stdlib codec is the fallback
    _idna = None  # type: ignore[assignment]

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

# RFC 6531 3.3: atext and sub-domains extended with UTF8-non-ascii (here any
# character from U+00A0 up: C1 controls are not allowed).
_UTEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]"
_UDOT_STRING = rf"{_UTEXT}+(?:\.{_UTEXT}+)*"
_ULABEL = r"[A-Za-z0-9\u00a0-\U0010ffff](?:[A-Za-z0-9\u00a0-\U0010ffff-]*[A-Za-z0-9\u00a0-\U0010ffff])?"
_UDOMAIN = rf"{_ULABEL}(?:\.{_ULABEL})*\.?"
_UPATH = re.compile(
    rf"<(?:{_AT_DOMAIN}(?:,{_AT_DOMAIN})*:)?"
    rf"(?P<local>{_UDOT_STRING}|{_QUOTED_STRING})"
    rf"@(?P<domain>{_UDOMAIN}|{_ADDRESS_LITERAL})>"
)

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


def parsePath(
    text: str, allowNull: bool = False, allowPostmaster: bool = False, utf8: bool = False
) -> Tuple[Optional[str], str]:
    """
    Parse the path at the start of C{text}.

    A source route (C{<@a,@b:user@d>}) is accepted and dropped, as RFC 5321
    4.1.1.3 and appendix C tell servers to do.

    @param text: what follows C{FROM:} or C{TO:}, with at most one space
        already stripped.
    @param allowNull: accept C{<>} (reverse paths only).
    @param allowPostmaster: accept C{<postmaster>} without a domain
        (forward paths only, RFC 5321 4.1.1.3).
    @param utf8: accept UTF-8 local parts and U-label domains (RFC 6531);
        the domain is returned as given (see L{domainToASCII}).  Size
        limits are counted in octets of UTF-8.
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
    match = (_UPATH if utf8 else _PATH).match(text)
    if match is None:
        raise PathSyntaxError("Syntax error in mailbox address")
    if len(text[: match.end()].encode("utf-8")) > MAX_PATH:
        raise PathSyntaxError("Path too long")
    local = match.group("local")
    domain = match.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise PathSyntaxError("Local part too long")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
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


# RFC 3461 4: xtext = *( xchar / hexchar ), xchar is "!".."~" except "+"
# and "=", hexchar is "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")

#: The values of RCPT C{NOTIFY=} (RFC 3461 4.1).
NOTIFY_VALUES = ("SUCCESS", "FAILURE", "DELAY")


def validXtext(text: str) -> bool:
    """
    Whether C{text} is well-formed RFC 3461 xtext.
    """
    return _XTEXT.fullmatch(text) is not None


def decodeXtext(text: str) -> str:
    """
    Decode RFC 3461 xtext (C{"a+2Bb"} to C{"a+b"}); octets that are not
    UTF-8 are kept as Latin-1 characters.

    @raise ValueError: not well-formed xtext.
    """
    if not validXtext(text):
        raise ValueError(f"not xtext: {text!r}")
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def encodeXtext(text: str) -> str:
    """
    Encode C{text} as RFC 3461 xtext: C{+}, C{=}, controls, space and every
    octet of a non-ASCII character as C{+XX}.
    """
    out = []
    for octet in text.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def parseNotify(value: Optional[str]) -> List[str]:
    """
    The list of a C{NOTIFY=} value (RFC 3461 4.1): C{["NEVER"]}, or some of
    C{SUCCESS}, C{FAILURE}, C{DELAY}, each once, upper-cased.

    @raise ValueError: empty, unknown keyword, repeated keyword, or NEVER
        with another keyword.
    """
    if not value:
        raise ValueError("NOTIFY needs a value")
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return words
    if len(set(words)) != len(words) or any(w not in NOTIFY_VALUES for w in words):
        raise ValueError("NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY")
    return words


def parseOrcpt(value: Optional[str]) -> str:
    """
    Check and decode an C{ORCPT=addr-type;xtext} value (RFC 3461 4.2).

    @return: C{"type;address"} with the address decoded (C{"rfc822;
        bob@example.test"} without the space), the type as given.
    @raise ValueError: malformed.
    """
    if not value or ";" not in value:
        raise ValueError("ORCPT is addr-type;xtext")
    kind, _, address = value.partition(";")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]*)", kind) or not address:
        raise ValueError("ORCPT is addr-type;xtext")
    return f"{kind};{decodeXtext(address)}"


def domainToASCII(domain: str) -> str:
    """
    A domain with U-labels converted to A-labels (IDNA: the C{idna}
    package's IDNA 2008 when installed, else the stdlib codec), lower-cased;
    an address literal or an ASCII domain is returned lower-cased.

    @raise ValueError: a U-label IDNA refuses.
    """
    if domain.isascii() or domain.startswith("["):
        return domain.lower()
    trailing = domain.endswith(".")
    name = domain.rstrip(".")
    try:
        if _idna is not None:
            ascii_ = _idna.encode(name, uts46=True).decode("ascii")
        else:  # pragma: no cover
            ascii_ = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError) as e:
        raise ValueError(f"invalid internationalized domain name: {e}") from None
    return ascii_.lower() + ("." if trailing else "")


def addressToASCIIDomain(address: str) -> str:
    """
    C{local@domain} with its domain converted by L{domainToASCII} (the
    local part is kept as is).

    @raise ValueError: see L{domainToASCII}.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{local}@{domainToASCII(domain)}"
