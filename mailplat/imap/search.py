"""
IMAP SEARCH (RFC 3501 6.4.4): the search program parsed once into a tree of
keys, then matched against each message.

Choices worth knowing:

  - BEFORE / ON / SINCE compare the calendar date of the internal date in
    UTC (Dovecot uses the server's local zone; UTC gives every node of a
    cluster the same answer).  SENTBEFORE / SENTON / SENTSINCE use the
    date of the Date: field in that field's own zone; a message without a
    usable Date: field matches none of them.
  - String keys match case-insensitively (Unicode case folding) as
    substrings of the RFC 2047-decoded header values or the decoded body
    text (see L{mailplat.imap.structure.ParsedMessage}).
  - The search strings are decoded from the CHARSET given (any text codec
    Python knows).  With the default US-ASCII, 8-bit strings are read as
    UTF-8, since that is what clients that omit CHARSET send.
  - TEXT and BODY may be answered from a full-text index
    (L{mailplat.imap.index}) instead of each message: L{searchText} is
    the text such an index holds (the very text the scan looks in), the
    query's L{textKeys<SearchQuery.textKeys>} are the keys it can answer,
    and L{SearchContext.texts} carries its answers.
"""

import abc
import datetime
import re
from dataclasses import dataclass
from typing import Any, Callable, Container, Dict, List, Optional, Tuple, Union, cast

from mailplat.imap.sequence import SequenceSet, SequenceSetError, parseSequenceSet
from mailplat.imap.structure import ParsedMessage, decodeHeaderText, fieldText, lookupCharset
from mailplat.interfaces import IMessageInfo

class SearchSyntaxError(ValueError):
    """
    The search program is malformed; the server answers BAD with this
    message.
    """


class BadCharset(ValueError):
    """
    The CHARSET is not supported; the server answers
    C{NO [BADCHARSET (UTF-8 US-ASCII)]}.
    """


class Undecoded(tuple):
    """
    A header field's values as the octets after the colon of each field
    (L{headerFieldOctets<mailplat.imap.structure.headerFieldOctets>}): a
    column filled for fields nobody searched yet keeps these, and the
    first search that looks at one unfolds, decodes and folds it
    (L{fieldText<mailplat.imap.structure.fieldText>}, L{foldValues}) and
    puts that in its place.
    """

    __slots__ = ()


#: A header field's values in a message, decoded and case-folded: one
#: C{str} for the usual one field, else a tuple (empty when absent); or,
#: not decoded yet, the octets after the colon: C{bytes} for one field,
#: L{Undecoded} for several.
FoldedValues = Union[str, Tuple[str, ...], bytes]


def foldValues(values: List[str]) -> FoldedValues:
    """
    The L{FoldedValues} of a field's decoded values.
    """
    if len(values) == 1:
        return values[0].casefold()
    if not values:
        return ()
    return tuple([v.casefold() for v in values])


class SearchContext:
    """
    What a search program is matched against: one message of the selected
    mailbox.

    @ivar seq: the message sequence number.
    @ivar uid: its UID.
    @ivar info: its L{IMessageInfo}.
    @ivar recent: whether it is \\Recent in this session.
    @ivar maxSeq: the number of messages (what C{*} means in a sequence set).
    @ivar maxUid: the highest UID in the mailbox (C{*} in a UID set).
    @ivar headers: when given, returns the decoded values of a top-level
        header field (lower-case name) from the message's cached summary,
        or L{None} when the summary does not hold that field; header keys
        ask it first and parse the message only when it cannot answer.
    @ivar texts: the answers of a full-text index, by TEXT/BODY key: the
        UIDs each matches.
    @ivar columns: when given, the L{FoldedValues} of header fields by
        lower-case name, then by UID, for every message searched: header
        keys look there before anything else.
    """

    __slots__ = ("seq", "uid", "info", "recent", "maxSeq", "maxUid", "headers", "texts", "columns", "_loader", "_parsed")

    def __init__(
        self,
        seq: int,
        uid: int,
        info: IMessageInfo,
        recent: bool,
        maxSeq: int,
        maxUid: int,
        message: Optional[Callable[[], ParsedMessage]] = None,
        headers: Optional[Callable[[str], Optional[List[str]]]] = None,
        texts: Optional[Dict[Any, Container[int]]] = None,
        columns: Optional[Dict[str, Dict[int, FoldedValues]]] = None,
    ) -> None:
        """
        @param message: returns the parsed message; only called when the
            query L{needs it<SearchQuery.needsMessage>}, and at most once
            (L{message} keeps the result).
        """
        self.seq = seq
        self.uid = uid
        self.info = info
        self.recent = recent
        self.maxSeq = maxSeq
        self.maxUid = maxUid
        self.headers = headers
        self.texts = texts
        self.columns = columns
        self._loader = message
        self._parsed: Optional[ParsedMessage] = None

    def message(self) -> ParsedMessage:
        """
        The parsed message, loaded at the first call.
        """
        if self._parsed is None:
            if self._loader is None:
                raise ValueError("this search needs the message but no loader was given")
            self._parsed = self._loader()
        return self._parsed


