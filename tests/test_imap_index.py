"""
L{mailplat.imap.index}: the persistent second level of the IMAP message
cache and the full-text index SEARCH TEXT/BODY answer from.

Most tests run the index with a synchronous runner (the SQLite calls done
at once, on real files) under the StringTransport sessions of
L{tests.test_imap_server}; L{ThreadPoolTests} runs it on its own thread
pool under the real reactor.
"""

import base64
import os
import sqlite3
from io import BytesIO
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailplat.delivery.directory import StoreDirectory
from mailplat.delivery.local import LocalDelivery
from mailplat.imap import index as indexModule
from mailplat.imap.cache import MessageCache, summarize
from mailplat.imap import indexworker as indexworkerModule
from mailplat.imap.index import MessageIndex, analyse, decodeSummary, encodeSummary, matchQuery
from mailplat.imap.indexworker import OFFLOAD_MIN, Analyser, AnalysisFailed
from mailplat.imap.search import searchText
from mailplat.imap.server import IMAPFactory
from mailplat.imap.structure import parseMessage
from tests.e2e.corpus import corpus, crlf
from tests.test_imap_scale import CountingMailbox
from tests.test_imap_server import ALICE, Client, IMAPTestBase, message


def synchronous(f: Any, *args: Any) -> "defer.Deferred[Any]":
    """
    Run C{f} at once (in place of the index's thread pool).
    """
    return defer.maybeDeferred(f, *args)


def extraCorpus() -> List[Tuple[str, bytes]]:
    """
    Messages with the charsets and encodings SEARCH decodes, beyond
    L{tests.e2e.corpus}.
    """
    cp1251 = base64.encodebytes("Здравствуйте, дорогой друг!".encode("windows-1251"))
    return [
        ("koi8-subject", b"Subject: =?koi8-r?B?8NLJ18XU?= world\nFrom: x@example.com\n\nhello there\n"),
        ("cp1251-base64", b"Subject: cyrillic body\nContent-Type: text/plain; charset=windows-1251\n"
                          b"Content-Transfer-Encoding: base64\n\n" + cp1251),
        ("qp-utf8", b"Subject: qp\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
                    b"Cr=C3=A8me br=C3=BBl=C3=A9e for every=\none, Gr=C3=B6=C3=9Fe XL\n"),
        ("two-parts", b"Subject: parts\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
                      b"first part ends abc\n--b\nContent-Type: text/plain\n\ndef starts the second\n--b--\n"),
        ("quotes", b'Subject: say "hi" to %everyone_\nFrom: q@example.com\n\nhe said "hi" and left; 100% sure_\n'),
        ("turkish", "Subject: İstanbul trip\nContent-Type: text/plain; charset=utf-8\n\nİSTANBUL and ıstanbul, Straße\n".encode()),
        ("html", b"Subject: html\nContent-Type: text/html; charset=iso-8859-1\n\n<p>caf\xe9 &amp; cr\xe8me</p>\n"),
        ("latin1-8bit-header", "Subject: Grüße aus Köln\nFrom: =?iso-8859-1?q?J=FCrgen?= <j@example.test>\n\nbody\n".encode()),
        ("binary-attachment", b"Subject: attach\nContent-Type: multipart/mixed; boundary=z\n\n--z\nContent-Type: text/plain\n\n"
                              b"see attachment\n--z\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
                              + base64.encodebytes(b"hidden words in binary") + b"--z--\n"),
    ]


#: Needles for TEXT and BODY: hits and misses, case and charset variants,
#: short ones (scanned), ones spanning two parts or fields.
NEEDLES = [
    "hello", "HELLO", "world", "Привет", "ПРИВЕТ", "мир", "ДРУГ", "дорогой друг", "strasse", "STRASSE", "straße",
    "größe", "GRÖSSE", "crème", "brûlée for everyone", "every", "café", "CAF", "plain text", "html", "<p>",
    "inner body", "d1 body", "not a message", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "body",
    "subject", "subject: qp", "from: alice", "alice@example", "jürgen", "JÜRGEN", "grüße", "köln", "abc", "cdef", "abc def", "abcdef",
    "abc\ndef", "istanbul", "İstanbul", "ıstanbul", '"hi"', "100%", "sure_", "%everyone_", "hidden words",
    "see attachment", "zzz-no-such-text", "ab", "é", "xx", "hi", "\r\n", "a@b", "example.test",
]


def literal(text: str) -> bytes:
    octets = text.encode("utf-8")
    return b"{%d}\r\n" % (len(octets),) + octets


