"""
Big-mailbox behaviour of L{mailplat.imap.server}: a session reuses its last
listing of the mailbox while nothing changed, APPEND fills the structure
cache, and header SEARCH answers from the cache without reading messages.
"""

from io import BytesIO
from typing import Any, List

from mailplat.imap.cache import HEADER_BUDGET, summarize
from mailplat.imap.structure import parseMessage
from tests.test_imap_server import IMAPTestBase, message


class CountingMailbox:
    """
    Count a mailbox's L{listMessages} calls, and the messages it is asked
    to read (L{openMessage} and L{IMessageReader.readMessage} calls), by
    patching the instance, so it stays the object listeners are told of.

    @ivar opens: the UIDs read, in order.
    @ivar octets: the octets handed out by the files L{openMessage} gave
        and by L{readMessage}.
    """

    def __init__(self, mailbox: Any) -> None:
        self.lists = 0
        self.opens: List[int] = []
        self.octets = 0
        listMessages, openMessage = mailbox.listMessages, mailbox.openMessage
        readMessage = getattr(mailbox, "readMessage", None)

        def countedList() -> Any:
            self.lists += 1
            return listMessages()

        def countedOpen(uid: int) -> Any:
            self.opens.append(uid)
            return openMessage(uid).addCallback(CountingFile, self)

        def countedRead(uid: int, limit: int) -> Any:
            self.opens.append(uid)
            data = readMessage(uid, limit)
            self.octets += len(data or b"")
            return data

        mailbox.listMessages = countedList
        mailbox.openMessage = countedOpen
        if readMessage is not None:
            mailbox.readMessage = countedRead


class CountingFile:
    """
    A message file that adds the octets read from it to its
    L{CountingMailbox}'s C{octets}.
    """

    def __init__(self, source: Any, counter: CountingMailbox) -> None:
        self._source = source
        self._counter = counter

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._counter.octets += len(data)
        return data

    def close(self) -> None:
        self._source.close()