class _Key(abc.ABC):
    """
    One node of a search program.
    """

    needsMessage = False
    # Needs more of the message than its decoded header fields.
    needsText = False
    usesModseq = False

    @abc.abstractmethod
    def matches(self, ctx: SearchContext) -> bool:
        """
        Whether the message of C{ctx} satisfies this key.
        """


class _All(_Key):
    def matches(self, ctx: SearchContext) -> bool:
        return True


class _Flag(_Key):
    def __init__(self, flag: str, present: bool) -> None:
        self.flag = flag.lower()
        self.present = present

    def matches(self, ctx: SearchContext) -> bool:
        has = any(f.lower() == self.flag for f in ctx.info.flags)
        return has == self.present


class _Recent(_Key):
    def __init__(self, recent: bool) -> None:
        self.recent = recent

    def matches(self, ctx: SearchContext) -> bool:
        return ctx.recent == self.recent


class _New(_Key):
    def matches(self, ctx: SearchContext) -> bool:
        return ctx.recent and "\\seen" not in {f.lower() for f in ctx.info.flags}


class _Size(_Key):
    def __init__(self, limit: int, larger: bool) -> None:
        self.limit = limit
        self.larger = larger

    def matches(self, ctx: SearchContext) -> bool:
        if self.larger:
            return ctx.info.size > self.limit
        return ctx.info.size < self.limit


class _Sequence(_Key):
    def __init__(self, sequence: SequenceSet, uid: bool) -> None:
        self.sequence = sequence
        self.uid = uid

    def matches(self, ctx: SearchContext) -> bool:
        if self.uid:
            return self.sequence.contains(ctx.uid, ctx.maxUid)
        return self.sequence.contains(ctx.seq, ctx.maxSeq)


class _InternalDate(_Key):
    def __init__(self, date: datetime.date, op: str) -> None:
        self.date = date
        self.op = op

    def matches(self, ctx: SearchContext) -> bool:
        try:
            day = datetime.datetime.fromtimestamp(ctx.info.internalDate, datetime.timezone.utc).date()
        except (OverflowError, OSError, ValueError):
            return False
        return _compare(day, self.date, self.op)


class _SentDate(_Key):
    needsMessage = True
    needsText = True

    def __init__(self, date: datetime.date, op: str) -> None:
        self.date = date
        self.op = op

    def matches(self, ctx: SearchContext) -> bool:
        day = ctx.message().sentDate()
        if day is None:
            return False
        return _compare(day, self.date, self.op)


def _compare(day: datetime.date, date: datetime.date, op: str) -> bool:
    if op == "before":
        return day < date
    if op == "on":
        return day == date
    return day >= date


class _Header(_Key):
    needsMessage = True

    def __init__(self, name: str, needle: str) -> None:
        self.name = name
        self.needle = needle.casefold()

    def matches(self, ctx: SearchContext) -> bool:
        columns = ctx.columns
        if columns is not None:
            column = columns.get(self.name)
            if column is not None:
                folded = column.get(ctx.uid)
                if folded is not None:
                    if folded.__class__ is bytes:
                        folded = column[ctx.uid] = foldValues([fieldText(folded)])
                    elif folded.__class__ is Undecoded:
                        folded = column[ctx.uid] = foldValues([fieldText(v) for v in folded])
                    if folded.__class__ is str:
                        return self.needle in folded
                    return any(self.needle in v for v in cast(Tuple[str, ...], folded))
        values = ctx.headers(self.name) if ctx.headers is not None else None
        if values is None:
            values = ctx.message().headerValues(self.name)
        return any(self.needle in v.casefold() for v in values)