class Harness(IMAPTestBase):
    """
    An IMAP test base whose factory can have a L{MessageIndex} in a
    temporary directory.
    """

    def setUp(self) -> None:
        super().setUp()
        self.indexDir = self.mktemp()
        self.indexClock = task.Clock()

    def makeIndex(self, **kwargs: Any) -> MessageIndex:
        return MessageIndex(self.indexDir, self.indexClock, run=synchronous, **kwargs)

    def indexedFactory(self, index: Optional[MessageIndex] = None) -> IMAPFactory:
        return IMAPFactory(self.portal, "mail.example.test", clock=self.clock,
                           index=index if index is not None else self.makeIndex())

    def deliverMail(self, index: Any, body: bytes) -> None:
        delivery = LocalDelivery(StoreDirectory(self.store), self.store, index=index)
        data = b"From: bob@example.test\r\nSubject: delivered\r\n\r\n" + body
        self.successResultOf(delivery.deliver(None, "bob@example.test", [ALICE], BytesIO(data)))

    def checkDelivered(self, index: MessageIndex, body: bytes, searches: List[Tuple[bytes, bytes]]) -> None:
        """
        Deliver a message of C{body} with C{index} and close it; then in a
        session with the index opened again, each search program of
        C{searches} gives its answer and the ENVELOPE comes, all without
        a message opened.
        """
        self.deliverMail(index, body)
        self.successResultOf(index.close())
        client = self.selected(client=self.connect(factory=self.indexedFactory(self.makeIndex())))
        counting = CountingMailbox(client.server.view.mailbox)
        for program, answer in searches:
            self.assertEqual(self.search(client, program), answer)
        out = client.command(b"f FETCH 1 (ENVELOPE)")
        self.assertIn(b'"delivered"', out)
        self.assertEqual(counting.opens, [])

    def search(self, client: Client, program: bytes) -> bytes:
        out = client.send(b"s UID SEARCH CHARSET UTF-8 " + program + b"\r\n")
        self.assertTagged(out, b"s", b"OK")
        lines = [line for line in out.split(b"\r\n") if line.startswith(b"* SEARCH")]
        self.assertEqual(len(lines), 1, out)
        return lines[0]


class DifferentialTests(Harness):
    """
    SEARCH gives the same UIDs from the index as from reading every
    message.
    """

    def setUp(self) -> None:
        super().setUp()
        for n, (name, data) in enumerate(corpus() + [(name, crlf(data)) for name, data in extraCorpus()]):
            self.deliver(data, ("\\Seen",) if n % 3 == 0 else ())
        # Messages of another mailbox must never leak into INBOX answers.
        self.successResultOf(self.account.createMailbox("Other"))
        self.deliver(crlf(b"Subject: hello other\n\nhello world\n"), name="Other")
        self.scanning = self.selected()
        self.index = self.makeIndex()
        self.indexed = self.selected(client=self.connect(factory=self.indexedFactory(self.index)))
        # The other mailbox indexed too.
        other = self.login(self.connect(factory=self.indexedFactory(self.index)))
        self.assertTagged(other.command(b"o SELECT Other"), b"o", b"OK")
        self.assertIn(b"* SEARCH 1", other.command(b"o2 UID SEARCH TEXT hello"))

    def programs(self) -> List[bytes]:
        out = []
        for needle in NEEDLES:
            for key in (b"TEXT ", b"BODY "):
                out.append(key + literal(needle))
        out += [
            b"NOT TEXT " + literal("hello"),
            b"NOT BODY " + literal("body"),
            b"OR TEXT " + literal("привет") + b" BODY " + literal("plain text"),
            b"OR SEEN BODY " + literal("html"),
            b"UNSEEN TEXT " + literal("subject"),
            b"SEEN NOT TEXT " + literal("subject"),
            b"TEXT " + literal("subject") + b" BODY " + literal("body") + b" NOT SUBJECT " + literal("bad"),
            b"SUBJECT " + literal("p") + b" TEXT " + literal("plain"),
            b"OR (TEXT " + literal("html") + b" SEEN) NOT (BODY " + literal("xx") + b")",
            b"TEXT " + literal("body") + b" SENTSINCE 1-Jan-2000",
            b"LARGER 200 TEXT " + literal("part"),
            b"2:8 TEXT " + literal("body"),
        ]
        return out

    def test_sameAnswers(self) -> None:
        """
        Every program answers the same UIDs with and without the index,
        cold (the index being filled) and warm (reading no message).
        """
        counting = CountingMailbox(self.indexed.server.view.mailbox)
        programs = self.programs()
        for program in programs:
            self.assertEqual(self.search(self.indexed, program), self.search(self.scanning, program), program)
        # Some needles do match: the comparison is not between empty answers.
        self.assertNotEqual(self.search(self.scanning, b"TEXT " + literal("привет")), b"* SEARCH")
        self.assertNotEqual(self.search(self.scanning, b"BODY " + literal("größe")), b"* SEARCH")
        # Warm: indexable needles open nothing (the two sessions share the
        # store's mailbox object, so the scanning session runs after).
        del counting.opens[:]
        warm = [key + literal(needle) for needle in NEEDLES if len(needle.casefold()) >= 3 for key in (b"TEXT ", b"BODY ")]
        answers = [self.search(self.indexed, program) for program in warm]
        self.assertEqual(counting.opens, [])
        self.assertEqual(answers, [self.search(self.scanning, program) for program in warm])

    def test_shortNeedlesScan(self) -> None:
        """
        A needle under three characters is answered by reading the
        messages.
        """
        counting = CountingMailbox(self.indexed.server.view.mailbox)
        self.search(self.indexed, b"TEXT " + literal("hello"))
        del counting.opens[:]
        self.assertEqual(self.search(self.indexed, b"BODY xx"), self.search(self.scanning, b"BODY xx"))
        self.assertNotEqual(counting.opens, [])

    def test_expungedPruned(self) -> None:
        """
        UIDs expunged from the mailbox are dropped from the index at the
        next search, and never answered.
        """
        self.search(self.indexed, b"TEXT " + literal("hello"))
        path = self.index.pathFor(ALICE)
        self.indexed.command(b"x STORE 1:3 +FLAGS (\\Deleted)")
        self.assertTagged(self.indexed.command(b"y EXPUNGE"), b"y", b"OK")
        self.scanning.command(b"n NOOP")
        self.assertEqual(self.search(self.indexed, b"TEXT " + literal("subject")),
                         self.search(self.scanning, b"TEXT " + literal("subject")))
        self.successResultOf(self.index.flush())
        with sqlite3.connect(path) as db:
            uids = [u for (u,) in db.execute(
                "SELECT uid FROM messages JOIN mailboxes m ON m.id = mailbox WHERE m.name = 'INBOX'")]
        self.assertTrue(uids)
        self.assertFalse({1, 2, 3} & set(uids))