class IncrementalViewTests(IMAPTestBase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(5):
            self.deliver(message(f"m{n}"), ("\\Seen",) if n % 2 else ())
        self.client = self.selected()
        view = self.client.server.view
        self.counting = CountingMailbox(view.mailbox)

    def test_unchangedNotListedAgain(self) -> None:
        """
        FETCH, SEARCH and STORE on an unchanged mailbox use the listing
        SELECT took.
        """
        out = self.client.command(b"a FETCH 1:* (FLAGS)")
        self.assertTagged(out, b"a", b"OK")
        self.assertIn(b"* 2 FETCH (FLAGS (\\Seen \\Recent))", out)
        out = self.client.command(b"b SEARCH UNSEEN")
        self.assertIn(b"* SEARCH 1 3 5\r\n", out)
        self.assertEqual(self.counting.lists, 0)

    def test_ownStoreSeenAtOnce(self) -> None:
        """
        A flag change of this session is in the next FETCH even before any
        notification, and the store's notification makes it list again
        once.
        """
        self.client.command(b"a STORE 1 +FLAGS.SILENT (\\Flagged)")
        lists = self.counting.lists
        out = self.client.command(b"b FETCH 1 (FLAGS)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", out)
        out = self.client.command(b"c FETCH 1 (FLAGS)")
        self.assertEqual(self.counting.lists, lists)

    def test_otherSessionChange(self) -> None:
        """
        A change by another session marks the view changed: the next
        command lists again and reports it.
        """
        self.successResultOf(self.mailbox().setFlags([3], ["\\Answered"], "add"))
        out = self.client.command(b"a FETCH 3 (FLAGS)")
        self.assertIn(b"* 3 FETCH (FLAGS (\\Answered \\Recent))", out)
        self.assertGreaterEqual(self.counting.lists, 1)
        self.deliver(message("new"))
        out = self.client.command(b"b NOOP")
        self.assertIn(b"* 6 EXISTS", out)
        out = self.client.command(b"c FETCH 6 (UID)")
        self.assertIn(b"* 6 FETCH (UID 6)", out)

    def test_expungeListsAgain(self) -> None:
        self.client.command(b"a STORE 2 +FLAGS.SILENT (\\Deleted)")
        out = self.client.command(b"b EXPUNGE")
        self.assertIn(b"* 2 EXPUNGE", out)
        out = self.client.command(b"c FETCH 1:* (UID)")
        self.assertNotIn(b"UID 2)", out)
        self.assertEqual(out.count(b"* "), 4)


class CacheFillTests(IMAPTestBase):
    def test_appendFillsCache(self) -> None:
        """
        A message APPENDed through IMAP is parsed once, then: ENVELOPE and
        header SEARCH never open it.
        """
        client = self.connect()
        self.login(client)
        data = b"From: Carol <carol@example.test>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nhi\r\n"
        out = client.command(b"a APPEND INBOX {%d+}\r\n" % len(data) + data)
        self.assertTagged(out, b"a", b"OK [APPENDUID")
        self.assertEqual(len(self.factory.cache), 1)
        out = client.command(b"S1 SELECT INBOX")
        self.assertTagged(out, b"S1", b"OK")
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b"b FETCH 1 (ENVELOPE)")
        self.assertIn(b'"Carol"', out)
        out = client.command(b'c SEARCH CHARSET UTF-8 SUBJECT "CAF\xc3\x89"')
        self.assertIn(b"* SEARCH 1\r\n", out)
        out = client.command(b"d SEARCH FROM carol")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertEqual(counting.opens, [])

    def test_coldSearchFillsCache(self) -> None:
        """
        A header search on uncached messages reads each once and keeps its
        summary; the same search again reads none.
        """
        for n in range(3):
            self.deliver(message(f"subject {n}"))
        client = self.selected()
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b'a SEARCH SUBJECT "subject 1"')
        self.assertIn(b"* SEARCH 2\r\n", out)
        self.assertEqual(sorted(counting.opens), [1, 2, 3])
        out = client.command(b"b SEARCH HEADER From bob")
        self.assertIn(b"* SEARCH 1 2 3\r\n", out)
        out = client.command(b"c SEARCH OR SUBJECT zzz HEADER X-Missing y")
        self.assertIn(b"* SEARCH\r\n", out)
        self.assertEqual(sorted(counting.opens), [1, 2, 3])

    def test_bigHeaderKeepsSearchFields(self) -> None:
        """
        Past the header budget only FROM/TO/CC/BCC/SUBJECT are kept; a
        HEADER search on another field reads the message, and still
        answers right.
        """
        big = b"X-Long: " + b"y" * (HEADER_BUDGET + 10) + b"\r\n"
        data = b"From: bob@example.test\r\n" + big + b"Subject: s\r\n\r\nb\r\n"
        summary = summarize(parseMessage(data))
        self.assertFalse(summary.allHeaders)
        self.assertIsNone(summary.headerValues("x-long"))
        self.assertEqual(summary.headerValues("subject"), ["s"])
        self.deliver(data)
        client = self.selected()
        # (BODYSTRUCTURE: the whole message is parsed and summarised.)
        client.command(b"a FETCH 1 (ENVELOPE BODYSTRUCTURE)")
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b"b SEARCH HEADER X-Long yyy")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertEqual(counting.opens, [1])
        out = client.command(b"c SEARCH SUBJECT s")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertEqual(counting.opens, [1])

    def test_fetchFlagsBatched(self) -> None:
        """
        C{FETCH 1:* (FLAGS UID RFC822.SIZE)} answers every message from the
        listing, in order.
        """
        for n in range(4):
            self.successResultOf(self.mailbox().append(BytesIO(message(f"x{n}")), ["\\Seen"] if n == 2 else []))
        client = self.selected()
        out = client.command(b"a UID FETCH 1:* (FLAGS RFC822.SIZE)")
        lines = [line for line in out.split(b"\r\n") if line.startswith(b"* ")]
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[2].startswith(b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent) RFC822.SIZE "), lines[2])


