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
    Count a mailbox's L{listMessages} and L{openMessage} calls (by
    patching the instance, so it stays the object listeners are told of).
    """

    def __init__(self, mailbox: Any) -> None:
        self.lists = 0
        self.opens: List[int] = []
        listMessages, openMessage = mailbox.listMessages, mailbox.openMessage

        def countedList() -> Any:
            self.lists += 1
            return listMessages()

        def countedOpen(uid: int) -> Any:
            self.opens.append(uid)
            return openMessage(uid)

        mailbox.listMessages = countedList
        mailbox.openMessage = countedOpen


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
        client.command(b"a FETCH 1 (ENVELOPE)")
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
