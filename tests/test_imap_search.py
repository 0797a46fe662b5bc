"""
Tests for L{mailplat.imap.search}: every RFC 3501 search key, nesting,
charsets, errors, and when the message is opened.
"""

import base64
import calendar
from typing import Iterable, List, Optional

from twisted.trial import unittest

from mailplat.imap.search import (
    BadCharset,
    SearchContext,
    SearchSyntaxError,
    parseSearch,
)
from mailplat.imap.structure import parseMessage
from mailplat.mailbox import MessageInfo


def crlf(text: str) -> bytes:
    """
    C{text} with LF line ends turned into CRLF, as UTF-8.
    """
    return text.replace("\n", "\r\n").encode("utf-8")


MESSAGE = crlf(
    "From: Alice Example <alice@example.com>\n"
    "To: Bob <bob@example.org>, carol@example.net\n"
    "Cc: dave@example.com\n"
    "Bcc: eve@example.com\n"
    "Subject: Quarterly report\n"
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\n"
    "X-Priority: 1\n"
    "X-Empty:\n"
    "\n"
    "The numbers look good.\n"
)

KOI8_SUBJECT = b"Subject: =?koi8-r?B?8NLJ18XU?= world\r\nFrom: x@example.com\r\n\r\nbody\r\n"

CP1251_BODY = (
    b"Subject: cyrillic body\r\n"
    b"Content-Type: text/plain; charset=windows-1251\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("Здравствуйте, дорогой друг".encode("windows-1251")).replace(b"\n", b"\r\n")
)

QP_BODY = crlf(
    "Subject: qp\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Cr=C3=A8me br=C3=BBl=C3=A9e for every=\n"
    "one\n"
)


