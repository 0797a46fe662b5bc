"""
Tests for QRESYNC (RFC 7162 section 3.2) in L{mailplat.imap.server}:
ENABLE QRESYNC, SELECT/EXAMINE with the QRESYNC parameter, UID FETCH
with VANISHED, VANISHED in place of EXPUNGE, and the CLOSED response
code; each checked against exact responses over a StringTransport with the
in-memory store, and once over a real socket with imaplib.
"""

import imaplib
from typing import Any, List

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailplat.auth.realm import MailRealm
from mailplat.imap.server import IMAPFactory
from mailplat.store.memory import MemoryStore
from tests.test_imap_server import Client, IMAPTestBase, message


class QResyncTests(IMAPTestBase):
    """
    QRESYNC over a StringTransport.

    The mailbox starts with UIDs 1 to 5 delivered (message n has modseq
    n + 1), then UID 3 is marked \\Seen (modseq 7) and UIDs 2 and 4 are
    expunged (the highest modseq becomes 8).
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(1, 6):
            self.deliver(message(f"m{n}"))
        box = self.mailbox()
        self.uidValidity = box.uidValidity
        self.successResultOf(box.setFlags([3], ["\\Seen"], "add"))
        self.successResultOf(box.expunge([2, 4], requireDeleted=False))

    def enabled(self) -> Client:
        """
        A logged-in client that has enabled QRESYNC.
        """
        client = self.login()
        self.assertEqual(client.command(b"E1 ENABLE QRESYNC"), b"* ENABLED QRESYNC\r\nE1 OK ENABLE completed\r\n")
        return client

    def resynced(self) -> Client:
        """
        A client with QRESYNC enabled and INBOX selected.
        """
        client = self.enabled()
        self.assertTagged(client.command(b"S1 SELECT INBOX"), b"S1", b"OK [READ-WRITE]")
        return client

    def selectHeader(self, recent: int = 3, closed: bool = False) -> bytes:
        """
        The responses of SELECT INBOX up to HIGHESTMODSEQ.
        """
        return (
            (b"* OK [CLOSED] Previous mailbox closed\r\n" if closed else b"")
            + b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            + b"* 3 EXISTS\r\n* %d RECENT\r\n" % (recent,)
            + b"* OK [UNSEEN 1] First unseen message\r\n"
            + b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
            + b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % (self.uidValidity,)
            + b"* OK [UIDNEXT 6] Predicted next UID\r\n"
            + b"* OK [HIGHESTMODSEQ 8] Highest modseq\r\n"
        )

    def test_advertised(self) -> None:
        client = self.connect()
        self.assertIn(b" QRESYNC ", client.greeting)
        self.assertIn(b" QRESYNC ", client.command(b"a CAPABILITY"))

    def test_enable(self) -> None:
        """
        ENABLE QRESYNC also turns CONDSTORE on (RFC 7162 3.2), and lists
        only what this command enabled.
        """
        client = self.enabled()
        self.assertTrue(client.server.qresync)
        self.assertTrue(client.server.condstore)
        self.assertEqual(client.command(b"a ENABLE QRESYNC CONDSTORE"), b"* ENABLED\r\na OK ENABLE completed\r\n")
        other = self.login()
        self.assertEqual(
            other.command(b"b ENABLE CONDSTORE QRESYNC"),
            b"* ENABLED CONDSTORE QRESYNC\r\nb OK ENABLE completed\r\n",
        )

    def test_selectWithKnownUids(self) -> None:
        """
        Known UIDs no longer there come in VANISHED (EARLIER); messages
        changed since the modseq in FETCH with UID, FLAGS and MODSEQ.
        """
        client = self.enabled()
        out = client.command(b"a SELECT INBOX (QRESYNC (%d 5 1:5))" % (self.uidValidity,))
        self.assertEqual(
            out,
            self.selectHeader()
            + b"* VANISHED (EARLIER) 2,4\r\n"
            + b"* 2 FETCH (UID 3 FLAGS (\\Seen \\Recent) MODSEQ (7))\r\n"
            + b"* 3 FETCH (UID 5 FLAGS (\\Recent) MODSEQ (6))\r\n"
            + b"a OK [READ-WRITE] SELECT completed\r\n",
        )

    def test_selectKnownUidsLimitVanished(self) -> None:
        """
        Only UIDs of the client's set are reported; with the newest
        modseq nothing is fetched.
        """
        client = self.enabled()
        out = client.command(b"a EXAMINE INBOX (QRESYNC (%d 8 3:4))" % (self.uidValidity,))
        self.assertEqual(
            out,
            self.selectHeader(recent=3)
            .replace(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted",
                     b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
            + b"* VANISHED (EARLIER) 4\r\n"
            + b"a OK [READ-ONLY] EXAMINE completed\r\n",
        )

    def test_selectWithoutKnownUids(self) -> None:
        """
        Without known UIDs the set is 1:UIDNEXT-1; known UIDs from
        UIDNEXT on are ignored; seq-match-data is accepted (and not
        needed).  With no expunge history, UIDs expunged before the
        client's modseq are reported again (RFC 7162 allows it).
        """
        self.successResultOf(self.mailbox().expunge([5], requireDeleted=False))
        client = self.enabled()
        out = client.command(b"a SELECT INBOX (QRESYNC (%d 6))" % (self.uidValidity,))
        self.assertIn(b"* VANISHED (EARLIER) 2,4:5\r\n* 2 FETCH (UID 3 FLAGS (\\Seen \\Recent) MODSEQ (7))\r\n", out)
        self.assertNotIn(b"UID 1 ", out)
        out = client.command(b"b SELECT INBOX (QRESYNC (%d 9 1:3,5:9 (1:2 1:3)))" % (self.uidValidity,))
        self.assertIn(b"* OK [HIGHESTMODSEQ 9] Highest modseq\r\n* VANISHED (EARLIER) 2,5\r\nb OK", out)

    def test_selectUidValidityMismatch(self) -> None:
        client = self.enabled()
        out = client.command(b"a SELECT INBOX (QRESYNC (%d 1 1:5))" % (self.uidValidity + 1,))
        self.assertEqual(out, self.selectHeader() + b"a OK [READ-WRITE] SELECT completed\r\n")

    def test_selectErrors(self) -> None:
        """
        QRESYNC in SELECT needs ENABLE QRESYNC first (RFC 7162 3.2) and a
        well-formed value.
        """
        client = self.login()
        self.assertTagged(client.command(b"a SELECT INBOX (QRESYNC (%d 1))" % (self.uidValidity,)), b"a", b"BAD")
        client = self.enabled()
        for bad in (
            b"(QRESYNC)", b"(QRESYNC 1)", b"(QRESYNC (1))", b"(QRESYNC (0 1))", b"(QRESYNC (1 0))",
            b"(QRESYNC (1 1 x))", b"(QRESYNC (1 1 1:2 (1:2)))", b"(QRESYNC (1 1 1 2 3))",
            b"(QRESYNC (1 1) QRESYNC (1 1))",
        ):
            self.assertTagged(client.command(b"b SELECT INBOX " + bad), b"b", b"BAD")

    def test_closed(self) -> None:
        """
        C{* OK [CLOSED]} comes first when SELECT or EXAMINE replaces a
        selected mailbox, not on the first SELECT nor after UNSELECT.
        """
        client = self.login()
        out = client.command(b"a SELECT INBOX")
        self.assertEqual(out, self.selectHeader() + b"a OK [READ-WRITE] SELECT completed\r\n")
        out = client.command(b"b SELECT INBOX")
        self.assertEqual(out, self.selectHeader(recent=0, closed=True) + b"b OK [READ-WRITE] SELECT completed\r\n")
        out = client.command(b"c EXAMINE Nope")
        self.assertTrue(out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\nc NO"), out)
        self.assertEqual(client.server.state, "authenticated")
        client.command(b"d SELECT INBOX")
        client.command(b"e UNSELECT")
        self.assertFalse(client.command(b"f SELECT INBOX").startswith(b"* OK [CLOSED]"))

    def test_uidFetchVanished(self) -> None:
        """
        UID FETCH with CHANGEDSINCE and VANISHED (RFC 7162 3.2): VANISHED
        (EARLIER) for the UIDs of the set that are gone, then the changes.
        """
        client = self.resynced()
        out = client.command(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 6 VANISHED)")
        self.assertEqual(
            out,
            b"* VANISHED (EARLIER) 2,4\r\n* 2 FETCH (UID 3 FLAGS (\\Seen \\Recent) MODSEQ (7))\r\n"
            b"a OK FETCH completed\r\n",
        )
        out = client.command(b"b UID FETCH 3:4 (FLAGS) (VANISHED CHANGEDSINCE 8)")
        self.assertEqual(out, b"* VANISHED (EARLIER) 4\r\nb OK FETCH completed\r\n")

    def test_uidFetchVanishedSkipsUnreported(self) -> None:
        """
        A message that arrived since the last EXISTS is not reported as
        vanished; one expunged but not yet reported stays out of VANISHED
        (EARLIER) and comes as VANISHED when expunges may be sent.
        """
        client = self.resynced()
        self.deliver(message("m6"))
        self.successResultOf(self.mailbox().expunge([1], requireDeleted=False))
        out = client.command(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 9 VANISHED)")
        self.assertEqual(out, b"* VANISHED (EARLIER) 2,4\r\n* 4 EXISTS\r\n* 4 RECENT\r\na OK FETCH completed\r\n")
        out = client.command(b"b NOOP")
        self.assertEqual(out, b"* VANISHED 1\r\nb OK NOOP completed\r\n")

    def test_uidFetchVanishedErrors(self) -> None:
        client = self.resynced()
        self.assertTagged(client.command(b"a UID FETCH 1:* (FLAGS) (VANISHED)"), b"a", b"BAD")
        self.assertTagged(client.command(b"b FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"), b"b", b"BAD")
        self.assertTagged(client.command(b"c UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED VANISHED)"), b"c", b"BAD")
        plain = self.selected()
        self.assertTagged(plain.command(b"d UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"), b"d", b"BAD")

    def test_expungeSendsVanished(self) -> None:
        client = self.resynced()
        client.command(b"a STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        out = client.command(b"b EXPUNGE")
        self.assertEqual(out, b"* VANISHED 1,5\r\nb OK EXPUNGE completed\r\n")

    def test_uidExpungeSendsVanished(self) -> None:
        client = self.resynced()
        client.command(b"a STORE 2 +FLAGS.SILENT (\\Deleted)")
        out = client.command(b"b UID EXPUNGE 1:3")
        self.assertEqual(out, b"* VANISHED 3\r\nb OK UID EXPUNGE completed\r\n")

    def test_moveSendsVanished(self) -> None:
        client = self.resynced()
        client.command(b"a CREATE Archive")
        out = client.command(b"b MOVE 2:3 Archive")
        self.assertEqual(out, b"* OK [COPYUID %d 3,5 1:2] Moved\r\n* VANISHED 3,5\r\nb OK MOVE completed\r\n"
                         % (self.mailbox("Archive").uidValidity,))

    def test_closeIsSilent(self) -> None:
        client = self.resynced()
        client.command(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(client.command(b"b CLOSE"), b"b OK CLOSE completed\r\n")
        self.assertEqual([i.uid for i in self.successResultOf(self.mailbox().listMessages())], [3, 5])

    def test_otherSessionExpunge(self) -> None:
        """
        Another session's expunge: deferred during FETCH (RFC 3501 7.4.1),
        then VANISHED; flag changes carry UID and MODSEQ.
        """
        client = self.resynced()
        other = self.selected()
        other.command(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.command(b"b STORE 2 +FLAGS.SILENT (\\Flagged)")
        other.command(b"c EXPUNGE")
        out = client.command(b"d FETCH 3 (UID)")
        self.assertEqual(out, b"* 3 FETCH (UID 5)\r\n* 2 FETCH (UID 3 FLAGS (\\Flagged \\Seen \\Recent) MODSEQ (10))\r\n"
                         b"d OK FETCH completed\r\n")
        self.assertEqual(client.command(b"e NOOP"), b"* VANISHED 1\r\ne OK NOOP completed\r\n")

    def test_storeHasUid(self) -> None:
        client = self.resynced()
        out = client.command(b"a STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent) UID 3 MODSEQ (9))\r\na OK STORE completed\r\n")

    def test_implicitSeenHasUid(self) -> None:
        """
        FETCH of a body sets \\Seen; the flag change carries UID and
        MODSEQ with QRESYNC (RFC 7162 3.2).
        """
        client = self.resynced()
        out = client.command(b"a FETCH 1 (RFC822.SIZE BODY[TEXT])")
        self.assertEqual(
            out,
            b"* 1 FETCH (RFC822.SIZE 45 BODY[TEXT] {6}\r\nbody\r\n FLAGS (\\Seen \\Recent) UID 1 MODSEQ (9))\r\n"
            b"a OK FETCH completed\r\n",
        )
        out = client.command(b"b FETCH 3 (FLAGS)")
        self.assertEqual(out, b"* 3 FETCH (FLAGS (\\Recent))\r\nb OK FETCH completed\r\n")


class RealSocketQResyncTests(TestCase):
    """
    QRESYNC over a real loopback socket, driven by imaplib with raw
    commands.
    """

    @defer.inlineCallbacks
    def test_imaplibQresync(self) -> Any:
        store = MemoryStore()
        account = yield store.getAccount("alice@example.test", create=True)
        box = yield account.getMailbox("INBOX")
        from io import BytesIO

        for n in range(1, 4):
            yield box.append(BytesIO(message(f"m{n}")), (), None)
        yield box.expunge([2], requireDeleted=False)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice@example.test", b"secret")
        factory = IMAPFactory(Portal(MailRealm(store), [checker]), "mail.example.test")
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        uidValidity = box.uidValidity

        def client() -> List[Any]:
            conn = imaplib.IMAP4("127.0.0.1", number, timeout=20)
            try:
                caps = set(conn.capabilities)
                conn.login("alice@example.test", "secret")
                enabled = conn.xatom("ENABLE", "QRESYNC")
                enabledData = conn.untagged_responses.pop("ENABLED", None)
                select = conn.xatom("SELECT", "INBOX (QRESYNC (%d 1 1:3))" % (uidValidity,))
                vanished = conn.untagged_responses.pop("VANISHED", None)
                fetched = conn.untagged_responses.pop("FETCH", None)
            finally:
                conn.logout()
            return [caps, enabled[0], enabledData, select[0], vanished, fetched]

        caps, enabled, enabledData, select, vanished, fetched = yield threads.deferToThread(client)
        self.assertIn("QRESYNC", caps)
        self.assertEqual((enabled, select), ("OK", "OK"))
        self.assertEqual(enabledData, [b"QRESYNC"])
        self.assertEqual(vanished, [b"(EARLIER) 2"])
        self.assertEqual(fetched, [b"1 (UID 1 FLAGS (\\Recent) MODSEQ (2))", b"2 (UID 3 FLAGS (\\Recent) MODSEQ (4))"])