class _Body(_Key):
    needsMessage = True
    needsText = True

    def __init__(self, needle: str, text: bool) -> None:
        self.needle = needle
        self.text = text
        self.folded = needle.casefold()

    @property
    def indexable(self) -> bool:
        """
        Whether a trigram index can answer this key: a needle of three
        characters or more (after case folding) that cannot span two
        body parts of L{searchText}.
        """
        return len(self.folded) >= 3 and PART_SEPARATOR not in self.folded

    def matches(self, ctx: SearchContext) -> bool:
        if ctx.texts is not None:
            hits = ctx.texts.get(self)
            if hits is not None:
                return ctx.uid in hits
        if self.text:
            return ctx.message().textContains(self.needle)
        return ctx.message().bodyContains(self.needle)


class _ModSeq(_Key):
    """
    C{MODSEQ [entry-name entry-type] n} (RFC 7162 3.1.5): messages whose
    modseq is at least C{n}.  The store keeps one modseq per message, so
    the entry name and type are accepted and do not narrow the test.
    """

    usesModseq = True

    def __init__(self, modseq: int) -> None:
        self.modseq = modseq

    def matches(self, ctx: SearchContext) -> bool:
        return ctx.info.modseq >= self.modseq


class _Not(_Key):
    def __init__(self, key: _Key) -> None:
        self.key = key
        self.needsMessage = key.needsMessage
        self.needsText = key.needsText
        self.usesModseq = key.usesModseq

    def matches(self, ctx: SearchContext) -> bool:
        return not self.key.matches(ctx)


class _Or(_Key):
    def __init__(self, left: _Key, right: _Key) -> None:
        self.left = left
        self.right = right
        self.needsMessage = left.needsMessage or right.needsMessage
        self.needsText = left.needsText or right.needsText
        self.usesModseq = left.usesModseq or right.usesModseq

    def matches(self, ctx: SearchContext) -> bool:
        # Cheap (flag) keys first so messages are opened only when needed.
        first, second = (self.right, self.left) if self.left.needsMessage else (self.left, self.right)
        return first.matches(ctx) or second.matches(ctx)


class _And(_Key):
    def __init__(self, keys: List[_Key]) -> None:
        # Keys that need no message first: they may spare opening it.
        self.keys = sorted(keys, key=lambda k: k.needsMessage)
        self.needsMessage = any(k.needsMessage for k in keys)
        self.needsText = any(k.needsText for k in keys)
        self.usesModseq = any(k.usesModseq for k in keys)

    def matches(self, ctx: SearchContext) -> bool:
        return all(k.matches(ctx) for k in self.keys)


class SearchQuery:
    """
    A parsed search program.

    @ivar needsMessage: whether matching needs the message's text or
        headers (so the server opens and parses messages only then).
    @ivar needsText: whether it needs more than the decoded header fields
        (BODY, TEXT, SENT*): without it a cached summary's
        L{headers<SearchContext.headers>} may answer.
    """

    def __init__(self, root: _Key) -> None:
        self._root = root
        self.needsMessage: bool = root.needsMessage
        self.needsText: bool = root.needsText
        self.usesModseq: bool = root.usesModseq

    def matches(self, ctx: SearchContext) -> bool:
        """
        Whether the message described by C{ctx} satisfies the program.
        """
        return self._root.matches(ctx)

    def textKeys(self) -> List["_Body"]:
        """
        The TEXT and BODY keys of the program a full-text index can answer
        (see L{_Body.indexable}), each once, in program order.
        """
        out: List[_Body] = []
        _walk(self._root, lambda k: out.append(k) if isinstance(k, _Body) and k.indexable else None)
        return out

    def headerFields(self) -> List[str]:
        """
        The lower-case names of the header fields the program's header
        keys (FROM, TO, CC, BCC, SUBJECT, HEADER) look at, each once.
        """
        out: List[str] = []
        _walk(self._root, lambda k: out.append(k.name) if isinstance(k, _Header) and k.name not in out else None)
        return out

    def needsGiven(self, answered: Container[Any]) -> Tuple[bool, bool]:
        """
        C{(needsMessage, needsText)} of the program once the keys in
        C{answered} (from L{textKeys}) are answered by an index.
        """
        return _needs(self._root, answered)


def _walk(key: _Key, visit: Callable[[_Key], Any]) -> None:
    visit(key)
    if isinstance(key, _Not):
        _walk(key.key, visit)
    elif isinstance(key, _Or):
        _walk(key.left, visit)
        _walk(key.right, visit)
    elif isinstance(key, _And):
        for k in key.keys:
            _walk(k, visit)


