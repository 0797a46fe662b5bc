"""
A message parsed once for IMAP: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section]
octets (RFC 3501 sections 6.4.5 and 7.4.2) and the decoded text SEARCH
looks at.

The parser is our own walk over the wire form that records byte offsets
only: every part is C{(start, bodyStart, end)} into the one C{bytes} object
given to L{parseMessage}, so sizes, line counts and section octets are
exact and a 20 MB message is never copied part by part.  It never raises on
broken input:

  - a header line that is neither a field nor a continuation (or the end of
    the data) ends the header; the body starts on that line;
  - a multipart without a boundary, or without any delimiter line, has no
    parts (BODYSTRUCTURE then shows one empty C{TEXT/PLAIN} part, as
    Dovecot does); a missing close delimiter ends the last part at the end
    of the enclosing part;
  - 8-bit octets in header fields are kept as they are in ENVELOPE and
    BODYSTRUCTURE (the wire helpers send them as literals) and decoded as
    UTF-8 with replacement characters for searching;
  - nesting deeper than L{MAX_DEPTH} or more than L{MAX_PARTS} parts are
    not split further (the rest stays in the body of the last part).

A delimiter line is C{--boundary} at the start of a line, optionally
followed by C{--}, then only white space (RFC 2046 5.1.1).  The CRLF before
a delimiter belongs to the delimiter.  Line counts are the number of LF
octets in the body, as Dovecot counts them.

Where we differ from Dovecot on purpose:

  - media types, subtypes, encodings and parameter names are sent upper
    case (C{"TEXT" "PLAIN" ("CHARSET" "utf-8")}); values and the
    disposition type are sent as written;
  - a text part without a charset parameter gets C{("CHARSET" "us-ascii")}
    first in its list even when it has other parameters;
  - a delimiter must be followed by white space only (Dovecot accepts any
    line that starts with the boundary), so nested boundaries that are
    prefixes of each other never get confused;
  - C{N.HEADER} / C{N.TEXT} of a part that is not message/rfc822 is empty.
"""

import binascii
import codecs
import datetime
import email.utils
import functools
import re
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from mailplat.imap.wire import nstring, string

# Deepest nesting of multipart / message parts we split, and most parts in
# one message (Dovecot's limits are of the same order).
MAX_DEPTH = 100
MAX_PARTS = 10000

_NIL = b"NIL"
_EMPTY_PART_BASIC = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0)'
_EMPTY_PART_EXTENDED = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'

_FOLD = re.compile(rb"\r?\n")
_ENVELOPE_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")


# --------------------------------------------------------------------------
# Header fields


class _Field:
    """
    One header field: its lower-case name and its raw octets (every line of
    it, line ends included).
    """

    __slots__ = ("name", "raw", "_value")

    def __init__(self, name: str, raw: bytes) -> None:
        self.name = name
        self.raw = raw
        self._value: Optional[bytes] = None

    def value(self) -> bytes:
        """
        The field's value unfolded (line breaks removed, the white space
        after them kept), with surrounding white space stripped; worked
        out once (ENVELOPE and the summary ask for some fields many times).
        """
        if self._value is None:
            colon = self.raw.index(b":")
            value = self.raw[colon + 1 :].strip(b" \t\r\n")
            if b"\n" in value:  # folded (stripping first gives the same)
                value = _FOLD.sub(b"", value).strip(b" \t\r\n")
            self._value = value
        return self._value


def _validFieldName(name: bytes) -> bool:
    if not name or len(name) > 1000:
        return False
    for octet in name:
        if octet < 33 or octet > 126:
            return False
    return True


def _parseHeader(data: bytes, start: int, end: int) -> Tuple[List[_Field], int]:
    """
    Parse the header fields in C{data[start:end]}.

    A field is a line of a name (printable octets other than C{:}, up to
    1,000), optional blanks and a colon within the first 1,001 octets,
    with the continuation lines (starting with a blank) after it; the
    header ends at the blank line, or without one at the first line that
    is neither.

    @return: the fields and the offset where the body starts (just after
        the blank line, or at the first line that is not part of a field).
    """
    fields: List[_Field] = []
    match = _FIELD.match
    pos = start
    while True:
        m = match(data, pos, end)
        if m is None:
            break
        fields.append(_Field(m.group(1).decode("ascii").lower(), data[pos : m.end()]))
        pos = m.end()
    if pos < end:
        first = data[pos : pos + 1]
        if first == b"\n" or (first == b"\r" and data[pos + 1 : pos + 2] == b"\n"):
            # The blank line ending the header.
            nl = data.find(b"\n", pos, end)
            return fields, end if nl < 0 else nl + 1
    return fields, pos


