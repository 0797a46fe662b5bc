"""
Reading IMAP commands off the wire (RFC 3501 section 9).

Two layers:

* L{CommandFramer} cuts the incoming octet stream into commands.  A command
  is one or more lines joined by synchronising literals (C{{n}}); the framer
  enforces the line limit before buffering, asks its owner whether each
  announced literal is acceptable (so an oversized one is refused without
  a continuation request) and collects literal octets either in memory or
  in a temporary file.
* L{tokenize} turns the pieces of one command into tokens (atoms, quoted
  strings, literals, parenthesised lists) and L{Arguments} reads typed
  arguments (astring, mailbox, flag list, sequence set, date-time, fetch
  attributes) from them.
"""

import calendar
import re
import tempfile
from dataclasses import dataclass
from typing import IO, Any, List, Optional, Tuple, Union

from mailplat.imap.sequence import SequenceSet, SequenceSetError, parseSequenceSet

__all__ = [
    "ParseError",
    "Atom",
    "QuotedString",
    "Literal",
    "LiteralFile",
    "CommandFramer",
    "CommandReady",
    "LineTooLong",
    "LiteralAnnounced",
    "LiteralSkipped",
    "tokenize",
    "Arguments",
    "BodySection",
    "FetchAttribute",
    "parseFetchAttributes",
    "parseDateTime",
    "formatDateTime",
    "isValidTag",
]


class ParseError(ValueError):
    """
    The command is malformed; answered with C{BAD} and the message.
    """


class Atom(bytes):
    """
    An atom (including C{NIL}, flags such as C{\\Seen}, sequence sets and
    fetch attributes such as C{BODY[HEADER.FIELDS (From)]<0.10>}).
    """


class QuotedString(bytes):
    """
    A quoted string, unescaped.
    """


class Literal(bytes):
    """
    A literal held in memory.
    """


class LiteralFile:
    """
    A literal spooled to a temporary file (large APPEND messages).

    @ivar file: the binary file, positioned at offset 0 once complete.
    @ivar size: its length in octets.
    """

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size

    def close(self) -> None:
        """
        Release the temporary file.
        """
        self.file.close()

    def __repr__(self) -> str:
        return f"<LiteralFile {self.size} octets>"


Token = Union[bytes, LiteralFile, list]


# ---------------------------------------------------------------------------
# Framing

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}$")
_TAG = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5e-\x7a\x7c\x7e]+$")


def isValidTag(tag: bytes) -> bool:
    """
    Whether C{tag} is a syntactically valid IMAP tag (astring chars other
    than C{+}).
    """
    return bool(_TAG.match(tag))


@dataclass
class CommandReady:
    """
    A whole command has arrived.

    @ivar parts: alternating line text (L{bytes}) and literals
        (L{Literal} or L{LiteralFile}); line text never includes the
        C{{n}} marker nor the line end.
    """

    parts: List[Any]


@dataclass
class LineTooLong:
    """
    A line went over the limit; the framer discards up to the next line end.

    @ivar tag: the command's tag when it could be read, else L{None}.
    """

    tag: Optional[bytes]


@dataclass
class LiteralAnnounced:
    """
    The client announced a literal; the owner must call
    L{CommandFramer.acceptLiteral} or L{CommandFramer.rejectLiteral} before
    asking for the next event.

    @ivar tag: the command's tag (L{None} if unreadable).
    @ivar command: the command name, upper-cased (C{b"APPEND"}); for C{UID}
        commands C{b"UID"}.
    @ivar size: announced size in octets.
    @ivar nonSync: whether it was a LITERAL+ (C{{n+}}) literal.
    """

    tag: Optional[bytes]
    command: bytes
    size: int
    nonSync: bool


@dataclass
class LiteralSkipped:
    """
    A refused non-synchronising literal and the rest of its command have
    been read and thrown away.
    """

    tag: Optional[bytes]


def _tagOf(line: bytes) -> Optional[bytes]:
    if b" " not in line:
        return None
    tag = line.split(b" ", 1)[0]
    if len(tag) <= 64 and isValidTag(tag):
        return bytes(tag)
    return None


def _commandOf(line: bytes) -> bytes:
    words = line.split(b" ", 2)
    if len(words) < 2:
        return b""
    return bytes(words[1][:32]).upper()