def _needs(key: _Key, answered: Container[Any]) -> Tuple[bool, bool]:
    if isinstance(key, _Body) and key in answered:
        return False, False
    if isinstance(key, _Not):
        return _needs(key.key, answered)
    children: List[_Key] = []
    if isinstance(key, _Or):
        children = [key.left, key.right]
    elif isinstance(key, _And):
        children = key.keys
    else:
        return key.needsMessage, key.needsText
    message = text = False
    for child in children:
        m, t = _needs(child, answered)
        message, text = message or m, text or t
    return message, text


#: Joins the decoded body parts in L{SearchText.body}: a needle holding it
#: is never answered from an index (it could match across two parts).
PART_SEPARATOR = "\x1e"


@dataclass(frozen=True)
class SearchText:
    """
    What TEXT and BODY look in, case-folded: exactly the text
    L{ParsedMessage.textContains} and L{ParsedMessage.bodyContains} search.

    @ivar head: the decoded top-level header fields, C{"name: value"}
        lines joined by C{"\\n"}.
    @ivar body: the decoded text of each text/* part, joined by
        L{PART_SEPARATOR}.
    """

    head: str
    body: str

    def contains(self, needle: str, text: bool) -> bool:
        """
        Whether C{needle} (case-folded, without L{PART_SEPARATOR}) is in
        the body, or with C{text} in the header or the body.
        """
        return (text and needle in self.head) or needle in self.body


def searchText(parsed: ParsedMessage) -> SearchText:
    """
    The L{SearchText} of a parsed message, decoded as the scan decodes it
    (transfer encoding, charset, RFC 2047 words).
    """
    lines = []
    for f in parsed._root.fields:
        lines.append(f.name + ": " + decodeHeaderText(f.value().decode("utf-8", errors="replace")))
    return SearchText("\n".join(lines).casefold(), PART_SEPARATOR.join(parsed._bodyTexts()))


_MONTHS = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DATE = re.compile(rb"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS = {
    "BEFORE": (False, "before"),
    "ON": (False, "on"),
    "SINCE": (False, "since"),
    "SENTBEFORE": (True, "before"),
    "SENTON": (True, "on"),
    "SENTSINCE": (True, "since"),
}