class RestartTests(Harness):
    """
    A new index object on the same files answers without reading a
    message.
    """

    def test_restart(self) -> None:
        subjects = ["apples", "bananas", "cherries"]
        for subject in subjects:
            self.deliver(message(subject, f"about {subject} and more\r\n".encode()))
        first = self.makeIndex()
        client = self.selected(client=self.connect(factory=self.indexedFactory(first)))
        client.command(b"f FETCH 1:* (ENVELOPE)")
        self.search(client, b"TEXT nothing-here")
        self.successResultOf(first.close())

        again = self.selected(client=self.connect(factory=self.indexedFactory(self.makeIndex())))
        counting = CountingMailbox(again.server.view.mailbox)
        out = again.command(b"f FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
        self.assertTagged(out, b"f", b"OK")
        self.assertIn(b'"bananas"', out)
        self.assertEqual(self.search(again, b"TEXT BANANAS"), b"* SEARCH 2")
        self.assertEqual(self.search(again, b'BODY "and more" NOT SUBJECT cherries'), b"* SEARCH 1 2")
        self.assertEqual(self.search(again, b"SUBJECT apples"), b"* SEARCH 1")
        out = again.command(b"o SORT (SUBJECT) UTF-8 ALL")
        self.assertIn(b"* SORT 1 2 3", out)
        self.assertEqual(counting.opens, [])

    def test_appendIndexed(self) -> None:
        """
        A message APPENDed is indexed from the octets in hand.
        """
        index = self.makeIndex()
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        data = message("appended", b"pineapple body\r\n")
        out = client.send(b"a APPEND INBOX {%d}\r\n" % len(data) + data + b"\r\n")
        self.assertTagged(out, b"a", b"OK")
        client.command(b"n NOOP")
        self.successResultOf(index.close())
        again = self.selected(client=self.connect(factory=self.indexedFactory(self.makeIndex())))
        counting = CountingMailbox(again.server.view.mailbox)
        self.assertEqual(self.search(again, b"BODY PINEAPPLE"), b"* SEARCH 1")
        self.assertEqual(counting.opens, [])

    def test_copyIndexed(self) -> None:
        """
        COPY and MOVE give the copies the originals' entries.
        """
        self.successResultOf(self.account.createMailbox("Saved"))
        self.successResultOf(self.account.createMailbox("Later"))
        self.deliver(message("one", b"kiwi\r\n"))
        self.deliver(message("two", b"mango\r\n"))
        index = self.makeIndex()
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        self.search(client, b"TEXT kiwi")
        self.assertTagged(client.command(b"c COPY 1 Saved"), b"c", b"OK")
        self.assertTagged(client.command(b"m MOVE 2 Later"), b"m", b"OK")
        self.successResultOf(index.close())
        for name, needle, expected in ((b"Saved", b"KIWI", b"* SEARCH 1"), (b"Later", b"MANGO", b"* SEARCH 1")):
            again = self.login(self.connect(factory=self.indexedFactory(self.makeIndex())))
            self.assertTagged(again.command(b"s SELECT " + name), b"s", b"OK")
            counting = CountingMailbox(again.server.view.mailbox)
            self.assertEqual(self.search(again, b"BODY " + needle), expected)
            out = again.command(b"f FETCH 1 (ENVELOPE)")
            self.assertTagged(out, b"f", b"OK")
            self.assertEqual(counting.opens, [])


class DropTests(Harness):
    """
    A mailbox deleted or renamed through IMAP takes its rows out of the
    index: the text of mail that is gone is not kept.
    """

    def setUp(self) -> None:
        super().setUp()
        self.index = self.makeIndex()
        self.client = self.login(self.connect(factory=self.indexedFactory(self.index)))

    def fill(self, name: bytes, body: bytes) -> None:
        """
        CREATE C{name} (unless INBOX), APPEND one message to it (indexed
        from the octets in hand).
        """
        if name != b"INBOX":
            self.assertTagged(self.client.command(b"c CREATE " + name), b"c", b"OK")
        data = message(name.decode(), body)
        out = self.client.send(b"a APPEND %s {%d}\r\n" % (name, len(data)) + data + b"\r\n")
        self.assertTagged(out, b"a", b"OK")

    def rows(self) -> Dict[str, Tuple[int, int]]:
        """
        Per mailbox name in the index file, its message rows and text rows.
        """
        self.successResultOf(self.index.flush())
        with sqlite3.connect(self.index.pathFor(ALICE)) as db:
            return {name: (messages, texts) for name, messages, texts in db.execute(
                "SELECT b.name, count(m.id), count(f.id) FROM mailboxes b LEFT JOIN messages m ON m.mailbox = b.id"
                " LEFT JOIN fulltext f ON f.id = m.id GROUP BY b.id")}

    def textHits(self, needle: str) -> int:
        """
        How many rows of the full-text table match C{needle}.
        """
        with sqlite3.connect(self.index.pathFor(ALICE)) as db:
            return len(db.execute("SELECT rowid FROM texts WHERE texts MATCH ?", (matchQuery(needle),)).fetchall())

    def test_delete(self) -> None:
        """
        DELETE drops the mailbox's rows and text; a mailbox made again
        under the name is indexed afresh.
        """
        self.fill(b"INBOX", b"mango\r\n")
        self.fill(b"Work", b"kiwifruit\r\n")
        self.assertEqual(self.rows(), {"INBOX": (1, 1), "Work": (1, 1)})
        self.assertEqual(self.textHits("kiwifruit"), 1)
        self.assertTagged(self.client.command(b"d DELETE Work"), b"d", b"OK")
        self.assertEqual(self.rows(), {"INBOX": (1, 1)})
        self.assertEqual(self.textHits("kiwifruit"), 0)
        self.assertEqual(self.textHits("mango"), 1)

        self.fill(b"Work", b"papaya\r\n")
        self.assertTagged(self.client.command(b"s SELECT Work"), b"s", b"OK")
        self.assertEqual(self.search(self.client, b"TEXT kiwifruit"), b"* SEARCH")
        self.assertEqual(self.search(self.client, b"TEXT papaya"), b"* SEARCH 1")

    def test_renameTakesItsInferiors(self) -> None:
        """
        RENAME drops the rows of the mailbox and of those below it, not of
        a sibling whose name merely starts the same; the messages are
        found under their new names.
        """
        self.fill(b"a", b"apricot\r\n")
        self.fill(b"a/b", b"blueberry\r\n")
        self.fill(b"ab", b"avocado\r\n")
        self.assertEqual(set(self.rows()), {"a", "a/b", "ab"})
        self.assertTagged(self.client.command(b"r RENAME a c"), b"r", b"OK")
        self.assertEqual(self.rows(), {"ab": (1, 1)})
        self.assertEqual(self.textHits("apricot"), 0)
        self.assertTagged(self.client.command(b"s SELECT c/b"), b"s", b"OK")
        self.assertEqual(self.search(self.client, b"TEXT blueberry"), b"* SEARCH 1")

    def test_deletedElsewhere(self) -> None:
        """
        A mailbox deleted behind IMAP's back (another program, an older
        version) loses its rows when a LIST next shows the account's
        mailboxes, at most hourly.
        """
        self.fill(b"INBOX", b"mango\r\n")
        self.fill(b"Gone", b"kiwifruit\r\n")
        self.fill(b"Later", b"papaya\r\n")
        self.assertEqual(set(self.rows()), {"INBOX", "Gone", "Later"})
        self.successResultOf(self.account.deleteMailbox("Gone"))
        self.assertTagged(self.client.command(b'l LIST "" "%"'), b"l", b"OK")
        self.assertEqual(set(self.rows()), {"INBOX", "Later"})
        self.assertEqual(self.textHits("kiwifruit"), 0)
        self.successResultOf(self.account.deleteMailbox("Later"))
        self.client.command(b'l LIST "" "*"')
        self.assertEqual(set(self.rows()), {"INBOX", "Later"})
        self.indexClock.advance(3600)
        self.client.command(b'l LIST "" "*"')
        self.assertEqual(self.rows(), {"INBOX": (1, 1)})


class DeliveryTests(Harness):
    """
    Local delivery fills the index once the message is stored, and is
    never held up or failed by it.
    """

    def test_deliveryIndexes(self) -> None:
        index = self.makeIndex()
        # The Return-Path the delivery adds is part of the indexed text.
        self.checkDelivered(index, b"papaya smoothie\r\n",
                            [(b"TEXT PAPAYA", b"* SEARCH 1"), (b"TEXT return-path", b"* SEARCH 1")])

    def test_brokenIndexNeverFailsDelivery(self) -> None:
        class Broken:
            def delivered(self, *args: Any) -> None:
                raise AssertionError("must not be reached")

        index = self.makeIndex()
        index._queue = Broken().delivered  # type: ignore[method-assign]
        self.deliverMail(index, b"still delivered\r\n")
        errors = self.flushLoggedErrors(AssertionError)
        self.assertEqual(len(errors), 1)
        client = self.selected()
        self.assertEqual(self.search(client, b"BODY delivered"), b"* SEARCH 1")


class HeldDeliveryTests(Harness):
    """
    Delivered messages wait in the queue while deliveries keep coming (the
    index's work yields to accepting mail in a burst), within bounds, and
    nothing that reads the index misses them meanwhile.
    """

    def written(self, index: MessageIndex) -> int:
        """
        How many message rows the account's index file holds (without
        flushing the queue).
        """
        if not os.path.exists(index.pathFor(ALICE)):
            return 0
        with sqlite3.connect(index.pathFor(ALICE)) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def test_writtenOnceDeliveriesPause(self) -> None:
        index = self.makeIndex()
        for n in range(5):
            self.deliverMail(index, b"burst %d\r\n" % n)
            self.indexClock.advance(indexModule.FLUSH_DELAY / 2)
        # A whole FLUSH_DELAY after the first, and more: still held.
        self.assertEqual(self.written(index), 0)
        # FLUSH_DELAY after the last (and a millisecond for the sums of
        # floats): written, all five in one go.
        self.indexClock.advance(indexModule.FLUSH_DELAY / 2 + 0.001)
        self.assertEqual(self.written(index), 5)
        self.assertEqual(index._pending, [])

    def test_heldAtMostDeferLimit(self) -> None:
        index = self.makeIndex()
        step = indexModule.FLUSH_DELAY / 2
        waited = 0.0
        while self.written(index) == 0:
            self.deliverMail(index, b"steady\r\n")
            self.indexClock.advance(step)
            waited += step
            self.assertLessEqual(waited, indexModule.DEFER_LIMIT + step)
        self.assertGreaterEqual(waited, indexModule.DEFER_LIMIT - step)

    def test_boundsWriteAtOnce(self) -> None:
        self.patch(indexModule, "DEFER_MESSAGES", 3)
        index = self.makeIndex()
        self.deliverMail(index, b"one\r\n")
        self.deliverMail(index, b"two\r\n")
        self.assertEqual(self.written(index), 0)
        self.deliverMail(index, b"three\r\n")
        self.assertEqual(self.written(index), 3)

        self.patch(indexModule, "DEFER_MESSAGES", 100)
        self.patch(indexModule, "DEFER_BYTES", 1000)
        self.deliverMail(index, b"small\r\n")
        self.assertEqual(self.written(index), 3)
        self.deliverMail(index, b"x" * 1000 + b"\r\n")
        self.assertEqual(self.written(index), 5)

    def test_otherWritesAreNotHeld(self) -> None:
        """
        A row of another kind (here a session's summary) is written
        FLUSH_DELAY after it came, with the deliveries queued before it.
        """
        index = self.makeIndex()
        self.deliverMail(index, b"delivered first\r\n")
        parsed = parseMessage(message("other", b"x\r\n"))
        index.add((ALICE, "Other", 1, 1), summarize(parsed), searchText(parsed))
        self.indexClock.advance(indexModule.FLUSH_DELAY / 2)
        self.deliverMail(index, b"delivered second\r\n")
        self.indexClock.advance(indexModule.FLUSH_DELAY / 2)
        self.assertEqual(self.written(index), 3)

    def test_readersSeeHeldDeliveries(self) -> None:
        """
        While deliveries are held, a text search commits them first, and a
        FETCH reads the message from the store.
        """
        index = self.makeIndex()
        self.deliverMail(index, b"papaya smoothie\r\n")
        self.deliverMail(index, b"mango lassi\r\n")
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        out = client.command(b"f FETCH 2 (ENVELOPE)")
        self.assertTagged(out, b"f", b"OK")
        self.assertIn(b'"delivered"', out)
        self.assertEqual(self.search(client, b"TEXT papaya"), b"* SEARCH 1")
        self.assertEqual(self.search(client, b"BODY lassi"), b"* SEARCH 2")
        self.assertEqual(self.written(index), 2)


class ParserProcessTests(Harness):
    """
    L{mailplat.imap.indexworker}: big delivered messages are analysed by a
    child process, with the same result as in the serving process, and
    the index never loses a message to the child's failure.
    """

    def analyser(self, **kwargs: Any) -> Analyser:
        analyser = Analyser(**kwargs)
        self.addCleanup(analyser.close)
        return analyser

    def test_sameAsInProcess(self) -> None:
        """
        The child's analysis of each message of the corpus (multipart,
        encoded words, charsets, attachments) equals the one made here.
        """
        analyser = self.analyser(minimum=0)
        messages = [crlf(data) for _, data in corpus() + extraCorpus()]
        for data in messages:
            self.assertEqual(analyser.analyse(data), analyse(data))
        self.assertEqual(analyser.offloaded, len(messages))

    def test_smallStayHere(self) -> None:
        """
        A message under the minimum is analysed on the calling thread: no
        child is started.
        """
        analyser = self.analyser(minimum=1000)
        data = crlf(corpus()[0][1])
        self.assertLess(len(data), 1000)
        self.assertEqual(analyser.analyse(data), analyse(data))
        self.assertEqual(analyser.offloaded, 0)
        self.assertIsNone(analyser._process)

    def test_childFails(self) -> None:
        """
        A child that dies answers nothing: the message is analysed here
        instead (and logged), and after three failures in a row no child
        is started again.
        """
        import subprocess as subprocessModule
        import sys

        started = []
        realPopen = subprocessModule.Popen

        def counting(*args: Any, **kwargs: Any) -> Any:
            started.append(args)
            return realPopen(*args, **kwargs)

        self.patch(indexworkerModule.subprocess, "Popen", counting)
        analyser = self.analyser(minimum=0, argv=[sys.executable, "-c", "pass"])
        data = crlf(corpus()[0][1])
        for _ in range(5):
            self.assertEqual(analyser.analyse(data), analyse(data))
        self.assertEqual(len(started), indexworkerModule.MAX_FAILURES)
        self.assertEqual(analyser.offloaded, 0)

    def test_childRefuses(self) -> None:
        """
        A message the child cannot analyse is refused with the child's
        reason, and the child keeps serving.
        """
        import sys

        script = (
            "import sys\n"
            "from mailplat.imap import indexworker as w\n"
            "w._readFrame(sys.stdin.buffer)\n"
            "w._writeFrame(sys.stdout.buffer, b'\\x00')\n"
            "w._writeFrame(sys.stdout.buffer, b'ValueError: unreadable')\n"
            "sys.stdout.flush()\n"
        )
        analyser = self.analyser(minimum=0, argv=[sys.executable, "-c", script])
        error = self.assertRaises(AnalysisFailed, analyser.analyse, b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(str(error), "ValueError: unreadable")

    def test_closeStopsChild(self) -> None:
        """
        Closing the analyser ends the child.
        """
        analyser = self.analyser(minimum=0)
        analyser.analyse(crlf(corpus()[0][1]))
        process = analyser._process
        assert process is not None
        analyser.close()
        self.assertIsNotNone(process.poll())

    def test_ownSession(self) -> None:
        """
        The child runs in a session of its own, so Ctrl-C at the terminal
        running the server (which signals its whole process group) does not
        reach it, even while it is starting.
        """
        analyser = self.analyser(minimum=0)
        analyser.analyse(crlf(corpus()[0][1]))
        process = analyser._process
        assert process is not None
        self.assertNotEqual(os.getsid(process.pid), os.getsid(0))
        self.assertNotEqual(os.getpgid(process.pid), os.getpgid(0))

    def test_deliveredBigMessage(self) -> None:
        """
        A big delivered message is indexed through the child: found by
        SEARCH TEXT without reading the message, its envelope from the
        index.
        """
        index = self.makeIndex()
        self.addCleanup(index.analyser.close)
        body = b"".join(b"line %d of a long report about kumquats\r\n" % n for n in range(1000))
        self.assertGreaterEqual(len(body), OFFLOAD_MIN)
        self.checkDelivered(index, body, [(b"TEXT \"999 of a long\"", b"* SEARCH 1"), (b"BODY nectarine", b"* SEARCH")])
        self.assertEqual(index.analyser.offloaded, 1)


class DamageTests(Harness):
    """
    A missing, corrupt or old-format file is rebuilt, never an error.
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(4):
            self.deliver(message(f"m{n}", f"needle{n} text\r\n".encode()))

    def fill(self) -> str:
        index = self.makeIndex()
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        self.assertEqual(self.search(client, b"TEXT needle2"), b"* SEARCH 3")
        self.successResultOf(index.close())
        return index.pathFor(ALICE)

    def reopen(self) -> Tuple[Client, MessageIndex]:
        index = self.makeIndex()
        return self.selected(client=self.connect(factory=self.indexedFactory(index))), index

    def test_corrupt(self) -> None:
        path = self.fill()
        with open(path, "r+b") as f:
            f.write(b"this is not a database at all" * 100)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        client, index = self.reopen()
        self.assertEqual(self.search(client, b"TEXT needle1"), b"* SEARCH 2")
        self.assertEqual(index.rebuilds, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # Rebuilt: a second search reads nothing.
        counting = CountingMailbox(client.server.view.mailbox)
        self.assertEqual(self.search(client, b"TEXT needle3"), b"* SEARCH 4")
        self.assertEqual(counting.opens, [])

    def test_deletedWhileOpen(self) -> None:
        path = self.fill()
        client, index = self.reopen()
        self.assertEqual(self.search(client, b"TEXT needle0"), b"* SEARCH 1")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        self.assertEqual(self.search(client, b"TEXT needle1"), b"* SEARCH 2")
        self.assertTrue(os.path.exists(path))
        counting = CountingMailbox(client.server.view.mailbox)
        self.assertEqual(self.search(client, b"TEXT needle3"), b"* SEARCH 4")
        self.assertEqual(counting.opens, [])

    def test_unusableFallsBackToReading(self) -> None:
        """
        An index that cannot be opened at all (its directory is a file)
        leaves SEARCH and FETCH to read the messages.
        """
        with open(self.indexDir, "w") as f:
            f.write("not a directory")
        client, index = self.reopen()
        self.assertEqual(self.search(client, b"TEXT needle1"), b"* SEARCH 2")
        self.assertEqual(self.search(client, b"BODY needle3 NOT TEXT needle1"), b"* SEARCH 4")
        self.assertIn(b'"m2"', client.command(b"f FETCH 3 (ENVELOPE)"))
        self.assertEqual(index.rebuilds, 0)

    def test_oldFormat(self) -> None:
        path = self.fill()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = 0 WHERE key = 'version'")
            db.execute("UPDATE messages SET summary = 'garbage'")
        client, index = self.reopen()
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b"f FETCH 1 (ENVELOPE)")
        self.assertIn(b'"m0"', out)
        # Nothing was read from the old file: the message was opened.
        self.assertEqual(counting.opens, [1])

    def test_garbledSummaryReadAgain(self) -> None:
        path = self.fill()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE messages SET summary = 'garbage'")
        client, index = self.reopen()
        out = client.command(b"f FETCH 2 (ENVELOPE)")
        self.assertIn(b'"m1"', out)

    def test_uidValidityChangeDropsRows(self) -> None:
        index = self.makeIndex()
        summary = summarize(parseMessage(message("old")))
        index.add((ALICE, "Box", 7, 1), summary, searchText(parseMessage(message("old"))))
        self.assertEqual(list(self.successResultOf(index.summaries((ALICE, "Box", 7), [1]))), [1])
        fresh = parseMessage(message("new", b"fresh words\r\n"))
        index.add((ALICE, "Box", 8, 2), summarize(fresh), searchText(fresh))
        self.successResultOf(index.flush())
        self.assertEqual(self.successResultOf(index.summaries((ALICE, "Box", 7), [1])), {})
        self.assertEqual(self.successResultOf(index.textState((ALICE, "Box", 8))), ({2}, set()))
        self.assertEqual(self.successResultOf(index.search((ALICE, "Box", 8), "fresh", False)), {2})

    def test_tooMuchTextScanned(self) -> None:
        """
        A message whose text is over the limit is kept without text and
        searched by reading it.
        """
        self.patch(indexModule, "TEXT_LIMIT", 10)
        index = self.makeIndex()
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        self.assertEqual(self.search(client, b"TEXT needle2"), b"* SEARCH 3")
        counting = CountingMailbox(client.server.view.mailbox)
        self.assertEqual(self.search(client, b"TEXT needle1"), b"* SEARCH 2")
        self.assertEqual(sorted(counting.opens), [1, 2, 3, 4])
        out = client.command(b"f FETCH 1 (ENVELOPE)")
        self.assertIn(b'"m0"', out)


class RepeatedLinesTests(Harness):
    """
    The full-text table is given each distinct line of a text once
    (L{indexModule.indexedForm}); the answers are still those of the
    whole text.
    """

    BODY = (b"quoted line one\r\n" * 50 + b"middle part\r\n" + b"quoted line one\r\n"
            + b"closing words\r\n" + b"quoted line one\r\n" * 20)

    def setUp(self) -> None:
        super().setUp()
        self.index = self.makeIndex()
        parsed = parseMessage(message("repeats", self.BODY))
        self.text = searchText(parsed)
        self.prefix = (ALICE, "Box", 7)
        self.index.add(self.prefix + (1,), summarize(parsed), self.text)
        other = parseMessage(message("other", b"quoted line one\r\nclosing words\r\n"))
        self.otherText = searchText(other)
        self.index.add(self.prefix + (2,), summarize(other), self.otherText)
        self.successResultOf(self.index.flush())

    def found(self, needle: str, text: bool = False) -> Any:
        return self.successResultOf(self.index.search(self.prefix, needle.casefold(), text))

    def test_indexedForm(self) -> None:
        """
        Each distinct line once, in order of first appearance; a text
        without a repeated line is given as it is.
        """
        self.assertEqual(indexModule.indexedForm("a\nb\na\nc\nb"), "a\nb\nc")
        self.assertEqual(indexModule.indexedForm("a\nb\nc"), "a\nb\nc")
        self.assertEqual(indexModule.indexedForm("one line"), "one line")
        self.assertLess(len(indexModule.indexedForm(self.text.body)), len(self.text.body) // 10)

    def test_sameAnswersAsTheText(self) -> None:
        """
        Needles within a line, across the line breaks of repeated lines,
        and across line breaks that are only in the indexed form (never a
        match) answer as the text does.
        """
        needles = ["quoted line", "middle", "one\r\nmiddle", "one\r\nclosing", "words\r\nquoted line one",
                   "middle part\r\nclosing", "e\r\nc", "\nq", "\r\n", "line one\r\nquoted line one\r\nmiddle",
                   "one\nmiddle", "nowhere"]
        bodies = {1: self.text.body, 2: self.otherText.body}
        self.assertIn("one\r\nclosing", self.otherText.body)
        for needle in needles:
            expected = {uid for uid, body in bodies.items() if needle in body}
            self.assertEqual(self.found(needle), expected, needle)
        # Some needles do match, and only in the text (not the indexed form).
        self.assertEqual(self.found("one\r\nmiddle"), {1})
        self.assertEqual(self.found("one\r\nclosing"), {1, 2})
        self.assertEqual(self.found("middle part\r\nclosing"), set())

    def test_forgetAndIndexAgain(self) -> None:
        """
        Forgetting a message drops its text from the contentless table
        too (given its indexed values again), leaving the table sound.
        """
        self.index.forget(self.prefix, [1])
        parsed = parseMessage(message("again", b"middle part\r\nfresh\r\n"))
        self.index.add(self.prefix + (3,), summarize(parsed), searchText(parsed))
        self.successResultOf(self.index.flush())
        self.assertEqual(self.found("middle"), {3})
        self.assertEqual(self.found("quoted line"), {2})
        self.assertEqual(self.successResultOf(self.index.textState(self.prefix)), ({2, 3}, set()))
        with sqlite3.connect(self.index.pathFor(ALICE)) as db:
            db.execute("INSERT INTO texts (texts, rank) VALUES ('integrity-check', 0)")
            self.assertEqual(db.execute("SELECT count(*) FROM fulltext").fetchone(), (2,))


class MayHoldTests(Harness):
    """
    L{MessageIndex.mayHold}: a header search over mail the index never saw
    (no file for the account, nothing queued) does not ask it for every
    message's summary.
    """

    def test_mayHold(self) -> None:
        index = self.makeIndex()
        self.assertFalse(index.mayHold(ALICE))
        parsed = parseMessage(message("one", b"hello\r\n"))
        index.add((ALICE, "INBOX", 1, 1), summarize(parsed), searchText(parsed))
        # Queued, not written yet.
        self.assertTrue(index.mayHold(ALICE))
        self.successResultOf(index.flush())
        self.assertTrue(os.path.exists(index.pathFor(ALICE)))
        self.assertTrue(index.mayHold(ALICE))
        self.assertFalse(index.mayHold("bob@example.test"))

    def test_headerSearchSkipsAnEmptyIndex(self) -> None:
        self.deliver(message("one", b"hello\r\n"))
        self.deliver(message("two", b"world\r\n"))
        index = self.makeIndex()
        asked: List[Any] = []
        self.patch(index, "summaries", lambda prefix, uids: asked.append(prefix) or defer.succeed({}))
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        self.assertEqual(self.search(client, b"SUBJECT two"), b"* SEARCH 2")
        self.assertEqual(asked, [])
        # Once the account has a file, the index is asked.
        parsed = parseMessage(message("other", b"x\r\n"))
        index.add((ALICE, "Other", 1, 1), summarize(parsed), searchText(parsed))
        self.successResultOf(index.flush())
        client = self.selected(client=self.connect(factory=self.indexedFactory(index)))
        self.assertEqual(self.search(client, b"SUBJECT one"), b"* SEARCH 1")
        self.assertEqual(len(asked), 1)


class FormatTests(SynchronousTestCase):
    def test_summaryRoundTrip(self) -> None:
        for name, data in corpus():
            summary = summarize(parseMessage(data))
            self.assertEqual(decodeSummary(encodeSummary(summary)), summary, name)

    def test_notASummary(self) -> None:
        for blob in (b"", b"garbage", b"[1,2]", b'{"a":1}', b"\xff\xfe"):
            self.assertIsNone(decodeSummary(blob))

    def test_matchQuery(self) -> None:
        self.assertEqual(matchQuery("abcd"), '"abc" AND "bcd"')
        self.assertEqual(matchQuery('a"b'), '"a""b"')
        self.assertEqual(matchQuery("aaaa"), '"aaa"')
        self.assertEqual(len(matchQuery("abcdefghijklmnopqrstuvwxyz").split(" AND ")), indexModule.QUERY_TRIGRAMS)
        # No trigram across a line break (the indexed form may not have it).
        self.assertEqual(matchQuery("ab\ncd"), "")
        self.assertEqual(matchQuery("abc\ndef"), '"abc" AND "def"')

    def test_searchTextIsWhatTheScanSearches(self) -> None:
        for name, data in corpus() + [(name, crlf(data)) for name, data in extraCorpus()]:
            parsed = parseMessage(data)
            text = searchText(parsed)
            for needle in NEEDLES:
                folded = needle.casefold()
                self.assertEqual(text.contains(folded, True), parsed.textContains(needle), (name, needle))
                self.assertEqual(text.contains(folded, False), parsed.bodyContains(needle), (name, needle))


class ThreadPoolTests(TestCase):
    """
    The index on its own thread pool under the running reactor.
    """

    @defer.inlineCallbacks
    def test_writeSearchClose(self) -> None:
        from twisted.internet import reactor

        index = MessageIndex(self.mktemp(), reactor)
        self.addCleanup(index.close)
        cache = MessageCache(index=index)
        for uid in range(1, 41):
            cache.remember((ALICE, "INBOX", 5, uid), parseMessage(message(f"s{uid}", f"word{uid % 4} body\r\n".encode())))
        indexed, unindexable = yield index.textState((ALICE, "INBOX", 5))
        self.assertEqual((len(indexed), unindexable), (40, set()))
        hits = yield index.search((ALICE, "INBOX", 5), "word3", False)
        self.assertEqual(hits, {u for u in range(1, 41) if u % 4 == 3})
        fresh = MessageCache(index=index)
        yield fresh.load([(ALICE, "INBOX", 5, 7)])
        summary = fresh.get((ALICE, "INBOX", 5, 7))
        assert summary is not None
        self.assertIn(b'"s7"', summary.envelope)
        yield index.close()
        self.assertIsNone(index._pool)