class InfoItemFetchTests(IMAPTestBase):
    """
    FETCH of items the listing answers alone (UID, FLAGS, MODSEQ,
    RFC822.SIZE, INTERNALDATE) goes through one batched pass: the same
    answers as one message at a time.
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(6):
            self.deliver(message(f"m{n}"), ("\\Seen", "$Label") if n % 2 else ("\\Flagged",))
        # UIDs 1..6; expunge 3 so UIDs and sequence numbers differ.
        self.successResultOf(self.mailbox().setFlags([3], ["\\Deleted"], "add"))
        self.successResultOf(self.mailbox().expunge())

    def fetchLines(self, client: Any, command: bytes) -> List[bytes]:
        out = client.command(b"a " + command)
        self.assertTagged(out, b"a", b"OK")
        return [line for line in out.split(b"\r\n") if line.startswith(b"* ")]

    def test_uidRanges(self) -> None:
        """
        UID sets with gaps, reversed ranges and C{*} name the messages
        there, in sequence order, each once.
        """
        client = self.selected()
        self.assertEqual(self.fetchLines(client, b"UID FETCH 5:2,6,1 (UID)"), [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 4)",
            b"* 4 FETCH (UID 5)", b"* 5 FETCH (UID 6)",
        ])
        self.assertEqual(self.fetchLines(client, b"UID FETCH 3,7:* (UID)"), [b"* 5 FETCH (UID 6)"])

    def test_flagsFormattedPerMessage(self) -> None:
        """
        Each message gets its own flags (system flags first, then
        keywords) and C{\\Recent} only where this session has it; the
        other items follow in the order asked.
        """
        client = self.selected()
        infos = self.successResultOf(self.mailbox().listMessages())
        lines = self.fetchLines(client, b"FETCH 1:3 (FLAGS RFC822.SIZE UID INTERNALDATE)")
        from mailplat.imap.parser import formatDateTime

        self.assertEqual(lines, [
            b"* %d FETCH (FLAGS %s RFC822.SIZE %d UID %d INTERNALDATE %s)" % (
                n + 1, flags, infos[n].size, infos[n].uid, formatDateTime(infos[n].internalDate))
            for n, flags in enumerate([b"(\\Flagged \\Recent)", b"(\\Seen $Label \\Recent)", b"(\\Seen $Label \\Recent)"])
        ])
        other = self.selected(client=self.connect())
        self.assertEqual(self.fetchLines(other, b"FETCH 1:2 FLAGS"), [
            b"* 1 FETCH (FLAGS (\\Flagged))", b"* 2 FETCH (FLAGS (\\Seen $Label))",
        ])

    def test_changedSince(self) -> None:
        """
        CHANGEDSINCE answers only the messages changed since, with their
        MODSEQ.
        """
        client = self.selected()
        infos = self.successResultOf(self.mailbox().listMessages())
        highest = max(info.modseq for info in infos)
        updated = self.successResultOf(self.mailbox().setFlags([4], ["\\Answered"], "add"))
        client.command(b"n NOOP")
        self.assertEqual(self.fetchLines(client, b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % (highest,)), [
            b"* 3 FETCH (UID 4 FLAGS (\\Answered \\Seen $Label \\Recent) MODSEQ (%d))" % (updated[0].modseq,),
        ])
        self.assertEqual(self.fetchLines(client, b"FETCH 1:* (UID) (CHANGEDSINCE %d)" % (updated[0].modseq,)), [])

    def test_newMessageNotYetReported(self) -> None:
        """
        A message delivered since the last EXISTS is not answered for by
        sequence number (the view still has five), and the others are
        answered by position right.
        """
        client = self.selected()
        client.command(b"n FETCH 1 (UID)")
        self.deliver(message("late"))
        out = client.command(b"a FETCH 1:5 (UID FLAGS)")
        self.assertTagged(out, b"a", b"OK")
        self.assertIn(b"* 5 FETCH (UID 6 FLAGS (\\Seen $Label \\Recent))", out)
        self.assertIn(b"* 6 EXISTS", out)
        self.assertNotIn(b"UID 7 FLAGS", out)

    def test_expungedByAnotherSession(self) -> None:
        """
        A message expunged by another session is left out with
        C{NO [EXPUNGEISSUED]}; the others are answered.
        """
        client = self.selected()
        self.successResultOf(self.mailbox().setFlags([2], ["\\Deleted"], "add"))
        self.successResultOf(self.mailbox().expunge())
        out = client.command(b"a FETCH 1:3 (UID)")
        self.assertIn(b"* 1 FETCH (UID 1)", out)
        self.assertIn(b"* 3 FETCH (UID 4)", out)
        self.assertNotIn(b"UID 2)", out)
        self.assertTagged(out, b"a", b"NO [EXPUNGEISSUED]")


class HeaderOnlyTests(IMAPTestBase):
    """
    Header SEARCH, ENVELOPE, SORT and THREAD on messages nothing has
    summarised yet read each message's header only, and answer as a
    whole parse would.
    """

    BIG_BODY = b"x" * 200000 + b"\r\n"

    def setUp(self) -> None:
        super().setUp()
        # Message 2 is too big to be read whole for its header.
        self.deliver(SIMPLE_HEADER + b"\r\nshort\r\n")
        self.deliver(b"From: Carol <carol@example.test>\r\nSubject: =?utf-8?q?caf=C3=A9?= big\r\n\r\n" + self.BIG_BODY)
        self.deliver(b"From: bob@example.test\r\nSubject: Re: Hello\r\nX-Tag: blue\r\n\r\nbody\r\n")

    def test_searchReadsHeadersOnly(self) -> None:
        """
        A header search on uncached messages reads each message's header,
        not its body, and matches decoded values.
        """
        client = self.selected()
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b'a SEARCH CHARSET UTF-8 SUBJECT "CAF\xc3\x89"')
        self.assertIn(b"* SEARCH 2\r\n", out)
        self.assertEqual(sorted(set(counting.opens)), [1, 2, 3])
        self.assertLess(counting.octets, len(self.BIG_BODY) // 2)
        del counting.opens[:]
        out = client.command(b"b SEARCH OR HEADER X-Tag BLUE FROM carol")
        self.assertIn(b"* SEARCH 2 3\r\n", out)
        self.assertEqual(counting.opens, [])

    def test_batchesLetTheReactorIn(self) -> None:
        """
        Past L{HEADER_BATCH} unread messages the search waits a turn of
        the clock between batches, then answers in full.
        """
        from mailplat.imap import server

        self.patch(server, "HEADER_BATCH", 1)
        client = self.selected()
        out = client.command(b"a SEARCH FROM bob")
        self.assertNotIn(b"a OK", out)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # the pause, and the autologout
        self.clock.advance(0)  # (runs the later pauses too: they are due)
        out += client.take()
        self.assertIn(b"* SEARCH 1 3\r\n", out)
        self.assertTagged(out, b"a", b"OK")

    def test_goneWhileSearching(self) -> None:
        """
        A message that disappears between the listing and the read is left
        out, not an error.
        """
        client = self.selected()
        mailbox = client.server.view.mailbox
        readMessage, openMessage = mailbox.readMessage, mailbox.openMessage

        def gone(uid: int, *args: Any) -> Any:
            from mailplat.errors import NoSuchMessage

            if uid == 3:
                raise NoSuchMessage("gone")
            return readMessage(uid, *args)

        def goneOpen(uid: int) -> Any:
            from twisted.internet import defer

            from mailplat.errors import NoSuchMessage

            return defer.fail(NoSuchMessage("gone")) if uid == 3 else openMessage(uid)

        mailbox.readMessage, mailbox.openMessage = gone, goneOpen
        out = client.command(b"a SEARCH FROM bob")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertTagged(out, b"a", b"OK")

    def test_envelopeThenStructure(self) -> None:
        """
        ENVELOPE of uncached messages is made from their headers; a later
        BODYSTRUCTURE still parses the message and answers right.
        """
        from mailplat.imap.cache import summarize

        client = self.selected()
        counting = CountingMailbox(client.server.view.mailbox)
        out = client.command(b"a FETCH 1:3 (ENVELOPE)")
        self.assertTagged(out, b"a", b"OK")
        self.assertLess(counting.octets, len(self.BIG_BODY) // 2)
        full = [summarize(parseMessage(self.successResultOf(self.mailbox().openMessage(u)).read())) for u in (1, 2, 3)]
        for n, summary in enumerate(full, 1):
            self.assertIn(b"* %d FETCH (ENVELOPE %s)" % (n, summary.envelope), out)
        # The headers read for ENVELOPE answer header searches and SORT.
        del counting.opens[:]
        out = client.command(b"s1 SEARCH HEADER X-Tag blue")
        self.assertIn(b"* SEARCH 3\r\n", out)
        out = client.command(b"s2 SORT (REVERSE SUBJECT) UTF-8 ALL")
        self.assertIn(b"* SORT 1 3 2\r\n", out)
        self.assertEqual(counting.opens, [])
        out = client.command(b"b FETCH 2 (BODYSTRUCTURE ENVELOPE)")
        self.assertIn(b"* 2 FETCH (BODYSTRUCTURE %s ENVELOPE %s)" % (full[1].bodyStructure, full[1].envelope), out)
        out = client.command(b"c FETCH 3 (BODY)")
        self.assertIn(b"* 3 FETCH (BODY %s)" % (full[2].body,), out)

    def test_sortBiggerThanTheCache(self) -> None:
        """
        SORT on a mailbox bigger than the cache still sorts every message.
        """
        from mailplat.imap.cache import MessageCache
        from mailplat.imap.server import IMAPFactory

        factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, cache=MessageCache(1))
        client = self.selected(client=self.connect(factory=factory))
        out = client.command(b"a SORT (SUBJECT) UTF-8 ALL")
        self.assertIn(b"* SORT 2 3 1\r\n", out)

    def test_headerSummaryMatchesWhole(self) -> None:
        """
        A summary from the header alone is the whole message's summary but
        for the body structure.
        """
        import dataclasses

        from mailplat.imap.cache import HeaderSummary, summarize, summarizeHeader
        from mailplat.imap.structure import headerEnd
        from tests.test_imap_server import MULTIPART, SIMPLE

        for data in [SIMPLE, MULTIPART, b"Subject: no blank line", b"", b"X: y\r\nbad line\r\nTo: z\r\n\r\n",
                     b"From: a@b\r\nFrom: c@d\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\tfolded\r\n\r\nbody"]:
            whole = summarize(parseMessage(data))
            header = data[: headerEnd(data, True)]
            self.assertEqual(summarizeHeader(header), dataclasses.replace(whole, bodyStructure=None, body=None))
            lazy = HeaderSummary(header)
            self.assertEqual(lazy.envelope, whole.envelope)
            for name in ("from", "subject", "x", "to"):
                self.assertEqual(lazy.headerValues(name), whole.headerValues(name))
            self.assertIsNone(lazy.bodyStructure)
            self.assertEqual((lazy.baseSubject, lazy.sentDate, lazy.fromMailbox, lazy.references),
                             (whole.baseSubject, whole.sentDate, whole.fromMailbox, whole.references))
            self.assertEqual(lazy.full(), summarizeHeader(header))


SIMPLE_HEADER = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: Hello there\r\n"
)