class _Parser:
    def __init__(self, codec: str, lenient: bool) -> None:
        self.codec = codec
        self.lenient = lenient

    def _arg(self, tokens: List[Any], pos: int, key: str, what: str) -> bytes:
        if pos >= len(tokens):
            raise SearchSyntaxError(f"{key} needs {what}")
        token = tokens[pos]
        if not isinstance(token, (bytes, bytearray)):
            raise SearchSyntaxError(f"{key} needs {what}, not a parenthesised list")
        return bytes(token)

    def _string(self, raw: bytes, key: str) -> str:
        try:
            return raw.decode(self.codec)
        except UnicodeDecodeError:
            if self.lenient:
                return raw.decode("utf-8", errors="replace")
            raise SearchSyntaxError(f"the {key} string is not valid in the given charset")

    def _date(self, raw: bytes, key: str) -> datetime.date:
        match = _DATE.match(raw.strip(b'"'))
        if match is None:
            raise SearchSyntaxError(f"{key} needs a date such as 1-Feb-1994, not {raw.decode('latin-1')!r}")
        month = _MONTHS.get(match.group(2).decode("ascii").lower())
        try:
            if month is None:
                raise ValueError("month")
            return datetime.date(int(match.group(3)), month, int(match.group(1)))
        except ValueError:
            raise SearchSyntaxError(f"{key}: {raw.decode('latin-1')!r} is not a valid date")

    def keys(self, tokens: List[Any]) -> _Key:
        """
        Parse a whole list of keys (ANDed together).
        """
        if not tokens:
            raise SearchSyntaxError("empty search program")
        keys = []
        pos = 0
        while pos < len(tokens):
            key, pos = self.key(tokens, pos)
            keys.append(key)
        return keys[0] if len(keys) == 1 else _And(keys)

    def key(self, tokens: List[Any], pos: int) -> "tuple[_Key, int]":
        """
        Parse the key at C{tokens[pos]}; return it and the next position.
        """
        if pos >= len(tokens):
            raise SearchSyntaxError("missing search key")
        token = tokens[pos]
        if isinstance(token, list):
            if not token:
                raise SearchSyntaxError("empty parenthesised search key list")
            return self.keys(token), pos + 1
        if not isinstance(token, (bytes, bytearray)):
            raise SearchSyntaxError("a search key must be an atom or a parenthesised list")
        raw = bytes(token)
        pos += 1
        if raw[:1].isdigit() or raw[:1] == b"*":
            try:
                return _Sequence(parseSequenceSet(raw), False), pos
            except SequenceSetError as e:
                raise SearchSyntaxError(str(e))
        name = raw.decode("latin-1").upper()
        if name == "ALL":
            return _All(), pos
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return _Flag(flag, present), pos
        if name in ("KEYWORD", "UNKEYWORD"):
            keyword = self._arg(tokens, pos, name, "a keyword")
            if not keyword:
                raise SearchSyntaxError(f"{name} needs a keyword")
            return _Flag(keyword.decode("utf-8", errors="replace"), name == "KEYWORD"), pos + 1
        if name == "NEW":
            return _New(), pos
        if name == "OLD":
            return _Recent(False), pos
        if name == "RECENT":
            return _Recent(True), pos
        if name in ("LARGER", "SMALLER"):
            number = self._arg(tokens, pos, name, "a number")
            if not number.isdigit():
                raise SearchSyntaxError(f"{name} needs a number, not {number.decode('latin-1')!r}")
            return _Size(int(number), name == "LARGER"), pos + 1
        if name in _HEADER_KEYS:
            needle = self._string(self._arg(tokens, pos, name, "a string"), name)
            return _Header(_HEADER_KEYS[name], needle), pos + 1
        if name == "HEADER":
            field = self._arg(tokens, pos, name, "a field name and a string")
            needle = self._string(self._arg(tokens, pos + 1, name, "a string after the field name"), name)
            if not field:
                raise SearchSyntaxError("HEADER needs a field name")
            return _Header(field.decode("latin-1").lower(), needle), pos + 2
        if name in ("BODY", "TEXT"):
            needle = self._string(self._arg(tokens, pos, name, "a string"), name)
            return _Body(needle, name == "TEXT"), pos + 1
        if name in _DATE_KEYS:
            sent, op = _DATE_KEYS[name]
            date = self._date(self._arg(tokens, pos, name, "a date"), name)
            return (_SentDate(date, op) if sent else _InternalDate(date, op)), pos + 1
        if name == "UID":
            text = self._arg(tokens, pos, name, "a UID set")
            try:
                return _Sequence(parseSequenceSet(text), True), pos + 1
            except SequenceSetError as e:
                raise SearchSyntaxError(f"UID: {e}")
        if name == "MODSEQ":
            first = self._arg(tokens, pos, name, "a mod-sequence")
            if not first.isdigit():
                # entry-name (a quoted "/flags/..." name) and entry-type.
                kind = self._arg(tokens, pos + 1, name, "an entry type").lower()
                if kind not in (b"priv", b"shared", b"all"):
                    raise SearchSyntaxError("MODSEQ entry type must be priv, shared or all")
                pos += 2
                first = self._arg(tokens, pos, name, "a mod-sequence")
            if not first.isdigit() or len(first) > 20 or int(first) >= 2**63:
                raise SearchSyntaxError(f"MODSEQ needs a number, not {first.decode('latin-1')!r}")
            return _ModSeq(int(first)), pos + 1
        if name == "NOT":
            if pos >= len(tokens):
                raise SearchSyntaxError("NOT needs a search key")
            key, pos = self.key(tokens, pos)
            return _Not(key), pos
        if name == "OR":
            if pos >= len(tokens):
                raise SearchSyntaxError("OR needs two search keys")
            left, pos = self.key(tokens, pos)
            if pos >= len(tokens):
                raise SearchSyntaxError("OR needs two search keys")
            right, pos = self.key(tokens, pos)
            return _Or(left, right), pos
        raise SearchSyntaxError(f"unknown search key {raw.decode('latin-1')!r}")


def parseSearch(args: list, charset: Union[str, bytes] = "US-ASCII") -> SearchQuery:
    """
    Parse a search program.

    @param args: the tokens after C{SEARCH} (and after C{CHARSET x}): each
        C{bytes} (atom, quoted string or literal contents) or a C{list} for
        a parenthesised group.  Keys are case-insensitive.
    @param charset: the charset of the search strings.
    @raise BadCharset: C{charset} is not a text encoding Python knows.
    @raise SearchSyntaxError: the program is malformed (missing
        arguments, unknown keys, bad dates or sets).
    """
    if isinstance(charset, (bytes, bytearray)):
        charset = bytes(charset).decode("ascii", errors="replace")
    codec = lookupCharset(charset)
    if codec is None:
        raise BadCharset(f"unsupported charset {charset!r}")
    lenient = codec == "ascii"
    if lenient:
        codec = "utf-8"
    return SearchQuery(_Parser(codec, lenient).keys(list(args)))
