"""
Big-mailbox behaviour of L{mailplat.imap.server}: a session reuses its last
listing of the mailbox while nothing changed, APPEND fills the structure
cache, and header SEARCH answers from the cache without reading messages.
"""

import gc
from io import BytesIO
from typing import Any, List, Set

from twisted.trial.unittest import SynchronousTestCase

from mailplat.imap.cache import HEADER_BUDGET, summarize
from mailplat.imap.server import SelectedView
from mailplat.imap.structure import parseMessage
from mailplat.mailbox import MessageInfo
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


class StreamedFetchTests(IMAPTestBase):
    """
    A FETCH of many messages is written in pieces, a turn of the reactor
    between them (so the client reads the first responses while the rest
    are made), and says the same as when written at once.
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(7):
            self.deliver(message(f"m{n}"), ("\\Seen", "$Label") if n % 3 else ())

    def fetchAll(self, client: Any, command: bytes) -> List[bytes]:
        """
        Run C{command}: check that only the first piece is written before
        the clock turns, then turn it until the command completes.
        """
        out = client.command(b"a " + command)
        self.assertNotIn(b"a OK", out)
        self.assertEqual(out.count(b" FETCH ("), 2)  # the first piece only
        for _ in range(20):
            self.clock.advance(0)
            out += client.take()
            if b"a OK" in out:
                break
        self.assertTagged(out, b"a", b"OK")
        return [line for line in out.split(b"\r\n") if line.startswith(b"* ")]

    def test_streamedSameAsWhole(self) -> None:
        """
        FLAGS (from the listing) and ENVELOPE (from the headers, then from
        the cache) in pieces of two or three messages: every message once,
        in order, as a fetch in one piece answers.
        """
        from mailplat.imap import server

        whole = self.selected()
        expected = {}
        for command in (b"UID FETCH 1:* (FLAGS)", b"FETCH 1:* (ENVELOPE)", b"FETCH 2:* (ENVELOPE FLAGS)"):
            out = whole.command(b"w " + command)
            # (\Recent is this session's only.)
            out = out.replace(b" \\Recent)", b")").replace(b"(\\Recent)", b"()")
            expected[command] = [line for line in out.split(b"\r\n") if line.startswith(b"* ")]
            self.assertEqual(len(expected[command]), 7 if command.startswith(b"UID") or b"1:*" in command else 6)
        whole.command(b"l LOGOUT")
        self.patch(server, "_STREAM_FIRST", 2)
        self.patch(server, "_STREAM_BATCH", 60)
        self.patch(server, "HEADER_BATCH", 3)
        from mailplat.imap.cache import MessageCache
        from mailplat.imap.server import IMAPFactory

        factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, cache=MessageCache())
        client = self.selected(client=self.connect(factory=factory))
        for command in (b"UID FETCH 1:* (FLAGS)", b"FETCH 1:* (ENVELOPE)", b"FETCH 1:* (ENVELOPE)",
                        b"FETCH 2:* (ENVELOPE FLAGS)"):
            self.assertEqual(self.fetchAll(client, command), expected[command], command)

    def test_closedWhileStreaming(self) -> None:
        """
        A connection lost between two pieces ends the FETCH: nothing more
        is written.
        """
        from mailplat.imap import server

        self.patch(server, "_STREAM_FIRST", 2)
        self.patch(server, "_STREAM_BATCH", 60)
        client = self.selected()
        out = client.command(b"a UID FETCH 1:* (FLAGS)")
        self.assertEqual(out.count(b" FETCH ("), 2)
        client.server.connectionLost(None)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(client.take(), b"")


class FlagsColumnTests(IMAPTestBase):
    """
    L{server._flagsColumn} gives what L{server._flagsWire} gives for each
    message, however its flags are held.
    """

    def test_sameAsOneByOne(self) -> None:
        from mailplat.imap.server import _flagsColumn, _flagsWire

        class Info:
            def __init__(self, uid: int, flags: Any) -> None:
                self.uid, self.flags = uid, flags

        sets = [frozenset(), frozenset(["\\Seen"]), frozenset(["$Never seen before", "\\Answered"]),
                {"\\Flagged"}, ["\\Draft", "\\Seen"]]
        infos = [Info(n, sets[n % len(sets)]) for n in range(1, 30)]
        for recent in (set(), {2, 3, 7, 29}):
            self.assertEqual(_flagsColumn(infos, recent),  # type: ignore[arg-type]
                             [_flagsWire(i.flags, i.uid in recent) for i in infos])


class HeaderScanTests(IMAPTestBase):
    """
    A header block is scanned once for ENVELOPE and once for all the
    search columns, with the answers of the whole parse.
    """

    PIECES = [
        b"From: a@b\r\n", b"from : x\r\n", b"Subject: =?utf-8?q?caf=C3=A9?=\r\n", b" continued\r\n", b"\tmore\r\n",
        b"\r\n", b"\n", b"X-Bad line\r\n", b"To:\r\n", b"Subject:a\nb\n", b"body text\r\n", b"\r", b":x\r\n",
        b"Cc: a, b\r\n", b"SUBJECT:  Two  \r\n", b"x" * 1001 + b": y\r\n", b"y" * 999 + b": z\r\n",
        b"z" * 998 + b"  : w\n", b"From:\xff\xfe\r\n", b"Received: from x\r\n by y\r\n", b" leading\r\n",
        b"Subject\t: tab\r\n", b"Sub ject: no\r\n", b"From: q", b"\x00x: y\n", b"Sender: <s@x>\r\n",
        b"Sender: group:;\r\n", b"Reply-To: r@y, \"Q\" <q@z>\r\n", b"Message-ID: <a@b>\r\n", b"In-Reply-To: <c@d>\r\n",
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n", b"Bcc: \r\n", b"To: undisclosed:;\r\n",
        b"Cc: \"a\\\"b\" <x@y>\r\n", b"Message-ID:\r\n <long@id>\r\n", b"References: <r1@x>\r\n\t<r2@x>\r\n",
    ]
    NAMES = ["from", "subject", "to", "cc", "received", "x-bad", "", "sub ject", "x" * 1001, "y" * 999, "caf\xe9",
             "message-id", "sender", "references", "zz"]

    def test_sameAsWholeParse(self) -> None:
        import random

        from mailplat.imap.structure import fieldText, fieldValues, headerEnd, headerEnvelope, headerFieldOctets

        rng = random.Random(11)
        for trial in range(3000):
            data = b"".join(rng.choice(self.PIECES) for _ in range(rng.randint(0, 10)))
            header = data[: headerEnd(data, True)]
            self.assertEqual(headerEnvelope(header), parseMessage(data).envelope(), data)
            found = {name: [fieldText(raw) for raw in raws]
                     for name, raws in headerFieldOctets(header, frozenset(self.NAMES)).items()}
            for name in self.NAMES:
                self.assertEqual(found.get(name, []), fieldValues(header, name), (data, name))
                self.assertEqual(name in found, bool(fieldValues(header, name)), (data, name))

    def test_oneScanFillsEveryColumn(self) -> None:
        """
        The first header search reads each message's header once and fills
        the columns of L{COLUMN_FIELDS} from it (the fields not asked for
        as their octets, decoded at their first search): searches on those
        fields afterwards (and after ENVELOPE) neither read nor scan a
        header.
        """
        from mailplat.imap import structure
        from mailplat.imap.cache import COLUMN_FIELDS

        self.deliver(b"From: Bob <bob@example.test>\r\nSubject: Hello\r\nMessage-ID: <m1@x>\r\nCc: carol@x\r\n"
                     b"Cc: erin@y\r\n\r\nhi\r\n")
        self.deliver(b"From: dan@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <m2@x>\r\n"
                     b"List-Id: <list.x>\r\n\r\nyo\r\n")
        client = self.selected()
        counting = CountingMailbox(client.server.view.mailbox)
        scans: List[bytes] = []
        scan, fieldValues = structure.headerFieldOctets, structure.fieldValues
        self.patch(structure, "headerFieldOctets", lambda header, *args: scans.append(header) or scan(header, *args))
        self.patch(structure, "fieldValues", lambda header, name: scans.append(header) or fieldValues(header, name))
        out = client.command(b"a SEARCH FROM bob")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertEqual(sorted(counting.opens), [1, 2])
        self.assertEqual(len(scans), 2)
        columns = client.server.cache._columns
        for name in COLUMN_FIELDS:
            self.assertEqual(len(columns[("alice@example.test", "INBOX", client.server.view.mailbox.uidValidity, name)]),
                             2, name)
        # The values not decoded yet of a field a header has once are its
        # octets, which the garbage collector does not track (a hundred
        # thousand messages make most of a million such values).
        subjects = columns[("alice@example.test", "INBOX", client.server.view.mailbox.uidValidity, "subject")]
        self.assertEqual(subjects[2], b" =?utf-8?q?caf=C3=A9?=\r")
        self.assertFalse(gc.is_tracked(subjects[2]))
        del counting.opens[:], scans[:]
        client.command(b"e FETCH 1:* (ENVELOPE)")
        for command, answer in [(b'SEARCH SUBJECT "CAF\xc3\xa9"', b"2"), (b"SEARCH HEADER Message-ID m1@", b"1"),
                                (b"SEARCH CC carol", b"1"), (b"SEARCH CC erin", b"1"),
                                (b"SEARCH HEADER List-Id list.x", b"2"),
                                (b"SEARCH OR TO nobody BCC nobody", b"")]:
            out = client.command(b"b " + command.replace(b"SEARCH ", b"SEARCH CHARSET UTF-8 ", 1))
            self.assertIn(b"* SEARCH" + (b" " + answer if answer else b"") + b"\r\n", out, command)
        self.assertEqual(counting.opens, [])
        self.assertEqual(scans, [])
        # A field outside COLUMN_FIELDS: one scan of each kept header.
        out = client.command(b"c SEARCH HEADER Date 2024")
        self.assertIn(b"* SEARCH\r\n", out)
        self.assertEqual((counting.opens, len(scans)), ([], 2))


class RecentCountTests(SynchronousTestCase):
    """
    L{SelectedView.recentCount} counts the recent UIDs still in the view,
    whether they are few (looked up one by one) or most of the view (one
    pass over it).
    """

    def view(self, uids: List[int], recent: Set[int]) -> SelectedView:
        infos = [MessageInfo(uid, frozenset(), 0.0, 10, uid) for uid in uids]
        return SelectedView(None, False, infos, recent)  # type: ignore[arg-type]

    def test_few(self) -> None:
        view = self.view(list(range(1, 1001)), {5, 999, 2000})
        self.assertEqual(view.recentCount(), 2)

    def test_many(self) -> None:
        uids = list(range(1, 1001))
        recent = set(range(1, 1201)) - {7}
        view = self.view(uids, recent)
        self.assertEqual(view.recentCount(), 999)
        self.assertEqual(view.recentCount(), sum(1 for uid in recent if view.indexOf(uid) >= 0))