def timestamp(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    """
    A POSIX timestamp for the given UTC time.
    """
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


class Loader:
    """
    A message loader that counts its calls.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def __call__(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        return parseMessage(self.data)


def context(
    data: bytes = MESSAGE,
    seq: int = 1,
    uid: int = 10,
    flags: Iterable[str] = (),
    internalDate: Optional[float] = None,
    size: Optional[int] = None,
    recent: bool = False,
    maxSeq: int = 5,
    maxUid: int = 50,
) -> SearchContext:
    """
    A search context for one message.
    """
    info = MessageInfo(
        uid=uid,
        flags=frozenset(flags),
        internalDate=timestamp(1994, 2, 7) if internalDate is None else internalDate,
        size=len(data) if size is None else size,
    )
    return SearchContext(seq, uid, info, recent, maxSeq, maxUid, Loader(data))


def tokens(*items: object) -> List[object]:
    """
    Search tokens: C{str} items become C{bytes}, lists stay lists.
    """
    out: List[object] = []
    for item in items:
        if isinstance(item, list):
            out.append(tokens(*item))
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            out.append(item)
    return out


class KeyTests(unittest.TestCase):
    """
    Each key of RFC 3501 6.4.4.
    """

    def match(self, ctx: SearchContext, *args: object, charset: str = "US-ASCII") -> bool:
        return parseSearch(tokens(*args), charset).matches(ctx)

    def test_all(self) -> None:
        self.assertTrue(self.match(context(), "ALL"))
        self.assertTrue(self.match(context(), "all"))

    def test_flags(self) -> None:
        cases = [
            ("ANSWERED", "UNANSWERED", "\\Answered"),
            ("DELETED", "UNDELETED", "\\Deleted"),
            ("DRAFT", "UNDRAFT", "\\Draft"),
            ("FLAGGED", "UNFLAGGED", "\\Flagged"),
            ("SEEN", "UNSEEN", "\\Seen"),
        ]
        for key, unkey, flag in cases:
            withFlag = context(flags=[flag])
            without = context(flags=["\\Seen" if flag != "\\Seen" else "\\Draft"])
            self.assertTrue(self.match(withFlag, key), key)
            self.assertFalse(self.match(without, key), key)
            self.assertFalse(self.match(withFlag, unkey), unkey)
            self.assertTrue(self.match(without, unkey), unkey)

    def test_keyword(self) -> None:
        ctx = context(flags=["$Forwarded", "\\Seen"])
        self.assertTrue(self.match(ctx, "KEYWORD", "$forwarded"))
        self.assertFalse(self.match(ctx, "KEYWORD", "$Junk"))
        self.assertFalse(self.match(ctx, "UNKEYWORD", "$FORWARDED"))
        self.assertTrue(self.match(ctx, "UNKEYWORD", "$Junk"))

    def test_recentNewOld(self) -> None:
        recentUnseen = context(recent=True)
        recentSeen = context(recent=True, flags=["\\Seen"])
        old = context(recent=False)
        self.assertTrue(self.match(recentUnseen, "RECENT"))
        self.assertFalse(self.match(old, "RECENT"))
        self.assertTrue(self.match(recentUnseen, "NEW"))
        self.assertFalse(self.match(recentSeen, "NEW"))
        self.assertFalse(self.match(old, "NEW"))
        self.assertTrue(self.match(old, "OLD"))
        self.assertFalse(self.match(recentSeen, "OLD"))

    def test_size(self) -> None:
        ctx = context(size=1000)
        self.assertTrue(self.match(ctx, "LARGER", "999"))
        self.assertFalse(self.match(ctx, "LARGER", "1000"))
        self.assertTrue(self.match(ctx, "SMALLER", "1001"))
        self.assertFalse(self.match(ctx, "SMALLER", "1000"))

    def test_sequenceSet(self) -> None:
        self.assertTrue(self.match(context(seq=3), "1:3"))
        self.assertFalse(self.match(context(seq=4), "1:3,5"))
        self.assertTrue(self.match(context(seq=5, maxSeq=5), "*"))
        self.assertFalse(self.match(context(seq=4, maxSeq=5), "*"))
        self.assertTrue(self.match(context(seq=4, maxSeq=5), "4:*"))

    def test_uid(self) -> None:
        self.assertTrue(self.match(context(uid=10), "UID", "5:10"))
        self.assertFalse(self.match(context(uid=11), "UID", "5:10"))
        self.assertTrue(self.match(context(uid=50, maxUid=50), "UID", "*"))
        self.assertTrue(self.match(context(uid=49, maxUid=50), "uid", "40:*"))

    def test_internalDate(self) -> None:
        """
        BEFORE / ON / SINCE use the internal date's UTC calendar day.
        """
        late = context(internalDate=timestamp(1994, 2, 7, 23, 30))
        self.assertTrue(self.match(late, "ON", "7-Feb-1994"))
        self.assertTrue(self.match(late, "ON", "07-feb-1994"))
        self.assertFalse(self.match(late, "ON", "8-Feb-1994"))
        self.assertTrue(self.match(late, "BEFORE", "8-Feb-1994"))
        self.assertFalse(self.match(late, "BEFORE", "7-Feb-1994"))
        self.assertTrue(self.match(late, "SINCE", "7-Feb-1994"))
        self.assertFalse(self.match(late, "SINCE", "8-Feb-1994"))
        # Quoted dates arrive with their quotes stripped by the parser, but
        # are accepted with them too.
        self.assertTrue(self.match(late, "ON", b'"7-Feb-1994"'))

    def test_sentDate(self) -> None:
        """
        SENT* use the Date: field's own day (21:52 -0800 is 7 Feb there).
        """
        ctx = context(internalDate=timestamp(2020, 1, 1))
        self.assertTrue(self.match(ctx, "SENTON", "7-Feb-1994"))
        self.assertFalse(self.match(ctx, "SENTON", "8-Feb-1994"))
        self.assertTrue(self.match(ctx, "SENTBEFORE", "8-Feb-1994"))
        self.assertFalse(self.match(ctx, "SENTBEFORE", "7-Feb-1994"))
        self.assertTrue(self.match(ctx, "SENTSINCE", "7-Feb-1994"))
        self.assertFalse(self.match(ctx, "SENTSINCE", "8-Feb-1994"))
        undated = context(b"Subject: none\r\n\r\n")
        for key in ("SENTON", "SENTBEFORE", "SENTSINCE"):
            self.assertFalse(self.match(undated, key, "7-Feb-1994"))

    def test_addressHeaders(self) -> None:
        ctx = context()
        self.assertTrue(self.match(ctx, "FROM", "alice"))
        self.assertTrue(self.match(ctx, "FROM", "ALICE EXAMPLE"))
        self.assertFalse(self.match(ctx, "FROM", "bob"))
        self.assertTrue(self.match(ctx, "TO", "carol@example.net"))
        self.assertTrue(self.match(ctx, "TO", "Bob"))
        self.assertTrue(self.match(ctx, "CC", "dave"))
        self.assertFalse(self.match(ctx, "CC", "eve"))
        self.assertTrue(self.match(ctx, "BCC", "eve"))

    def test_subject(self) -> None:
        self.assertTrue(self.match(context(), "SUBJECT", "quarterly"))
        self.assertTrue(self.match(context(), "SUBJECT", "ly rep"))
        self.assertFalse(self.match(context(), "SUBJECT", "annual"))
        self.assertTrue(self.match(context(), "SUBJECT", ""))

    def test_header(self) -> None:
        ctx = context()
        self.assertTrue(self.match(ctx, "HEADER", "X-Priority", "1"))
        self.assertFalse(self.match(ctx, "HEADER", "x-priority", "2"))
        self.assertTrue(self.match(ctx, "HEADER", "x-priority", ""))
        self.assertTrue(self.match(ctx, "HEADER", "X-Empty", ""))
        self.assertFalse(self.match(ctx, "HEADER", "X-Missing", ""))

    def test_body(self) -> None:
        ctx = context()
        self.assertTrue(self.match(ctx, "BODY", "NUMBERS"))
        self.assertFalse(self.match(ctx, "BODY", "quarterly"))

    def test_text(self) -> None:
        ctx = context()
        self.assertTrue(self.match(ctx, "TEXT", "numbers"))
        self.assertTrue(self.match(ctx, "TEXT", "quarterly"))
        self.assertTrue(self.match(ctx, "TEXT", "x-priority"))
        self.assertFalse(self.match(ctx, "TEXT", "absent"))


class CombinationTests(unittest.TestCase):
    """
    Implicit AND, parenthesised lists, OR and NOT, nesting.
    """

    def match(self, ctx: SearchContext, *args: object) -> bool:
        return parseSearch(tokens(*args)).matches(ctx)

    def test_and(self) -> None:
        ctx = context(flags=["\\Seen"])
        self.assertTrue(self.match(ctx, "SEEN", "FROM", "alice", "1"))
        self.assertFalse(self.match(ctx, "SEEN", "FROM", "alice", "2"))

    def test_parenthesised(self) -> None:
        ctx = context(flags=["\\Seen"])
        self.assertTrue(self.match(ctx, ["SEEN", "SUBJECT", "report"]))
        self.assertFalse(self.match(ctx, ["SEEN", ["UNSEEN"]]))

    def test_not(self) -> None:
        ctx = context(flags=["\\Seen"])
        self.assertFalse(self.match(ctx, "NOT", "SEEN"))
        self.assertTrue(self.match(ctx, "NOT", "NOT", "SEEN"))
        self.assertTrue(self.match(ctx, "NOT", ["SEEN", "DELETED"]))
        self.assertTrue(self.match(ctx, "NOT", "FROM", "mallory"))

    def test_or(self) -> None:
        ctx = context(flags=["\\Flagged"])
        self.assertTrue(self.match(ctx, "OR", "SEEN", "FLAGGED"))
        self.assertFalse(self.match(ctx, "OR", "SEEN", "DELETED"))
        self.assertTrue(self.match(ctx, "OR", "SUBJECT", "nothing", "FROM", "alice"))
        self.assertTrue(self.match(ctx, "OR", ["SEEN", "FLAGGED"], ["FLAGGED", "FROM", "alice"]))

    def test_nestedOr(self) -> None:
        ctx = context(uid=10, flags=["\\Answered"])
        self.assertTrue(self.match(ctx, "OR", "OR", "SEEN", "DELETED", "ANSWERED"))
        self.assertFalse(self.match(ctx, "OR", "OR", "SEEN", "DELETED", "NOT", "ANSWERED"))
        self.assertTrue(
            self.match(ctx, "NOT", "OR", "UID", "1:5", ["SUBJECT", "annual"], "UNDELETED", "TO", "bob")
        )

    def test_orConsumesExactlyTwo(self) -> None:
        ctx = context(flags=["\\Seen"])
        # (OR SEEN DELETED) AND FLAGGED
        self.assertFalse(self.match(ctx, "OR", "SEEN", "DELETED", "FLAGGED"))


class CharsetTests(unittest.TestCase):
    """
    CHARSET decoding of search strings and decoding of messages.
    """

    def test_koi8SubjectWithUtf8Search(self) -> None:
        query = parseSearch([b"SUBJECT", "привет".encode("utf-8")], "UTF-8")
        self.assertTrue(query.matches(context(KOI8_SUBJECT)))
        query = parseSearch([b"SUBJECT", "пока".encode("utf-8")], "utf-8")
        self.assertFalse(query.matches(context(KOI8_SUBJECT)))

    def test_koi8SearchString(self) -> None:
        query = parseSearch([b"SUBJECT", "ПРИВЕТ".encode("koi8-r")], "KOI8-R")
        self.assertTrue(query.matches(context(KOI8_SUBJECT)))

    def test_base64Windows1251Body(self) -> None:
        ctx = context(CP1251_BODY)
        self.assertTrue(parseSearch([b"BODY", "дорогой".encode("utf-8")], "UTF-8").matches(ctx))
        self.assertTrue(parseSearch([b"TEXT", "ДРУГ".encode("windows-1251")], "windows-1251").matches(ctx))
        self.assertTrue(parseSearch([b"BODY", "здравствуйте".encode("iso-8859-5")], "ISO-8859-5").matches(ctx))
        self.assertFalse(parseSearch([b"BODY", b"0JfQtA"], "UTF-8").matches(ctx))

    def test_quotedPrintable(self) -> None:
        ctx = context(QP_BODY)
        self.assertTrue(parseSearch([b"BODY", "crème brûlée".encode("utf-8")], "UTF-8").matches(ctx))
        self.assertTrue(parseSearch([b"BODY", b"everyone"]).matches(ctx))
        self.assertFalse(parseSearch([b"BODY", b"=C3"]).matches(ctx))

    def test_asciiDefaultAcceptsUtf8(self) -> None:
        """
        Clients that omit CHARSET and send UTF-8 are understood.
        """
        query = parseSearch([b"SUBJECT", "привет".encode("utf-8")])
        self.assertTrue(query.matches(context(KOI8_SUBJECT)))

    def test_badCharset(self) -> None:
        self.assertRaises(BadCharset, parseSearch, [b"ALL"], "X-NO-SUCH-CHARSET")
        self.assertRaises(BadCharset, parseSearch, [b"ALL"], "base64")
        self.assertRaises(BadCharset, parseSearch, [b"ALL"], "")

    def test_invalidBytesInCharset(self) -> None:
        self.assertRaises(SearchSyntaxError, parseSearch, [b"SUBJECT", b"\xff\xfe"], "UTF-8")

    def test_bytesCharsetName(self) -> None:
        query = parseSearch([b"SUBJECT", "мир".encode("koi8-r")], b"koi8-r")  # type: ignore[arg-type]
        self.assertFalse(query.matches(context()))


class SyntaxTests(unittest.TestCase):
    """
    Malformed programs raise L{SearchSyntaxError} with a helpful message.
    """

    def assertSyntaxError(self, *args: object) -> str:
        error = self.assertRaises(SearchSyntaxError, parseSearch, tokens(*args))
        return str(error)

    def test_empty(self) -> None:
        self.assertSyntaxError()
        self.assertSyntaxError([])

    def test_unknownKey(self) -> None:
        self.assertIn("FROBNICATE", self.assertSyntaxError("FROBNICATE"))

    def test_missingArguments(self) -> None:
        for key in ("SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT", "KEYWORD", "UNKEYWORD",
                    "LARGER", "SMALLER", "BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON",
                    "SENTSINCE", "UID", "NOT", "OR", "HEADER"):
            self.assertIn(key, self.assertSyntaxError(key))
        self.assertIn("OR", self.assertSyntaxError("OR", "SEEN"))
        self.assertIn("HEADER", self.assertSyntaxError("HEADER", "X-Priority"))

    def test_badArguments(self) -> None:
        self.assertIn("date", self.assertSyntaxError("SINCE", "yesterday"))
        self.assertIn("date", self.assertSyntaxError("ON", "31-Feb-2020"))
        self.assertIn("date", self.assertSyntaxError("ON", "1-Foo-2020"))
        self.assertIn("number", self.assertSyntaxError("LARGER", "big"))
        self.assertSyntaxError("UID", "1:x")
        self.assertSyntaxError("0:3")
        self.assertSyntaxError("SUBJECT", ["list"])
        self.assertSyntaxError("HEADER", "", "x")
        self.assertSyntaxError(object())


class LazinessTests(unittest.TestCase):
    """
    needsMessage, and the message is opened only when needed.
    """

    def test_needsMessage(self) -> None:
        flagOnly = ["SEEN", "UNSEEN", "ALL", "1:*", ["UID", "3", "NOT", "DELETED"], "OR", "NEW", "OLD",
                    "LARGER", "10", "BEFORE", "1-Jan-2000", "KEYWORD", "x"]
        self.assertFalse(parseSearch(tokens(*flagOnly)).needsMessage)
        for program in (["SUBJECT", "x"], ["NOT", "BODY", "x"], ["OR", "SEEN", "TEXT", "x"],
                        ["SENTON", "1-Jan-2000"], [["HEADER", "X", "y"]], ["FROM", "a"]):
            self.assertTrue(parseSearch(tokens(*program)).needsMessage, program)

    def test_flagOnlyNeverOpens(self) -> None:
        loader = Loader(MESSAGE)
        ctx = SearchContext(1, 1, MessageInfo(1, frozenset(), 0.0, 10), False, 1, 1, loader)
        parseSearch(tokens("UNSEEN", "SMALLER", "100", "NOT", "DELETED", "OR", "1", "UID", "*")).matches(ctx)
        self.assertEqual(loader.calls, 0)

    def test_cheapKeysFirst(self) -> None:
        """
        A failing flag key spares opening the message, whatever its place.
        """
        loader = Loader(MESSAGE)
        ctx = SearchContext(1, 1, MessageInfo(1, frozenset(), 0.0, 10), False, 1, 1, loader)
        self.assertFalse(parseSearch(tokens("SUBJECT", "report", "SEEN")).matches(ctx))
        self.assertEqual(loader.calls, 0)

    def test_openedOnce(self) -> None:
        loader = Loader(MESSAGE)
        ctx = SearchContext(1, 1, MessageInfo(1, frozenset(), 0.0, 10), False, 1, 1, loader)
        self.assertTrue(parseSearch(tokens("SUBJECT", "report", "BODY", "numbers", "FROM", "alice")).matches(ctx))
        self.assertEqual(loader.calls, 1)

    def test_noLoader(self) -> None:
        ctx = SearchContext(1, 1, MessageInfo(1, frozenset(), 0.0, 10), False, 1, 1)
        self.assertTrue(parseSearch(tokens("ALL")).matches(ctx))
        self.assertRaises(ValueError, parseSearch(tokens("BODY", "x")).matches, ctx)