class CommandFramer:
    """
    Cuts an octet stream into IMAP commands, enforcing limits before
    buffering.

    Feed octets with L{feed}; pull events with L{next} (commands) or
    L{nextLine} (a bare line: an AUTHENTICATE response or IDLE's C{DONE}).
    Either returns L{None} when more octets are needed.  Octets that are
    not yet consumed stay buffered, so an owner that is busy with an earlier
    command simply does not pull (see L{buffered}).

    @ivar maxLineLength: longest line, without its line end.
    @ivar maxCommandSize: most octets one command may hold in memory (its
        lines and in-memory literals).
    """

    LINE, LITERAL, DISCARD, SKIP, WAIT = range(5)

    def __init__(
        self,
        maxLineLength: int = 65536,
        maxCommandSize: Optional[int] = None,
        spoolMemory: int = 1024 * 1024,
    ) -> None:
        """
        @param maxLineLength: longest line accepted.
        @param maxCommandSize: most in-memory octets of one command
            (default four times C{maxLineLength}).
        @param spoolMemory: a literal collected to a file stays in memory
            up to this size, then moves to disk.
        """
        self.maxLineLength = maxLineLength
        self.maxCommandSize = maxCommandSize if maxCommandSize is not None else 4 * maxLineLength
        self.spoolMemory = spoolMemory
        self._buffer = bytearray()
        self._state = self.LINE
        self._parts: List[Any] = []
        self._commandSize = 0
        self._tag: Optional[bytes] = None
        self._command = b""
        self._literalRemaining = 0
        self._literalSink: Any = None
        self._literalSize = 0
        self._announced: Optional[LiteralAnnounced] = None
        self._discardTail = b""
        self._afterDiscard: Optional[Any] = None

    @property
    def buffered(self) -> int:
        """
        Octets received and not yet consumed.
        """
        return len(self._buffer)

    def takeBuffered(self) -> bytes:
        """
        Remove and return the octets received and not yet consumed, when
        the stream changes form between commands (COMPRESS, RFC 4978: what
        follows the command was sent compressed and is fed again once
        inflated).
        """
        data = bytes(self._buffer)
        del self._buffer[:]
        return data

    @property
    def inCommand(self) -> bool:
        """
        Whether part of a command (a line before a literal) has been read.
        """
        return bool(self._parts) or self._state in (self.LITERAL, self.WAIT)

    def fitsInMemory(self, size: int) -> bool:
        """
        Whether a literal of C{size} octets may be kept in memory without
        the command going over L{maxCommandSize}.
        """
        return self._commandSize + size <= self.maxCommandSize

    def feed(self, data: bytes) -> None:
        """
        Add received octets.
        """
        self._buffer += data

    def _reset(self) -> None:
        for part in self._parts:
            if isinstance(part, LiteralFile):
                part.close()
        self._parts = []
        self._commandSize = 0
        self._tag = None
        self._command = b""
        self._state = self.LINE

    def close(self) -> None:
        """
        Drop everything buffered and any half-read literal file.
        """
        if isinstance(self._literalSink, LiteralFile):
            self._literalSink.close()
        self._literalSink = None
        self._reset()
        self._buffer = bytearray()

    def _takeLine(self) -> "Optional[Union[bytes, LineTooLong]]":
        """
        A complete line from the buffer (without its end), a
        L{LineTooLong} (switching to DISCARD), or L{None}.
        """
        limit = self.maxLineLength
        idx = self._buffer.find(b"\n", 0, limit + 2)
        if idx < 0:
            if len(self._buffer) > limit + 1:
                tag = self._tag if self._parts else _tagOf(bytes(self._buffer[:80]))
                self._discardTail = b""
                self._state = self.DISCARD
                return LineTooLong(tag)
            return None
        line = bytes(self._buffer[:idx])
        del self._buffer[: idx + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            tag = self._tag if self._parts else _tagOf(line[:80])
            self._reset()
            return LineTooLong(tag)
        return line

    def _discard(self) -> bool:
        """
        Throw away octets up to the next line end.  Returns whether the
        line end was found.  A discarded line that announced a
        non-synchronising literal has that literal skipped too.
        """
        idx = self._buffer.find(b"\n")
        if idx < 0:
            self._discardTail = (self._discardTail + bytes(self._buffer))[-32:]
            del self._buffer[:]
            return False
        tail = (self._discardTail + bytes(self._buffer[:idx]))[-32:]
        del self._buffer[: idx + 1]
        self._discardTail = b""
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        m = _LITERAL_AT_END.search(tail)
        if m and m.group(2):
            self._literalRemaining = int(m.group(1))
            self._state = self.SKIP
        else:
            self._reset()
        return True

    def _skip(self) -> bool:
        n = min(self._literalRemaining, len(self._buffer))
        del self._buffer[:n]
        self._literalRemaining -= n
        if self._literalRemaining:
            return False
        self._state = self.DISCARD
        return True

    def next(self) -> "Optional[Union[CommandReady, LineTooLong, LiteralAnnounced, LiteralSkipped]]":
        """
        The next framing event, or L{None} if more octets are needed.
        """
        while True:
            if self._state == self.WAIT:
                raise RuntimeError("a literal announcement is unanswered")
            if self._state == self.DISCARD:
                if not self._discard():
                    return None
                if self._state == self.LINE and self._afterDiscard is not None:
                    event, self._afterDiscard = self._afterDiscard, None
                    return event
                continue
            if self._state == self.SKIP:
                if not self._skip():
                    return None
                continue
            if self._state == self.LITERAL:
                if not self._readLiteral():
                    return None
                continue
            line = self._takeLine()
            if line is None:
                return None
            if isinstance(line, LineTooLong):
                if self._state == self.DISCARD:
                    self._reset()
                    self._state = self.DISCARD
                return line
            if not self._parts:
                self._tag = _tagOf(line)
                self._command = _commandOf(line)
            self._commandSize += len(line)
            if self._commandSize > self.maxCommandSize:
                tag = self._tag
                self._reset()
                return LineTooLong(tag)
            m = _LITERAL_AT_END.search(line)
            if m is None:
                self._parts.append(line)
                parts = self._parts
                self._parts = []
                self._commandSize = 0
                self._tag = None
                self._command = b""
                return CommandReady(parts)
            self._parts.append(line[: m.start()])
            size = int(m.group(1))
            self._announced = LiteralAnnounced(self._tag, self._command, size, bool(m.group(2)))
            self._state = self.WAIT
            return self._announced

    def acceptLiteral(self, toFile: bool = False) -> None:
        """
        Read the announced literal (the owner sends the continuation
        request for a synchronising one).

        @param toFile: collect it in a temporary file (L{LiteralFile})
            rather than in memory (L{Literal}).
        """
        announced = self._announced
        assert announced is not None and self._state == self.WAIT
        self._announced = None
        size = announced.size
        if not toFile:
            self._commandSize += size
            if self._commandSize > self.maxCommandSize:
                raise ValueError("literal exceeds the command size limit; refuse it instead")
            self._literalSink = bytearray()
        else:
            self._literalSink = LiteralFile(
                tempfile.SpooledTemporaryFile(max_size=self.spoolMemory, mode="w+b"), size
            )
        self._literalRemaining = size
        self._state = self.LITERAL

    def rejectLiteral(self) -> None:
        """
        Refuse the announced literal.  A synchronising literal is never
        sent (the client waits for a continuation that does not come), so
        the command just ends; a non-synchronising one is read and thrown
        away with the rest of its command, and a L{LiteralSkipped} event
        follows once that is done.
        """
        announced = self._announced
        assert announced is not None and self._state == self.WAIT
        self._announced = None
        tag = self._tag
        self._reset()
        if announced.nonSync:
            self._literalRemaining = announced.size
            self._state = self.SKIP
            self._afterDiscard = LiteralSkipped(tag)

    def _readLiteral(self) -> bool:
        n = min(self._literalRemaining, len(self._buffer))
        if n:
            chunk = self._buffer[:n]
            del self._buffer[:n]
            if isinstance(self._literalSink, LiteralFile):
                self._literalSink.file.write(chunk)
            else:
                self._literalSink += chunk
            self._literalRemaining -= n
        if self._literalRemaining:
            return False
        sink = self._literalSink
        self._literalSink = None
        if isinstance(sink, LiteralFile):
            sink.file.seek(0)
            self._parts.append(sink)
        else:
            self._parts.append(Literal(bytes(sink)))
        self._state = self.LINE
        return True

    def nextLine(self) -> "Optional[Union[bytes, LineTooLong]]":
        """
        A bare line (continuation response: AUTHENTICATE data, IDLE's
        C{DONE}); L{LineTooLong} when over the limit (the rest of it is
        then discarded), L{None} when more octets are needed.
        """
        while self._state == self.DISCARD:
            if not self._discard():
                return None
        line = self._takeLine()
        if isinstance(line, LineTooLong):
            line.tag = None
        return line


# ---------------------------------------------------------------------------
# Tokens

_ATOM = re.compile(rb'(?:[^\x00-\x20\x7f()"{\[\]]|\[[^\]\r\n]*\])+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')


def tokenize(parts: List[Any]) -> List[Token]:
    """
    Tokens of a command's parts (see L{CommandReady}).

    @return: the top-level tokens: L{Atom}, L{QuotedString}, L{Literal},
        L{LiteralFile} and nested lists.
    @raise ParseError: unbalanced parentheses, an unterminated or badly
        escaped quoted string, an unexpected character.
    """
    stack: List[List[Token]] = [[]]
    for part in parts:
        if isinstance(part, (Literal, LiteralFile)):
            stack[-1].append(part)
            continue
        text = bytes(part)
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == 0x20:
                i += 1
            elif c == 0x28:  # (
                new: List[Token] = []
                stack[-1].append(new)
                stack.append(new)
                i += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("Unbalanced parenthesis")
                stack.pop()
                i += 1
            elif c == 0x22:  # "
                m = _QUOTED.match(text, i)
                if m is None:
                    raise ParseError("Malformed quoted string")
                stack[-1].append(QuotedString(_UNESCAPE.sub(rb"\1", m.group(1))))
                i = m.end()
            else:
                m = _ATOM.match(text, i)
                if m is None:
                    raise ParseError(f"Unexpected character {chr(c)!r}")
                stack[-1].append(Atom(m.group(0)))
                i = m.end()
    if len(stack) != 1:
        raise ParseError("Unbalanced parenthesis")
    return stack[0]


# ---------------------------------------------------------------------------
# Typed arguments

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE_TIME = re.compile(
    rb"^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)


def parseDateTime(text: bytes) -> float:
    """
    An IMAP C{date-time} (C{"17-Jul-1996 02:44:25 -0700"}) as a POSIX
    timestamp.

    @raise ParseError: when malformed or out of range.
    """
    m = _DATE_TIME.match(text)
    if m is None:
        raise ParseError("Invalid date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = [x.lower() for x in _MONTHS].index(mon.decode().lower()) + 1
    except ValueError:
        raise ParseError("Invalid month in date-time")
    d, y, H, M, S = int(day), int(year), int(hh), int(mm), int(ss)
    if not (1 <= d <= calendar.monthrange(y, month)[1] if 1 <= y <= 9999 else False):
        raise ParseError("Invalid day in date-time")
    if H > 23 or M > 59 or S > 60 or int(zm) > 59:
        raise ParseError("Invalid time in date-time")
    offset = (int(zh) * 3600 + int(zm) * 60) * (1 if sign == b"+" else -1)
    return float(calendar.timegm((y, month, d, H, M, S, 0, 0, 0)) - offset)


def formatDateTime(timestamp: float) -> bytes:
    """
    A POSIX timestamp as an IMAP quoted C{date-time} in UTC.
    """
    import time

    t = time.gmtime(int(timestamp))
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )


@dataclass(frozen=True)
class BodySection:
    """
    A C{BODY[section]<partial>} fetch attribute.

    @ivar peek: C{BODY.PEEK} (does not set \\Seen).
    @ivar part: part numbers, C{()} for the whole message.
    @ivar kind: C{""}, C{"HEADER"}, C{"HEADER.FIELDS"},
        C{"HEADER.FIELDS.NOT"}, C{"TEXT"} or C{"MIME"}.
    @ivar fields: header names for the C{HEADER.FIELDS} kinds.
    @ivar partial: C{(origin, length)} or L{None}.
    @ivar responseName: the name the answer carries (for RFC822,
        RFC822.HEADER and RFC822.TEXT, those names).
    """

    peek: bool
    part: Tuple[int, ...]
    kind: str
    fields: Tuple[str, ...]
    partial: Optional[Tuple[int, int]]
    responseName: bytes


@dataclass(frozen=True)
class FetchAttribute:
    """
    A simple fetch attribute: C{FLAGS}, C{INTERNALDATE}, C{RFC822.SIZE},
    C{UID}, C{ENVELOPE}, C{BODYSTRUCTURE}, C{BODY} (structure) or
    C{MODSEQ} (RFC 7162).
    """

    name: str


_SIMPLE = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "MODSEQ"}
_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_BODY_ATT = re.compile(
    rb"^(BODY|BODY\.PEEK)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?$", re.IGNORECASE
)
_SECTION = re.compile(
    rb"^((?:[1-9]\d{0,8})(?:\.[1-9]\d{0,8})*)?(?:(?:^|\.)(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME))?"
    rb"(?:[ ]?\((.*)\))?$",
    re.IGNORECASE | re.DOTALL,
)


def _parseSection(text: bytes) -> Tuple[Tuple[int, ...], str, Tuple[str, ...]]:
    m = _SECTION.match(text)
    if m is None:
        raise ParseError("Invalid section specification")
    numbers, kind, fieldList = m.groups()
    part = tuple(int(x) for x in numbers.split(b".")) if numbers else ()
    kindStr = kind.decode("ascii").upper() if kind else ""
    if kindStr == "MIME" and not part:
        raise ParseError("MIME section needs a part number")
    fields: Tuple[str, ...] = ()
    if kindStr.startswith("HEADER.FIELDS"):
        if fieldList is None:
            raise ParseError("HEADER.FIELDS needs a list of header names")
        tokens = tokenize([fieldList])
        names = [t for t in tokens if isinstance(t, bytes)]
        if not tokens or len(names) != len(tokens):
            raise ParseError("Invalid header field list")
        try:
            fields = tuple(bytes(t).decode("ascii") for t in names)
        except UnicodeDecodeError:
            raise ParseError("Header field names must be ASCII")
        for f in fields:
            if not f or any(ord(ch) <= 32 or ord(ch) > 126 or ch == ":" for ch in f):
                raise ParseError("Invalid header field name")
    elif fieldList is not None:
        raise ParseError("Invalid section specification")
    return part, kindStr, fields


def _sectionText(part: Tuple[int, ...], kind: str, fields: Tuple[str, ...]) -> bytes:
    text = ".".join([str(p) for p in part] + ([kind] if kind else []))
    if fields:
        text += " (" + " ".join(fields) + ")"
    return text.encode("ascii")


def _fetchAttribute(token: Token) -> List[Union[FetchAttribute, BodySection]]:
    if not isinstance(token, Atom):
        raise ParseError("Invalid fetch attribute")
    upper = bytes(token).upper()
    name = upper.decode("ascii", "replace")
    if name in _SIMPLE:
        return [FetchAttribute(name)]
    if name == "RFC822":
        return [BodySection(False, (), "", (), None, b"RFC822")]
    if name == "RFC822.HEADER":
        return [BodySection(True, (), "HEADER", (), None, b"RFC822.HEADER")]
    if name == "RFC822.TEXT":
        return [BodySection(False, (), "TEXT", (), None, b"RFC822.TEXT")]
    m = _BODY_ATT.match(bytes(token))
    if m is None:
        raise ParseError(f"Unknown fetch attribute {name}")
    peek = m.group(1).upper() == b"BODY.PEEK"
    part, kind, fields = _parseSection(m.group(2))
    partial = None
    if m.group(3) is not None:
        length = int(m.group(4))
        if length == 0:
            raise ParseError("Partial length must not be zero")
        partial = (int(m.group(3)), length)
    responseName = b"BODY[" + _sectionText(part, kind, fields) + b"]"
    if partial is not None:
        responseName += b"<%d>" % (partial[0],)
    return [BodySection(peek, part, kind, fields, partial, responseName)]


def parseFetchAttributes(tokens: List[Token]) -> List[Union[FetchAttribute, BodySection]]:
    """
    The attributes of a FETCH: a macro (C{ALL}, C{FAST}, C{FULL}), one
    attribute, or a parenthesised list of attributes.

    @param tokens: the tokens after the sequence set.
    @raise ParseError: anything else.
    """
    if len(tokens) != 1:
        raise ParseError("FETCH takes one attribute or a parenthesised list")
    token = tokens[0]
    if isinstance(token, list):
        if not token:
            raise ParseError("Empty fetch attribute list")
        result: List[Union[FetchAttribute, BodySection]] = []
        for t in token:
            result.extend(_fetchAttribute(t))
        return result
    if isinstance(token, Atom) and bytes(token).upper().decode("ascii", "replace") in _MACROS:
        return [FetchAttribute(n) for n in _MACROS[bytes(token).upper().decode()]]
    return _fetchAttribute(token)


class Arguments:
    """
    A cursor over a command's tokens that reads typed arguments.

    Every reader raises L{ParseError} with a message fit for C{BAD}.
    """

    def __init__(self, tokens: List[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def __len__(self) -> int:
        return len(self.tokens) - self.pos

    def peek(self) -> Optional[Token]:
        """
        The next token without consuming it (L{None} at the end).
        """
        if self.pos < len(self.tokens):
            return self.tokens[self.pos]
        return None

    def rest(self) -> List[Token]:
        """
        Consume and return all remaining tokens.
        """
        rest = self.tokens[self.pos:]
        self.pos = len(self.tokens)
        return rest

    def _take(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError(f"Missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def end(self) -> None:
        """
        Require that no argument is left.
        """
        if self.pos < len(self.tokens):
            raise ParseError("Too many arguments")

    def atom(self, what: str = "atom") -> bytes:
        """
        An atom, as bytes.
        """
        token = self._take(what)
        if not isinstance(token, Atom):
            raise ParseError(f"Expected {what}")
        return bytes(token)

    def astring(self, what: str = "string") -> bytes:
        """
        An atom, quoted string or in-memory literal, as bytes.
        """
        token = self._take(what)
        if isinstance(token, (Atom, QuotedString, Literal)):
            return bytes(token)
        raise ParseError(f"Expected {what}")

    def string(self, what: str = "string") -> bytes:
        """
        A quoted string or literal (not an atom).
        """
        token = self._take(what)
        if isinstance(token, (QuotedString, Literal)):
            return bytes(token)
        raise ParseError(f"Expected {what}")

    def listMailbox(self) -> bytes:
        """
        A C{list-mailbox} (LIST/LSUB pattern): atom with wildcards or
        string.
        """
        return self.astring("mailbox pattern")

    def parenList(self, what: str = "list") -> list:
        """
        A parenthesised list.
        """
        token = self._take(what)
        if not isinstance(token, list):
            raise ParseError(f"Expected {what}")
        return token

    def flagList(self) -> List[str]:
        """
        A parenthesised flag list, as str flags (C{\\Recent} refused).
        """
        return flagsFromTokens(self.parenList("flag list"))

    def sequenceSet(self) -> SequenceSet:
        """
        A sequence set.
        """
        text = self.atom("sequence set")
        try:
            return parseSequenceSet(text)
        except SequenceSetError as e:
            raise ParseError(f"Invalid sequence set: {e}")

    def literalMessage(self) -> Union[bytes, LiteralFile]:
        """
        A message literal (APPEND): L{Literal} bytes or a L{LiteralFile}.
        """
        token = self._take("message literal")
        if isinstance(token, (Literal, LiteralFile)):
            return token
        if isinstance(token, QuotedString):
            return bytes(token)
        raise ParseError("Expected a message literal")


_FLAG_ATOM = re.compile(rb"^\\?[\x21\x23\x24\x26\x27\x2b-\x5a\x5e-\x7a\x7c\x7e]+$")
_SYSTEM = {b"\\seen", b"\\answered", b"\\flagged", b"\\deleted", b"\\draft"}


def flagsFromTokens(tokens: List[Token]) -> List[str]:
    """
    Flags from a flag list's tokens (or bare flags after STORE).

    @raise ParseError: a non-atom, C{\\Recent}, an unknown system flag or an
        invalid keyword.
    """
    flags = []
    for token in tokens:
        if not isinstance(token, Atom) or not _FLAG_ATOM.match(token):
            raise ParseError("Invalid flag")
        raw = bytes(token)
        if raw.startswith(b"\\") and raw.lower() not in _SYSTEM:
            if raw.lower() == b"\\recent":
                raise ParseError("\\Recent cannot be set")
            raise ParseError(f"Unknown system flag {raw.decode('ascii')}")
        flags.append(raw.decode("ascii"))
    return flags