# A header field as L{_parseHeader} reads one: a name of printable octets
# other than ":" followed by optional blanks and the colon (within the
# first 1,001 octets of the line), the rest of the line, and the
# continuation lines (starting with a blank) after it.
_FIELD_LINE = rb"(?=[^:\n]{0,1000}:)([\x21-\x39\x3b-\x7e]+)[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*"
_FIELD = re.compile(_FIELD_LINE)
_FIELD_LINES = re.compile(rb"(?:" + _FIELD_LINE + rb")*")
# After a field's name: the colon, and the value with its continuation
# lines (without the last line end).
_FIELD_VALUE = re.compile(rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
# A field as L{_FIELD} reads one, its name and the octets after the colon
# (continuation lines included, the last line end not) captured; without
# _FIELD's look-ahead for the colon, so only for a block _FIELD_LINES
# matched whole (L{_headerPairs}).
_FIELD_PAIR = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
_ENVELOPE_FIELD_NAMES = frozenset(
    [b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to", b"message-id"]
)


def headerEnd(data: bytes, final: bool) -> int:
    """
    Where the top-level header fields of a message that starts with
    C{data} end, as L{parseMessage} reads them: before the blank line, or
    before the first line that is not part of a field.  Searching a
    header needs only C{data[:headerEnd(data, ...)]}, not the message.

    @param final: C{data} is the whole message.
    @return: the offset, or -1 when C{data} may end inside the header
        (read more).
    """
    match = _FIELD_LINES.match(data)
    assert match is not None  # the pattern matches the empty string
    end = match.end()
    if final:
        return end
    if end == len(data) or data.find(b"\n", end) < 0:
        return -1
    return end


def _unfold(raw: bytes) -> bytes:
    """
    A field's value as L{_Field.value} gives it, from the octets after the
    colon (continuation lines included).
    """
    value = raw.strip(b" \t\r\n")
    if b"\n" in value:
        value = _FOLD.sub(b"", value).strip(b" \t\r\n")
    return value


def _headerPairs(header: bytes) -> List[Tuple[bytes, bytes]]:
    """
    The C{(name, octets after the colon)} of each field of a header block
    as L{headerEnd} delimits it, names as written, in one scan.  Every
    line of such a block is a field or a continuation (not checked: a
    block from L{headerEnd} is), each field follows the one before it, so
    findall sees exactly the fields L{_parseHeader} would.
    """
    return _FIELD_PAIR.findall(header)


def headerEnvelope(header: bytes) -> bytes:
    """
    The ENVELOPE of a message from its header block alone (as
    L{headerEnd} delimits it, see L{_headerPairs}): what
    L{ParsedMessage.envelope} gives, with nothing else parsed and no
    object made per field (a first C{FETCH 1:* (ENVELOPE)} of a big
    mailbox spends its time here).
    """
    first: Dict[bytes, bytes] = {}
    wanted = _ENVELOPE_FIELD_NAMES
    for name, raw in _headerPairs(header):
        name = name.lower()
        if name in wanted and name not in first:
            first[name] = raw
    get = first.get

    def text(name: bytes) -> bytes:
        raw = get(name)
        return _NIL if raw is None else string(_unfold(raw))

    def addresses(name: bytes) -> Optional[bytes]:
        raw = get(name)
        return None if raw is None else _addressListWire(_unfold(raw))

    sender = addresses(b"from")
    return b"(" + b" ".join([
        text(b"date"),
        text(b"subject"),
        sender or _NIL,
        addresses(b"sender") or sender or _NIL,
        addresses(b"reply-to") or sender or _NIL,
        addresses(b"to") or _NIL,
        addresses(b"cc") or _NIL,
        addresses(b"bcc") or _NIL,
        text(b"in-reply-to"),
        text(b"message-id"),
    ]) + b")"


@functools.lru_cache(maxsize=64)
def _octetNames(names: FrozenSet[str]) -> Dict[bytes, str]:
    """
    C{names} (lower case) as the octets a header block spells them, to
    themselves: a field is looked up without decoding its name.
    """
    return {name.encode("ascii", "replace"): name for name in names}


def headerFieldOctets(header: bytes, names: FrozenSet[str]) -> Dict[str, List[bytes]]:
    """
    The octets after the colon of each field of C{names} (lower case) a
    header block has (as L{headerEnd} delimits it, see L{_headerPairs}),
    in one scan: what L{fieldText} turns into a value.  A name the block
    lacks is not in the result.
    """
    out: Dict[str, List[bytes]] = {}
    wanted = _octetNames(names)
    for name, raw in _headerPairs(header):
        key = wanted.get(name.lower())
        if key is not None:
            values = out.get(key)
            if values is None:
                out[key] = [raw]
            else:
                values.append(raw)
    return out


def fieldText(raw: bytes) -> str:
    """
    A field's value from the octets after its colon (L{headerFieldOctets},
    L{fieldValues}): unfolded, trimmed and RFC 2047-decoded.
    """
    if b"\n" in raw:
        raw = _FOLD.sub(b"", raw)
    text = raw.strip(b" \t\r\n").decode("utf-8", errors="replace")
    # (Without "=?" there is no encoded word to decode.)
    return decodeHeaderText(text) if "=?" in text else text


def fieldValues(header: bytes, name: str) -> List[str]:
    """
    The values of the fields C{name} (lower case) of a header block (as
    L{headerEnd} delimits it), unfolded and RFC 2047-decoded: what
    L{ParsedMessage.headerValues} gives for the message, without parsing
    the other fields.
    """
    octets = name.lower().encode("ascii", errors="replace") if name.isascii() else b""
    if not _validFieldName(octets) or b":" in octets:
        return []  # no field has such a name
    # Every line of the block that is not a continuation starts a field:
    # find the lines starting with the name (lower-casing keeps offsets),
    # then the colon and the value after it.
    lowered = header.lower()
    starts = [0] if lowered.startswith(octets) else []
    marker = b"\n" + octets
    at = lowered.find(marker)
    while at >= 0:
        starts.append(at + 1)
        at = lowered.find(marker, at + 1)
    out = []
    skip = len(octets)
    for start in starts:
        match = _FIELD_VALUE.match(header, start + skip)
        if match is None:
            continue  # a longer name
        out.append(fieldText(match.group(1)))
    return out


# --------------------------------------------------------------------------
# Structured field values (RFC 5322 / RFC 2045 lexical tokens)

_SPECIALS = '()<>[]:;@\\,."'
_PARAM_SPECIALS = '()<>@,;:\\"/[]?='


def _tokens(text: str, specials: str) -> List[Tuple[str, str, bool]]:
    """
    Split C{text} (octets as latin-1) into lexical tokens.

    @return: C{(kind, text, spaceBefore)} with kind C{"atom"}, C{"qs"}
        (quoted string, unescaped), C{"dl"} (domain literal with its
        brackets), C{"comment"} (unescaped, without parentheses), or a
        special character itself.
    """
    out: List[Tuple[str, str, bool]] = []
    i, n = 0, len(text)
    space = False
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        if c == '"':
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            i += 1
            out.append(("qs", "".join(buf), space))
        elif c == "(":
            depth = 1
            i += 1
            buf = []
            while i < n and depth:
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    i += 1
                    buf.append(text[i])
                elif ch == "(":
                    depth += 1
                    buf.append(ch)
                elif ch == ")":
                    depth -= 1
                    if depth:
                        buf.append(ch)
                else:
                    buf.append(ch)
                i += 1
            out.append(("comment", "".join(buf), space))
        elif c == "[" and specials is _SPECIALS:
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("dl", text[i:j], space))
            i = j
        elif c in specials:
            out.append((c, c, space))
            i += 1
        else:
            j = i
            while j < n and text[j] not in specials and text[j] not in " \t\r\n":
                j += 1
            out.append(("atom", text[i:j], space))
            i = j
        space = False
    return out


def _parseParameters(toks: List[Tuple[str, str, bool]], i: int) -> List[Tuple[str, str]]:
    """
    Parse C{; name=value} pairs from token C{i} on, merging RFC 2231
    continuations the way Dovecot does: C{name*0}, C{name*1} become one
    C{name}; when a section is charset-encoded the merged parameter is
    C{name*} with its value still encoded.
    """
    raw: List[Tuple[str, str]] = []
    n = len(toks)
    while i < n:
        if toks[i][0] != ";":
            i += 1
            continue
        i += 1
        if i >= n or toks[i][0] != "atom":
            continue
        name = toks[i][1]
        i += 1
        if i >= n or toks[i][0] != "=":
            continue
        i += 1
        if i >= n or toks[i][0] not in ("atom", "qs"):
            if i < n and toks[i][0] not in (";",):
                continue
            raw.append((name, ""))
            continue
        value = toks[i][1]
        i += 1
        # Tolerate unquoted values holding specials such as "/" or "=".
        while i < n and toks[i][0] not in (";", "comment") and not toks[i][2]:
            value += toks[i][1]
            i += 1
        raw.append((name, value))
    out: List[Tuple[str, str]] = []
    continued: Dict[str, List[Tuple[int, str, bool]]] = {}
    order: List[Tuple[str, str]] = []
    for name, value in raw:
        match = re.match(r"^(.*?)\*(\d+)(\*?)$", name)
        if match:
            base = match.group(1)
            if base.lower() not in continued:
                continued[base.lower()] = []
                order.append(("cont", base))
            continued[base.lower()].append((int(match.group(2)), value, bool(match.group(3))))
        else:
            order.append(("plain", name))
            out.append((name, value))
    if not continued:
        return out
    result: List[Tuple[str, str]] = []
    plain = iter(out)
    for kind, name in order:
        if kind == "plain":
            result.append(next(plain))
        else:
            pieces = sorted(continued[name.lower()])
            encoded = any(p[2] for p in pieces)
            result.append((name + ("*" if encoded else ""), "".join(p[1] for p in pieces)))
    return result


@functools.lru_cache(maxsize=1024)
def _parseContentValue(value: bytes, withSubtype: bool) -> Tuple[str, str, List[Tuple[str, str]]]:
    """
    Parse a Content-Type (C{withSubtype}) or Content-Disposition value;
    remembered for the values seen last (most repeat from message to
    message), so the parameter list is shared: never change it.

    @return: C{(type, subtype, parameters)}; type is C{""} when missing
        or malformed.
    """
    toks = [t for t in _tokens(value.decode("latin-1"), _PARAM_SPECIALS) if t[0] != "comment"]
    i = 0
    kind = sub = ""
    if i < len(toks) and toks[i][0] == "atom":
        kind = toks[i][1]
        i += 1
        if withSubtype:
            if i + 1 < len(toks) and toks[i][0] == "/" and toks[i + 1][0] == "atom":
                sub = toks[i + 1][1]
                i += 2
            else:
                kind = ""
    return kind, sub, _parseParameters(toks, i)


# --------------------------------------------------------------------------
# Addresses (ENVELOPE)


class _Address:
    """
    One ENVELOPE address or group marker; strings are latin-1 text standing
    for the original octets.
    """

    __slots__ = ("name", "adl", "mailbox", "host")

    def __init__(
        self,
        name: Optional[str],
        adl: Optional[str],
        mailbox: Optional[str],
        host: Optional[str],
    ) -> None:
        self.name = name
        self.adl = adl
        self.mailbox = mailbox
        self.host = host

    def wire(self) -> bytes:
        def n(v: Optional[str]) -> bytes:
            return nstring(None if v is None else v.encode("latin-1"))

        return b"(" + b" ".join([n(self.name), n(self.adl), n(self.mailbox), n(self.host)]) + b")"


@functools.lru_cache(maxsize=4096)
def addressList(value: bytes) -> Tuple[_Address, ...]:
    """
    L{_parseAddresses} of an address field's value, remembered for the
    values seen last: senders and recipients repeat from message to
    message, and parsing them is most of the cost of an ENVELOPE.  The
    addresses are shared: never change them.
    """
    return tuple(_parseAddresses(value))


@functools.lru_cache(maxsize=4096)
def _addressListWire(value: bytes) -> Optional[bytes]:
    """
    The ENVELOPE address list of an address field's value, or L{None}
    when it holds no address.
    """
    parsed = addressList(value)
    if not parsed:
        return None
    return b"(" + b"".join(a.wire() for a in parsed) + b")"


def _phraseText(toks: Sequence[Tuple[str, str, bool]]) -> str:
    out: List[str] = []
    for kind, text, space in toks:
        if kind == "comment":
            continue
        if out and space:
            out.append(" ")
        out.append(text)
    return "".join(out)


def _compactText(toks: Sequence[Tuple[str, str, bool]]) -> str:
    return "".join(t[1] for t in toks if t[0] != "comment")


def _parseAddresses(value: bytes) -> List[_Address]:
    """
    Parse an address-list leniently into ENVELOPE addresses, groups
    flattened into the start / end markers of RFC 3501.  A missing local
    part or domain is filled with C{MISSING_MAILBOX} / C{MISSING_DOMAIN}
    as Dovecot does (a NIL host would read as a group marker).
    """
    toks = _tokens(value.decode("latin-1"), _SPECIALS)
    out: List[_Address] = []
    i, n = 0, len(toks)
    inGroup = False
    while i < n:
        kind = toks[i][0]
        if kind == ",":
            i += 1
            continue
        if kind == ";":
            if inGroup:
                out.append(_Address(None, None, None, None))
                inGroup = False
            i += 1
            continue
        # Gather words up to a structural special.
        start = i
        while i < n and toks[i][0] not in ("<", ":", "@", ",", ";", ">"):
            i += 1
        words = toks[start:i]
        stop = toks[i][0] if i < n else ""
        if stop == ":" and not inGroup:
            out.append(_Address(None, None, _phraseText(words) or "", None))
            inGroup = True
            i += 1
            continue
        if stop == "<":
            i += 1
            adl = None
            if i < n and toks[i][0] == "@":
                # Obsolete route: @a,@b:
                routeStart = i
                while i < n and toks[i][0] not in (":", ">"):
                    i += 1
                if i < n and toks[i][0] == ":":
                    adl = _compactText(toks[routeStart:i])
                    i += 1
                else:
                    i = routeStart
            localStart = i
            while i < n and toks[i][0] not in ("@", ">", ","):
                i += 1
            local = _compactText(toks[localStart:i])
            host = ""
            if i < n and toks[i][0] == "@":
                i += 1
                hostStart = i
                while i < n and toks[i][0] not in (">", ","):
                    i += 1
                host = _compactText(toks[hostStart:i])
            if i < n and toks[i][0] == ">":
                i += 1
            name = _phraseText(words)
            out.append(
                _Address(name or None, adl, local or "MISSING_MAILBOX", host or "MISSING_DOMAIN")
            )
            # Skip anything up to the next separator.
            while i < n and toks[i][0] not in (",", ";"):
                i += 1
            continue
        if stop == "@":
            i += 1
            hostStart = i
            while i < n and toks[i][0] not in (",", ";", "<", "comment"):
                i += 1
            host = _compactText(toks[hostStart:i])
            comment = None
            while i < n and toks[i][0] not in (",", ";"):
                if toks[i][0] == "comment" and comment is None:
                    comment = toks[i][1]
                i += 1
            if comment is None:
                comment = next((t[1] for t in words if t[0] == "comment"), None)
            local = _compactText(words)
            out.append(
                _Address(comment or None, None, local or "MISSING_MAILBOX", host or "MISSING_DOMAIN")
            )
            continue
        # A bare word list (or stray specials): a mailbox without a domain.
        text = _phraseText(words)
        if text:
            out.append(_Address(None, None, text, "MISSING_DOMAIN"))
        if i < n and toks[i][0] in (":", ">", "<", "@"):
            i += 1
    if inGroup:
        out.append(_Address(None, None, None, None))
    return out


# --------------------------------------------------------------------------
# RFC 2047 and body decoding (SEARCH)

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


@functools.lru_cache(maxsize=256)
def lookupCharset(charset: str) -> Optional[str]:
    """
    The Python codec name for C{charset}, or L{None} when unknown or not
    a text encoding; remembered for the charsets seen last (every encoded
    word of every header asks).
    """
    try:
        info = codecs.lookup(charset.strip().strip('"'))
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def _decodeText(octets: bytes, charset: Optional[str]) -> str:
    """
    Decode C{octets} from C{charset} (UTF-8 when unknown or ASCII, since
    8-bit text labelled ASCII is usually UTF-8), replacing errors.
    """
    codec = lookupCharset(charset) if charset else None
    if codec is None or codec == "ascii":
        codec = "utf-8"
    return octets.decode(codec, errors="replace")


def _wordOctets(encoding: str, payload: str) -> Optional[bytes]:
    try:
        if encoding in "bB":
            cleaned = re.sub(r"[^A-Za-z0-9+/]", "", payload)
            cleaned = cleaned[: len(cleaned) - len(cleaned) % 4] if len(cleaned) % 4 == 1 else cleaned
            cleaned += "=" * (-len(cleaned) % 4)
            return binascii.a2b_base64(cleaned.encode("ascii"))
        return binascii.a2b_qp(payload.replace("_", " ").encode("latin-1", "replace"))
    except (binascii.Error, ValueError):
        return None


def decodeHeaderText(text: str) -> str:
    """
    Decode the RFC 2047 encoded words of an (unfolded) header value.
    White space between adjacent encoded words is dropped, and adjacent
    words in one charset are decoded together (so a character split across
    two words survives).  Words in an unknown charset are left as they are;
    bad octets become U+FFFD.
    """
    if "=?" not in text:
        return text  # no encoded word
    out: List[str] = []
    pos = 0
    pendingCharset: Optional[str] = None
    pending = b""
    lastEnd = -1
    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        charset = match.group(1).split("*", 1)[0]
        codec = lookupCharset(charset)
        octets = _wordOctets(match.group(2), match.group(3)) if codec else None
        adjacent = lastEnd == match.start() or (lastEnd >= 0 and not between.strip(" \t"))
        if octets is None:
            if pending:
                out.append(pending.decode(pendingCharset or "utf-8", errors="replace"))
                pending, pendingCharset = b"", None
            out.append(between)
            out.append(match.group(0))
            lastEnd = -1
            pos = match.end()
            continue
        if adjacent and pendingCharset == codec:
            pending += octets
        else:
            if pending:
                out.append(pending.decode(pendingCharset or "utf-8", errors="replace"))
            if not adjacent:
                out.append(between)
            pending, pendingCharset = octets, codec
        lastEnd = match.end()
        pos = match.end()
    if pending:
        out.append(pending.decode(pendingCharset or "utf-8", errors="replace"))
    out.append(text[pos:])
    return "".join(out)


def _decodeTransfer(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if encoding == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
        if len(cleaned) % 4 == 1:
            cleaned = cleaned[:-1]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return b""
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


# --------------------------------------------------------------------------
# The part tree


class _Part:
    """
    One MIME part: offsets into the message's octets, its header fields,
    its content type, and its subparts (multipart) or encapsulated message
    (message/rfc822).
    """

    __slots__ = (
        "start",
        "bodyStart",
        "end",
        "fields",
        "mainType",
        "subType",
        "params",
        "children",
        "message",
        "_byName",
    )

    def __init__(self, start: int, bodyStart: int, end: int, fields: List[_Field]) -> None:
        self.start = start
        self.bodyStart = bodyStart
        self.end = end
        self.fields = fields
        self.mainType = "text"
        self.subType = "plain"
        self.params: List[Tuple[str, str]] = []
        self.children: Optional[List["_Part"]] = None
        self.message: Optional["_Part"] = None
        self._byName: Optional[Dict[str, _Field]] = None

    def field(self, name: str) -> Optional[_Field]:
        """
        The first field named C{name} (lower case), or L{None}.
        """
        byName = self._byName
        if byName is None:
            byName = self._byName = {}
            for f in self.fields:
                byName.setdefault(f.name, f)
        return byName.get(name)

    def fieldValue(self, name: str) -> Optional[bytes]:
        """
        The unfolded value of the first field C{name}, or L{None}.
        """
        f = self.field(name)
        return None if f is None else f.value()

    def param(self, name: str) -> Optional[str]:
        """
        The value of Content-Type parameter C{name} (case-insensitive).
        """
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None

    @property
    def isMessage(self) -> bool:
        """
        Whether this part encapsulates a message (message/rfc822 or
        message/global).
        """
        return self.mainType == "message" and self.subType in ("rfc822", "global")


class _Counter:
    def __init__(self) -> None:
        self.parts = 0


def _findDelimiters(data: bytes, start: int, end: int, boundary: bytes, counter: _Counter) -> List[Tuple[int, int]]:
    """
    The body regions between the delimiter lines of C{boundary} in
    C{data[start:end]} (preamble and epilogue excluded).
    """
    delim = b"--" + boundary
    regions: List[Tuple[int, int]] = []
    partStart = -1
    pos = start
    while True:
        i = data.find(delim, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and data[i - 1 : i] != b"\n":
            continue
        nl = data.find(b"\n", i, end)
        lineEnd = end if nl < 0 else nl + 1
        restEnd = lineEnd if lineEnd - i < len(delim) + 200 else i + len(delim) + 200
        rest = data[i + len(delim) : restEnd]
        close = rest.startswith(b"--")
        if close:
            rest = rest[2:]
        if rest.strip(b" \t\r\n"):
            continue
        if partStart >= 0:
            if counter.parts >= MAX_PARTS - 1:
                # Too many parts: the rest stays in this part's body.
                break
            before = i
            if i > start and data[i - 1 : i] == b"\n":
                before -= 2 if data[i - 2 : i] == b"\r\n" else 1
            regions.append((partStart, max(partStart, before)))
            counter.parts += 1
        if close:
            partStart = -1
            break
        partStart = lineEnd
        pos = lineEnd
    if partStart >= 0:
        regions.append((partStart, end))
        counter.parts += 1
    return regions


def _parsePart(data: bytes, start: int, end: int, defaultDigest: bool, depth: int, counter: _Counter) -> _Part:
    fields, bodyStart = _parseHeader(data, start, end)
    part = _Part(start, bodyStart, end, fields)
    if defaultDigest:
        part.mainType, part.subType = "message", "rfc822"
    ctype = part.fieldValue("content-type")
    if ctype is not None:
        mainType, subType, params = _parseContentValue(ctype, True)
        if mainType:
            part.mainType, part.subType = mainType.lower(), subType.lower()
        part.params = params
    if part.mainType == "multipart":
        part.children = []
        boundary = part.param("boundary")
        if boundary and depth < MAX_DEPTH:
            digest = part.subType == "digest"
            for s, e in _findDelimiters(data, bodyStart, end, boundary.encode("latin-1"), counter):
                part.children.append(_parsePart(data, s, e, digest, depth + 1, counter))
    elif part.isMessage and depth < MAX_DEPTH:
        counter.parts += 1
        if counter.parts <= MAX_PARTS:
            part.message = _parsePart(data, bodyStart, end, False, depth + 1, counter)
    return part


# --------------------------------------------------------------------------
# ENVELOPE and BODYSTRUCTURE


def _envelope(part: _Part) -> bytes:
    def text(name: str) -> bytes:
        return nstring(part.fieldValue(name))

    def addresses(name: str) -> Optional[bytes]:
        value = part.fieldValue(name)
        if value is None:
            return None
        return _addressListWire(value)

    addr = {name: addresses(name) for name in _ENVELOPE_ADDRESS_FIELDS}
    for name in ("sender", "reply-to"):
        if addr[name] is None:
            addr[name] = addr["from"]
    items = [text("date"), text("subject")]
    items += [addr[name] or _NIL for name in _ENVELOPE_ADDRESS_FIELDS]
    items += [text("in-reply-to"), text("message-id")]
    return b"(" + b" ".join(items) + b")"


def _paramList(params: List[Tuple[str, str]]) -> bytes:
    if not params:
        return _NIL
    return b"(" + b" ".join(string(k.upper().encode("latin-1")) + b" " + string(v.encode("latin-1")) for k, v in params) + b")"


def _extension(part: _Part, multipart: bool) -> List[bytes]:
    out: List[bytes] = []
    if multipart:
        out.append(_paramList(part.params))
    else:
        out.append(nstring(part.fieldValue("content-md5")))
    disposition = part.fieldValue("content-disposition")
    kind = ""
    if disposition is not None:
        kind, _, params = _parseContentValue(disposition, False)
    if kind:
        out.append(b"(" + string(kind.encode("latin-1")) + b" " + _paramList(params) + b")")
    else:
        out.append(_NIL)
    language = part.fieldValue("content-language")
    langs = []
    if language is not None:
        langs = [t[1] for t in _tokens(language.decode("latin-1"), _PARAM_SPECIALS) if t[0] == "atom"]
    if langs:
        out.append(b"(" + b" ".join(string(x.encode("latin-1")) for x in langs) + b")")
    else:
        out.append(_NIL)
    out.append(nstring(part.fieldValue("content-location")))
    return out


def _bodyStructure(data: bytes, part: _Part, extended: bool) -> bytes:
    if part.children is not None:
        if part.children:
            inner = b"".join(_bodyStructure(data, child, extended) for child in part.children)
        else:
            inner = _EMPTY_PART_EXTENDED if extended else _EMPTY_PART_BASIC
        items = [inner + b" " + string(part.subType.upper())]
        if extended:
            items += _extension(part, True)
        return b"(" + b" ".join(items) + b")"
    params = list(part.params)
    if part.mainType == "text" and part.param("charset") is None:
        params.insert(0, ("charset", "us-ascii"))
    encoding = part.fieldValue("content-transfer-encoding")
    items = [
        string(part.mainType.upper()),
        string(part.subType.upper()),
        _paramList(params),
        nstring(part.fieldValue("content-id")),
        nstring(part.fieldValue("content-description")),
        string(encoding.upper()) if encoding else b'"7BIT"',
        b"%d" % (part.end - part.bodyStart,),
    ]
    if part.isMessage and part.message is not None:
        items.append(_envelope(part.message))
        items.append(_bodyStructure(data, part.message, extended))
        items.append(b"%d" % (data.count(b"\n", part.bodyStart, part.end),))
    elif part.mainType == "text":
        items.append(b"%d" % (data.count(b"\n", part.bodyStart, part.end),))
    if extended:
        items += _extension(part, False)
    return b"(" + b" ".join(items) + b")"


def _walkText(part: _Part, out: List[_Part]) -> None:
    if part.children is not None:
        for child in part.children:
            _walkText(child, out)
    elif part.message is not None:
        _walkText(part.message, out)
    elif part.mainType == "text":
        out.append(part)


# --------------------------------------------------------------------------
# The public API


class ParsedMessage:
    """
    A message parsed once; answers ENVELOPE, BODYSTRUCTURE, sections and
    SEARCH questions.  Keeps a reference to the original octets and only
    offsets into them.
    """

    def __init__(self, data: bytes, root: _Part) -> None:
        self._data = data
        self._root = root
        self._bodyText: Optional[List[str]] = None
        self._headerText: Optional[str] = None

    @property
    def size(self) -> int:
        """
        The size of the message in octets.
        """
        return len(self._data)

    def envelope(self) -> bytes:
        """
        The ENVELOPE of the message in wire form (RFC 3501 7.4.2).
        Subjects and names are the raw header text (RFC 2047 words not
        decoded), unfolded; Sender and Reply-To default to From.
        """
        return _envelope(self._root)

    def bodyStructure(self, extended: bool) -> bytes:
        """
        BODYSTRUCTURE (C{extended}) or BODY, in wire form.
        """
        return _bodyStructure(self._data, self._root, extended)

    def _resolve(self, path: Tuple[int, ...]) -> Optional[_Part]:
        part = self._root
        isRoot = True
        # Whether ``part`` was reached as the implicit part 1 of a
        # non-multipart (top-level or encapsulated) message.
        implicit = False
        for number in path:
            if not isRoot:
                if part.isMessage and part.message is not None:
                    part, isRoot = part.message, True
                elif part.children is None:
                    # A non-multipart part "only has a part 1" (RFC 3501
                    # 6.4.5), which is itself: 1.1 of a text part inside a
                    # multipart is that part, as Dovecot answers; the
                    # implicit part 1 of a non-multipart message has none.
                    if number == 1 and not implicit:
                        continue
                    return None
            if part.children is not None:
                if not 1 <= number <= len(part.children):
                    return None
                part = part.children[number - 1]
                implicit = False
            elif isRoot and number == 1:
                implicit = True
            else:
                return None
            isRoot = False
        return part

    def _headerSection(self, part: _Part, kind: str, fields: Sequence[Union[str, bytes]]) -> bytes:
        data = self._data
        header = data[part.start : part.bodyStart]
        if kind == "HEADER":
            return header
        wanted = set()
        for name in fields:
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            wanted.add(name.lower())
        keep = kind == "HEADER.FIELDS"
        out = []
        for f in part.fields:
            if (f.name in wanted) == keep:
                raw = f.raw
                if not raw.endswith(b"\n"):
                    raw += b"\r\n"
                out.append(raw)
        out.append(b"\r\n")
        return b"".join(out)

    def section(self, part: tuple, kind: str, fields: tuple = ()) -> bytes:
        """
        The octets of BODY[section] (RFC 3501 6.4.5).

        @param part: C{()} for the whole message, or part numbers such as
            C{(1, 2)}.
        @param kind: C{""}, C{"HEADER"}, C{"HEADER.FIELDS"},
            C{"HEADER.FIELDS.NOT"}, C{"TEXT"} or C{"MIME"}
            (case-insensitive).
        @param fields: field names for the C{HEADER.FIELDS} kinds.
        @return: the octets; C{b""} for a part that does not exist, for
            C{MIME} without a part, and for C{HEADER}/C{TEXT} of a numbered
            part that is not a message/rfc822.
        """
        kind = kind.upper()
        target = self._resolve(tuple(part))
        if target is None:
            return b""
        data = self._data
        if not part:
            if kind == "":
                return data
            if kind == "MIME":
                return b""
            message: Optional[_Part] = target
        else:
            if kind == "":
                return data[target.bodyStart : target.end]
            if kind == "MIME":
                return data[target.start : target.bodyStart]
            message = target.message if target.isMessage else None
            if message is None:
                return b""
        assert message is not None
        if kind == "TEXT":
            return data[message.bodyStart : message.end]
        if kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return self._headerSection(message, kind, fields)
        return b""

    def headerValues(self, name: str) -> list:
        """
        The values of the top-level header fields C{name}
        (case-insensitive), unfolded, RFC 2047 decoded, in order.
        """
        name = name.lower()
        return [
            decodeHeaderText(f.value().decode("utf-8", errors="replace"))
            for f in self._root.fields
            if f.name == name
        ]

    def sentDate(self) -> Optional[datetime.date]:
        """
        The date of the first Date: field in the field's own zone, or
        L{None} when absent or unparseable.
        """
        value = self._root.fieldValue("date")
        if value is None:
            return None
        try:
            parsed = email.utils.parsedate_tz(value.decode("latin-1"))
            if parsed is None:
                return None
            return datetime.date(parsed[0], parsed[1], parsed[2])
        except (ValueError, TypeError, IndexError, OverflowError):
            return None

    def _bodyTexts(self) -> List[str]:
        if self._bodyText is None:
            parts: List[_Part] = []
            _walkText(self._root, parts)
            texts = []
            for p in parts:
                body = self._data[p.bodyStart : p.end]
                encoding = p.fieldValue("content-transfer-encoding")
                if encoding:
                    body = _decodeTransfer(body, encoding.decode("latin-1").strip())
                texts.append(_decodeText(body, p.param("charset")).casefold())
            self._bodyText = texts
        return self._bodyText

    def bodyContains(self, needle: str) -> bool:
        """
        Whether C{needle} occurs, case-insensitively, in the decoded text
        of any text/* part (transfer encoding and charset decoded).
        """
        needle = needle.casefold()
        return any(needle in text for text in self._bodyTexts())

    def textContains(self, needle: str) -> bool:
        """
        Whether C{needle} occurs, case-insensitively, in the decoded
        top-level header fields or in the body (L{bodyContains}).
        """
        if self._headerText is None:
            lines = []
            for f in self._root.fields:
                value = decodeHeaderText(f.value().decode("utf-8", errors="replace"))
                lines.append(f.name + ": " + value)
            self._headerText = "\n".join(lines).casefold()
        folded = needle.casefold()
        return folded in self._headerText or self.bodyContains(needle)


def parseMessage(data: bytes) -> ParsedMessage:
    """
    Parse a message in its wire (CRLF) form.  Never raises on malformed
    input; see the module documentation for how breakage is read.
    """
    data = bytes(data)
    root = _parsePart(data, 0, len(data), False, 0, _Counter())
    return ParsedMessage(data, root)
