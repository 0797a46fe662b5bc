"""
Tests for L{mailplat.imap.server}: the IMAP4rev1 session over a
StringTransport, with the in-memory store.
"""

import base64
from io import BytesIO
from typing import List, Optional, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailplat.auth.realm import MailRealm
from mailplat.imap.server import IMAPFactory, IMAPServer
from mailplat.store.memory import MemoryStore

ALICE = "alice@example.test"

SIMPLE = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: Hello there\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Alice,\r\nhow are you?\r\n"
)

MULTIPART = (
    b"From: bob@example.test\r\n"
    b"Subject: Parts\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="xx"\r\n'
    b"\r\n"
    b"--xx\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--xx\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>second</p>\r\n"
    b"--xx--\r\n"
)


def message(subject: str, body: bytes = b"body\r\n") -> bytes:
    return b"From: bob@example.test\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


class Client:
    """
    One session over a StringTransport.
    """

    def __init__(self, factory: IMAPFactory, host: str = "127.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.server: IMAPServer = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        self.drain()
        return self.take()

    def drain(self) -> None:
        """
        Pull a registered producer until it is done (a real transport does).
        """
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def lines(self, data: bytes) -> List[bytes]:
        return self.send(data).split(b"\r\n")[:-1]

    def command(self, line: bytes) -> bytes:
        return self.send(line + b"\r\n")


class IMAPTestBase(SynchronousTestCase):
    """
    A store with alice, a portal and a clock.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(ALICE.encode(), b"secret")
        checker.addUser(b"bob@example.test", b"hunter2")
        self.portal = Portal(MailRealm(self.store), [checker])
        self.clock = task.Clock()
        self.factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock)
        self.account = self.successResultOf(self.store.getAccount(ALICE, create=True))

    def tearDown(self) -> None:
        pass

    def connect(self, host: str = "127.0.0.1", factory: Optional[IMAPFactory] = None) -> Client:
        client = Client(factory or self.factory, host)
        self.addCleanup(self._close, client)
        return client

    def _close(self, client: Client) -> None:
        if not client.transport.disconnecting:
            client.server.connectionLost(None)

    def login(self, client: Optional[Client] = None) -> Client:
        client = client or self.connect()
        out = client.command(b"L1 LOGIN alice@example.test secret")
        self.assertIn(b"L1 OK", out)
        return client

    def selected(self, name: bytes = b"INBOX", client: Optional[Client] = None) -> Client:
        client = self.login(client)
        out = client.command(b"S1 SELECT " + name)
        self.assertIn(b"S1 OK [READ-WRITE]", out)
        return client

    def mailbox(self, name: str = "INBOX"):
        return self.successResultOf(self.account.getMailbox(name))

    def deliver(self, data: bytes, flags: Tuple[str, ...] = (), name: str = "INBOX", date: Optional[float] = None) -> int:
        return self.successResultOf(self.mailbox(name).append(BytesIO(data), flags, date))

    def assertTagged(self, out: bytes, tag: bytes, status: bytes) -> bytes:
        """
        The tagged line of C{tag} starts with C{status}; returns it.
        """
        for line in out.split(b"\r\n"):
            if line.startswith(tag + b" "):
                self.assertTrue(line.startswith(tag + b" " + status), line)
                return line
        self.fail(f"no tagged {tag!r} response in {out!r}")


class GreetingAndCapabilityTests(IMAPTestBase):
    def test_greeting(self) -> None:
        client = self.connect()
        self.assertTrue(client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "), client.greeting)
        self.assertIn(b"AUTH=PLAIN", client.greeting)
        self.assertTrue(client.greeting.endswith(b"] mailplat ready\r\n"))

    def test_capability(self) -> None:
        client = self.connect()
        out = client.command(b"a CAPABILITY")
        self.assertIn(b"* CAPABILITY IMAP4rev1", out)
        for cap in (b"IDLE", b"UIDPLUS", b"AUTH=PLAIN", b"SASL-IR"):
            self.assertIn(cap, out)
        self.assertNotIn(b"LOGINDISABLED", out)
        self.assertNotIn(b"STARTTLS", out)
        self.assertTagged(out, b"a", b"OK")

    def test_loginDisabledOffLoopback(self) -> None:
        client = self.connect("192.0.2.7")
        self.assertIn(b"LOGINDISABLED", client.greeting)
        self.assertNotIn(b"AUTH=PLAIN", client.greeting)
        out = client.command(b"a LOGIN alice@example.test secret")
        self.assertTagged(out, b"a", b"NO [PRIVACYREQUIRED]")
        out = client.command(b"b AUTHENTICATE PLAIN")
        self.assertTagged(out, b"b", b"NO [PRIVACYREQUIRED]")
        self.assertNotIn(b"+ ", out)

    def test_noDelay(self) -> None:
        calls = []
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        server = self.factory.buildProtocol(None)
        server.makeConnection(transport)
        self.assertEqual(calls, [True])
        server.connectionLost(None)

    def test_noop(self) -> None:
        client = self.connect()
        self.assertEqual(client.command(b"a NOOP"), b"a OK NOOP completed\r\n")

    def test_unknownCommand(self) -> None:
        client = self.connect()
        self.assertTagged(client.command(b"a FROB"), b"a", b"BAD")
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_badTag(self) -> None:
        client = self.connect()
        self.assertEqual(client.command(b"+ NOOP"), b"* BAD Invalid tag\r\n")
        self.assertEqual(client.command(b"a"), b"a BAD Missing command\r\n")
        self.assertEqual(client.command(b""), b"")

    def test_wrongState(self) -> None:
        client = self.connect()
        self.assertTagged(client.command(b"a SELECT INBOX"), b"a", b"BAD")
        self.assertTagged(client.command(b"b FETCH 1 FLAGS"), b"b", b"BAD")
        self.login(client)
        self.assertTagged(client.command(b"c LOGIN a b"), b"c", b"BAD")
        self.assertTagged(client.command(b"d FETCH 1 FLAGS"), b"d", b"BAD")

    def test_logout(self) -> None:
        client = self.connect()
        out = client.command(b"a LOGOUT")
        self.assertEqual(out, b"* BYE mail.example.test logging out\r\na OK LOGOUT completed\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_parseErrorIsBad(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b'a LIST "unterminated'), b"a", b"BAD")
        self.assertTagged(client.command(b"b CREATE"), b"b", b"BAD")


class ErrorLimitTests(IMAPTestBase):
    """
    A session that keeps sending what the server cannot understand is
    closed after the factory's C{maxErrors} BAD answers.
    """

    def test_closedAfterLimit(self) -> None:
        self.factory.maxErrors = 3
        client = self.connect()
        self.assertIn(b"a BAD", client.command(b"a FOO"))
        self.assertFalse(client.transport.disconnecting)
        client.command(b"b BAR")
        out = client.command(b"c BAZ")
        self.assertIn(b"c BAD", out)
        self.assertIn(b"* BYE Too many errors", out)
        self.assertTrue(client.transport.disconnecting)

    def test_noOnlyDoesNotCount(self) -> None:
        """
        NO answers (a wrong mailbox name, say) are not protocol errors.
        """
        self.factory.maxErrors = 2
        client = self.login()
        for n in range(5):
            self.assertIn(b"NO", client.command(b"s%d SELECT nosuch" % n))
        self.assertFalse(client.transport.disconnecting)


class LoginTests(IMAPTestBase):
    def test_login(self) -> None:
        client = self.connect()
        out = client.command(b"a LOGIN Alice@Example.Test secret")
        line = self.assertTagged(out, b"a", b"OK")
        self.assertIn(b"[CAPABILITY IMAP4rev1", line)
        self.assertNotIn(b"AUTH=PLAIN", line)
        self.assertEqual(client.server.state, "authenticated")

    def test_loginQuotedAndLiteral(self) -> None:
        client = self.connect()
        out = client.send(b'a LOGIN "alice@example.test" {6}\r\n')
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = client.send(b"secret\r\n")
        self.assertTagged(out, b"a", b"OK")

    def test_wrongPassword(self) -> None:
        client = self.connect()
        out = client.command(b"a LOGIN alice@example.test wrong")
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertEqual(client.server.state, "not authenticated")

    def test_unknownUser(self) -> None:
        client = self.connect()
        out = client.command(b"a LOGIN nobody@example.test secret")
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def test_tooManyFailures(self) -> None:
        client = self.connect()
        for i in range(5):
            out = client.command(b"a LOGIN alice@example.test wrong")
        self.assertIn(b"* BYE", out)
        self.assertTrue(client.transport.disconnecting)

    def test_authenticatePlain(self) -> None:
        client = self.connect()
        out = client.command(b"a AUTHENTICATE PLAIN")
        self.assertEqual(out, b"+ \r\n")
        out = client.send(base64.b64encode(b"\x00alice@example.test\x00secret") + b"\r\n")
        self.assertTagged(out, b"a", b"OK")
        self.assertEqual(client.server.state, "authenticated")

    def test_authenticatePlainInitialResponse(self) -> None:
        client = self.connect()
        out = client.command(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"alice@example.test\x00alice@example.test\x00secret"))
        self.assertTagged(out, b"a", b"OK")

    def test_authenticateWrong(self) -> None:
        client = self.connect()
        out = client.command(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"\x00alice@example.test\x00nope"))
        self.assertTagged(out, b"a", b"NO [AUTHENTICATIONFAILED]")

    def test_authenticateOtherAuthzid(self) -> None:
        client = self.connect()
        out = client.command(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"bob@example.test\x00alice@example.test\x00secret"))
        self.assertTagged(out, b"a", b"NO")
        self.assertEqual(client.server.state, "not authenticated")

    def test_authenticateCancel(self) -> None:
        client = self.connect()
        client.command(b"a AUTHENTICATE PLAIN")
        out = client.send(b"*\r\n")
        self.assertTagged(out, b"a", b"BAD")
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_authenticateBadBase64(self) -> None:
        client = self.connect()
        client.command(b"a AUTHENTICATE PLAIN")
        self.assertTagged(client.send(b"!!!\r\n"), b"a", b"BAD")

    def test_authenticateOtherMechanism(self) -> None:
        client = self.connect()
        self.assertTagged(client.command(b"a AUTHENTICATE GSSAPI"), b"a", b"NO")

    def test_logoutCallsAvatarLogout(self) -> None:
        client = self.login()
        called = []
        client.server._logout = lambda: called.append(True)
        client.server.connectionLost(None)
        self.assertEqual(called, [True])


class MailboxCommandTests(IMAPTestBase):
    def test_createListDelete(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a CREATE Projects/Alpha"), b"a", b"OK")
        out = client.command(b'b LIST "" Projects*')
        self.assertIn(b'* LIST (\\HasChildren) "/" "Projects"', out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "Projects/Alpha"', out)
        out = client.command(b'c LIST "" %')
        self.assertIn(b'"Projects"', out)
        self.assertNotIn(b"Projects/Alpha", out)
        out = client.command(b"d LIST Projects/ %")
        self.assertIn(b'"Projects/Alpha"', out)
        self.assertTagged(client.command(b"e DELETE Projects/Alpha"), b"e", b"OK")
        self.assertNotIn(b"Alpha", client.command(b'f LIST "" *'))

    def test_createExisting(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a CREATE Sent"), b"a", b"NO [ALREADYEXISTS]")
        self.assertTagged(client.command(b"b CREATE inbox"), b"b", b"NO [ALREADYEXISTS]")

    def test_createTrailingDelimiter(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a CREATE Folder/"), b"a", b"OK")
        self.assertIn(b'"Folder"', client.command(b'b LIST "" Folder'))

    def test_deleteMissing(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a DELETE Nope"), b"a", b"NO [NONEXISTENT]")

    def test_deleteInbox(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a DELETE INBOX"), b"a", b"NO")

    def test_rename(self) -> None:
        client = self.login()
        client.command(b"a CREATE Old/Child")
        self.assertTagged(client.command(b"b RENAME Old New"), b"b", b"OK")
        out = client.command(b'c LIST "" *')
        self.assertIn(b'"New/Child"', out)
        self.assertNotIn(b'"Old', out)
        self.assertTagged(client.command(b"d RENAME Nope Other"), b"d", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"e RENAME New Sent"), b"e", b"NO [ALREADYEXISTS]")

    def test_listDelimiter(self) -> None:
        client = self.login()
        out = client.command(b'a LIST "" ""')
        self.assertEqual(out, b'* LIST (\\Noselect) "/" ""\r\na OK LIST completed\r\n')

    def test_listInboxCaseInsensitive(self) -> None:
        client = self.login()
        self.assertIn(b'"INBOX"', client.command(b'a LIST "" inbox'))

    def test_mutf7Names(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a CREATE Entw&APw-rfe"), b"a", b"OK")
        self.successResultOf(self.account.getMailbox("Entw\u00fcrfe"))
        out = client.command(b'b LIST "" Entw*')
        self.assertIn(b'"Entw&APw-rfe"', out)
        out = client.command(b"c STATUS Entw&APw-rfe (MESSAGES)")
        self.assertIn(b'* STATUS "Entw&APw-rfe" (MESSAGES 0)', out)
        self.assertTagged(client.command(b"d CREATE &-Amp"), b"d", b"OK")
        self.successResultOf(self.account.getMailbox("&Amp"))

    def test_invalidMutf7(self) -> None:
        client = self.login()
        out = client.command(b"a CREATE Bad&Name")
        line = self.assertTagged(out, b"a", b"BAD")
        self.assertIn(b"modified UTF-7", line.replace(b"'&'", b"modified UTF-7"))
        self.assertTagged(client.command("b CREATE Entw\u00fcrfe".encode("utf-8")), b"b", b"BAD")
        self.assertTagged(client.command(b"c CREATE &AGE-"), b"c", b"BAD")

    def test_nameEscapesRefused(self) -> None:
        client = self.login()
        for i, name in enumerate([b"..", b"a/../b", b"/etc", b"a//b", b"../../x", b'"a\\\\b"', b"./x"]):
            tag = b"t%d" % i
            self.assertTagged(client.command(tag + b" CREATE " + name), tag, b"NO [CANNOT]")
        tag = b"s1"
        self.assertTagged(client.command(b"s1 SELECT ../INBOX"), tag, b"NO [CANNOT]")
        out = client.command(b'l LIST "" *')
        self.assertNotIn(b"etc", out)

    def test_subscribeLsub(self) -> None:
        client = self.login()
        client.command(b"a CREATE Lists/Twisted")
        self.assertTagged(client.command(b"b SUBSCRIBE Lists/Twisted"), b"b", b"OK")
        out = client.command(b'c LSUB "" *')
        self.assertIn(b'* LSUB () "/" "Lists/Twisted"', out)
        self.assertIn(b'* LSUB () "/" "INBOX"', out)
        out = client.command(b'd LSUB "" %')
        self.assertIn(b'* LSUB (\\Noselect) "/" "Lists"', out)
        self.assertTagged(client.command(b"e UNSUBSCRIBE Lists/Twisted"), b"e", b"OK")
        self.assertNotIn(b"Twisted", client.command(b'f LSUB "" *'))
        self.assertTagged(client.command(b"g UNSUBSCRIBE Lists/Twisted"), b"g", b"NO")

    def test_status(self) -> None:
        self.deliver(message("one"))
        self.deliver(message("two"), ("\\Seen",))
        client = self.login()
        out = client.command(b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        v = self.mailbox().uidValidity
        self.assertIn(b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 1)' % v, out)
        self.assertTagged(out, b"a", b"OK")
        self.assertTagged(client.command(b"b STATUS Nope (MESSAGES)"), b"b", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"c STATUS INBOX (BOGUS)"), b"c", b"BAD")

    def test_namespace(self) -> None:
        client = self.login()
        # The memory store keeps ACLs: the shared namespace is served.
        self.assertIn(b'* NAMESPACE (("" "/")) (("shared/" "/")) NIL', client.command(b"a NAMESPACE"))


class AppendTests(IMAPTestBase):
    def test_appendLiteral(self) -> None:
        client = self.login()
        data = message("appended")
        out = client.send(b'a APPEND INBOX (\\Seen $Work) "17-Jul-1996 02:44:25 -0700" {%d}\r\n' % len(data))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = client.send(data + b"\r\n")
        v = self.mailbox().uidValidity
        self.assertEqual(out, b"a OK [APPENDUID %d 1] APPEND completed\r\n" % v)
        [info] = self.successResultOf(self.mailbox().listMessages())
        self.assertEqual(info.flags, frozenset(["\\Seen", "$Work"]))
        self.assertEqual(info.internalDate, 837596665.0)
        body = self.successResultOf(self.mailbox().openMessage(1)).read()
        self.assertEqual(body, data)

    def test_appendPlain(self) -> None:
        client = self.login()
        client.send(b"a APPEND Sent {5}\r\n")
        self.assertTagged(client.send(b"hello\r\n"), b"a", b"OK [APPENDUID")

    def test_appendMissingMailbox(self) -> None:
        client = self.login()
        client.send(b"a APPEND Nope {5}\r\n")
        self.assertTagged(client.send(b"hello\r\n"), b"a", b"NO [TRYCREATE]")

    def test_appendTooBig(self) -> None:
        """
        A literal over the limit is refused without a continuation; the
        client does not send it and the connection stays in sync.
        """
        factory = IMAPFactory(self.portal, "mail.example.test", maxLiteralSize=1000, clock=self.clock)
        client = self.login(self.connect(factory=factory))
        out = client.send(b"a APPEND INBOX {1001}\r\n")
        self.assertEqual(out, b"a NO [TOOBIG] Message too large\r\n")
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_hugeLiteralElsewhere(self) -> None:
        client = self.login()
        out = client.send(b"a LOGIN {99999999}\r\n")
        self.assertTagged(out, b"a", b"BAD")
        self.assertNotIn(b"+ Ready", out)
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_nonSyncLiteralTooBigSkipped(self) -> None:
        """
        A LITERAL+ message over the size limit is read and thrown away
        (RFC 7888 4), answered NO [TOOBIG]; the next command runs.
        """
        factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, maxLiteralSize=4)
        client = self.login(self.connect(factory=factory))
        out = client.send(b"a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n")
        self.assertEqual(out, b"a NO [TOOBIG] Message too large\r\nb OK NOOP completed\r\n")
        self.assertEqual(self.successResultOf(self.mailbox().listMessages()), [])

    def test_appendNotAuthenticated(self) -> None:
        client = self.connect()
        out = client.send(b"a APPEND INBOX {5}\r\n")
        self.assertTagged(out, b"a", b"BAD")
        self.assertNotIn(b"+", out)

    def test_appendLargeSpooled(self) -> None:
        """
        A 20 MB APPEND arrives in chunks into a temporary file.
        """
        client = self.login()
        size = 20 * 1024 * 1024
        header = b"Subject: big\r\n\r\n"
        out = client.send(b"a APPEND INBOX {%d}\r\n" % size)
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        chunk = b"x" * 78 + b"\r\n"
        client.server.dataReceived(header)
        remaining = size - len(header)
        block = chunk * (65536 // len(chunk))
        while remaining > 0:
            piece = block[:remaining]
            client.server.dataReceived(piece)
            remaining -= len(piece)
        # Collected in a temporary file that has moved to disk.
        spooled = client.server._framer._parts[1]
        self.assertEqual(spooled.size, size)
        self.assertTrue(spooled.file._rolled)
        out = client.send(b"\r\n")
        self.assertTagged(out, b"a", b"OK [APPENDUID")
        [info] = self.successResultOf(self.mailbox().listMessages())
        self.assertEqual(info.size, size)

    def test_appendBadDate(self) -> None:
        client = self.login()
        out = client.send(b'a APPEND INBOX "bogus date" {5}\r\n')
        client_out = out + client.send(b"hello\r\n")
        self.assertTagged(client_out, b"a", b"BAD")

    def test_appendSelectedSeesExists(self) -> None:
        client = self.selected()
        client.send(b"a APPEND INBOX {5}\r\n")
        out = client.send(b"hello\r\n")
        self.assertIn(b"* 1 EXISTS", out)
        self.assertIn(b"* 1 RECENT", out)
        self.assertTrue(out.index(b"EXISTS") < out.index(b"a OK"))


class SelectTests(IMAPTestBase):
    def test_select(self) -> None:
        self.deliver(message("one"), ("\\Seen",))
        self.deliver(message("two"), ("$Label",))
        client = self.login()
        out = client.command(b"a SELECT INBOX")
        v = self.mailbox().uidValidity
        self.assertEqual(
            out.split(b"\r\n")[:-1],
            [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)",
                b"* 2 EXISTS",
                b"* 2 RECENT",
                b"* OK [UNSEEN 2] First unseen message",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted",
                b"* OK [UIDVALIDITY %d] UIDs valid" % v,
                b"* OK [UIDNEXT 3] Predicted next UID",
                b"* OK [HIGHESTMODSEQ 3] Highest modseq",
                b"a OK [READ-WRITE] SELECT completed",
            ],
        )
        self.assertEqual(client.server.state, "selected")
        # Recent was claimed: another session sees none.
        other = self.login()
        self.assertIn(b"* 0 RECENT", other.command(b"b SELECT INBOX"))

    def test_examine(self) -> None:
        self.deliver(message("one"))
        client = self.login()
        out = client.command(b"a EXAMINE INBOX")
        self.assertIn(b"* 1 RECENT", out)
        self.assertIn(b"[PERMANENTFLAGS ()]", out)
        self.assertTagged(out, b"a", b"OK [READ-ONLY]")
        # Not claimed.
        self.assertEqual(self.successResultOf(self.mailbox().status()).recent, 1)
        self.assertTagged(client.command(b"b STORE 1 +FLAGS (\\Seen)"), b"b", b"NO [READ-ONLY]")
        self.assertTagged(client.command(b"c EXPUNGE"), b"c", b"NO")
        client.command(b"d FETCH 1 BODY[]")
        self.assertEqual(self.successResultOf(self.mailbox().listMessages())[0].flags, frozenset())

    def test_selectMissing(self) -> None:
        client = self.selected()
        self.assertTagged(client.command(b"a SELECT Nope"), b"a", b"NO [NONEXISTENT]")
        self.assertEqual(client.server.state, "authenticated")
        self.assertTagged(client.command(b"b FETCH 1 FLAGS"), b"b", b"BAD")

    def test_reselectRemovesListener(self) -> None:
        client = self.selected()
        client.command(b"a SELECT Sent")
        self.assertNotIn(client.server, self.mailbox()._listeners._listeners)
        self.assertIn(client.server, self.mailbox("Sent")._listeners._listeners)
        client.command(b"b CLOSE")
        self.assertNotIn(client.server, self.mailbox("Sent")._listeners._listeners)
        client.command(b"c SELECT INBOX")
        client.server.connectionLost(None)
        self.assertNotIn(client.server, self.mailbox()._listeners._listeners)

    def test_closeExpunges(self) -> None:
        self.deliver(message("one"), ("\\Deleted",))
        self.deliver(message("two"))
        client = self.selected()
        out = client.command(b"a CLOSE")
        self.assertEqual(out, b"a OK CLOSE completed\r\n")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 1)
        self.assertEqual(client.server.state, "authenticated")

    def test_closeReadOnlyKeeps(self) -> None:
        self.deliver(message("one"), ("\\Deleted",))
        client = self.login()
        client.command(b"a EXAMINE INBOX")
        client.command(b"b CLOSE")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 1)

    def test_unselect(self) -> None:
        self.deliver(message("one"), ("\\Deleted",))
        client = self.selected()
        self.assertEqual(client.command(b"a UNSELECT"), b"a OK UNSELECT completed\r\n")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 1)

    def test_check(self) -> None:
        client = self.selected()
        self.assertEqual(client.command(b"a CHECK"), b"a OK CHECK completed\r\n")


class FetchTests(IMAPTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(SIMPLE, ("\\Flagged",), date=837596665.0)
        self.deliver(MULTIPART, ("\\Seen",))
        self.client = self.selected()

    def test_flagsUidSize(self) -> None:
        out = self.client.command(b"a FETCH 1:2 (FLAGS UID RFC822.SIZE INTERNALDATE)")
        self.assertIn(
            b'* 1 FETCH (FLAGS (\\Flagged \\Recent) UID 1 RFC822.SIZE %d INTERNALDATE "17-Jul-1996 09:44:25 +0000")' % len(SIMPLE),
            out,
        )
        self.assertIn(b"* 2 FETCH (FLAGS (\\Seen \\Recent) UID 2 RFC822.SIZE %d" % len(MULTIPART), out)
        self.assertTagged(out, b"a", b"OK FETCH completed")

    def test_macros(self) -> None:
        out = self.client.command(b"a FETCH 1 FAST")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent) INTERNALDATE", out)
        out = self.client.command(b"b FETCH 1 ALL")
        self.assertIn(b'ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "Hello there"', out)
        out = self.client.command(b"c FETCH 2 FULL")
        self.assertIn(b'BODY (("TEXT" "PLAIN"', out)

    def test_envelopeAndStructure(self) -> None:
        out = self.client.command(b"a FETCH 2 (ENVELOPE BODYSTRUCTURE)")
        self.assertIn(b'"Parts"', out)
        self.assertIn(b'BODYSTRUCTURE (("TEXT" "PLAIN"', out)
        self.assertIn(b'"MIXED" ("BOUNDARY" "xx")', out)

    def test_bodySetsSeen(self) -> None:
        out = self.client.command(b"a FETCH 1 BODY[]")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Flagged \\Seen \\Recent))\r\na OK FETCH completed\r\n" % (len(SIMPLE), SIMPLE),
        )
        [info, _] = self.successResultOf(self.mailbox().listMessages())
        self.assertIn("\\Seen", info.flags)
        # Nothing left to report on the next command.
        self.assertEqual(self.client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_peekDoesNotSetSeen(self) -> None:
        out = self.client.command(b"a FETCH 1 BODY.PEEK[]")
        self.assertNotIn(b"FLAGS", out)
        [info, _] = self.successResultOf(self.mailbox().listMessages())
        self.assertNotIn("\\Seen", info.flags)

    def test_sections(self) -> None:
        out = self.client.command(b"a FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<0.6>)")
        self.assertIn(b"BODY[1] {10}\r\nfirst part", out)
        self.assertIn(b"BODY[2.MIME] {27}\r\nContent-Type: text/html\r\n\r\n", out)
        self.assertIn(b"BODY[HEADER.FIELDS (Subject)] {18}\r\nSubject: Parts\r\n\r\n", out)
        self.assertIn(b"BODY[TEXT]<0> {6}\r\n--xx\r\n", out)

    def test_header(self) -> None:
        out = self.client.command(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (To From Date Message-ID)])")
        self.assertIn(b"{24}\r\nSubject: Hello there\r\n\r\n", out)

    def test_partial(self) -> None:
        out = self.client.command(b"a FETCH 1 (BODY.PEEK[]<6.3> BODY.PEEK[]<100000.5>)")
        self.assertIn(b"BODY[]<6> {3}\r\nBob", out)
        self.assertIn(b'BODY[]<100000> {0}\r\n', out)

    def test_rfc822(self) -> None:
        out = self.client.command(b"a FETCH 1 (RFC822.HEADER RFC822.TEXT)")
        header, _, text = SIMPLE.partition(b"\r\n\r\n")
        self.assertIn(b"RFC822.HEADER {%d}\r\n%s\r\n\r\n" % (len(header) + 4, header), out)
        self.assertIn(b"RFC822.TEXT {%d}\r\n%s" % (len(text), text), out)
        self.assertIn(b"FLAGS (\\Flagged \\Seen \\Recent)", out)
        out = self.client.command(b"b FETCH 1 RFC822")
        self.assertIn(b"RFC822 {%d}\r\n%s" % (len(SIMPLE), SIMPLE), out)

    def test_uidFetch(self) -> None:
        out = self.client.command(b"a UID FETCH 2:* FLAGS")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\na OK FETCH completed\r\n")
        out = self.client.command(b"b UID FETCH 5:* FLAGS")
        self.assertIn(b"* 2 FETCH (UID 2", out)
        self.assertEqual(self.client.command(b"c UID FETCH 7 FLAGS"), b"c OK FETCH completed\r\n")

    def test_badSequence(self) -> None:
        self.assertTagged(self.client.command(b"a FETCH 3 FLAGS"), b"a", b"BAD")
        self.assertTagged(self.client.command(b"b FETCH 1 (FLAGS"), b"b", b"BAD")
        self.assertTagged(self.client.command(b"c FETCH 1 BOGUS"), b"c", b"BAD")
        self.assertTagged(self.client.command(b"d FETCH x FLAGS"), b"d", b"BAD")

    def test_largeMessageStreamed(self) -> None:
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (20 * 1024)
        self.deliver(big)
        self.client.command(b"n NOOP")
        transport = self.client.transport
        self.client.server.dataReceived(b"a FETCH 3 BODY.PEEK[]\r\n")
        self.assertIsNotNone(transport.producer)
        self.client.drain()
        out = self.client.take()
        prefix = b"* 3 FETCH (BODY[] {%d}\r\n" % len(big)
        self.assertTrue(out.startswith(prefix))
        self.assertEqual(out[len(prefix):len(prefix) + len(big)], big)
        self.assertEqual(out[len(prefix) + len(big):], b")\r\na OK FETCH completed\r\n")

    def test_pipelinedDuringStream(self) -> None:
        """
        Commands that arrive while a body is being streamed wait their turn.
        """
        big = b"Subject: big\r\n\r\n" + b"z" * (1024 * 1024)
        self.deliver(big)
        self.client.command(b"n NOOP")
        self.client.server.dataReceived(b"a FETCH 3 BODY.PEEK[]\r\nb NOOP\r\n")
        self.assertNotIn(b"b OK", self.client.transport.value())
        self.client.drain()
        out = self.client.take()
        self.assertTrue(out.endswith(b")\r\na OK FETCH completed\r\nb OK NOOP completed\r\n"))


class StoreTests(IMAPTestBase):
    def setUp(self) -> None:
        super().setUp()
        for i in range(3):
            self.deliver(message(f"m{i}"))
        self.client = self.selected()

    def flags(self) -> List[frozenset]:
        return [i.flags for i in self.successResultOf(self.mailbox().listMessages())]

    def test_addRemoveSet(self) -> None:
        out = self.client.command(b"a STORE 1:2 +FLAGS (\\Seen $Work)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Seen $Work \\Recent))", out)
        self.assertIn(b"* 2 FETCH (FLAGS (\\Seen $Work \\Recent))", out)
        out = self.client.command(b"b STORE 1 -FLAGS \\Seen")
        self.assertIn(b"* 1 FETCH (FLAGS ($Work \\Recent))", out)
        out = self.client.command(b"c STORE 3 FLAGS (\\Answered)")
        self.assertIn(b"* 3 FETCH (FLAGS (\\Answered \\Recent))", out)
        self.assertEqual(self.flags(), [frozenset(["$Work"]), frozenset(["\\Seen", "$Work"]), frozenset(["\\Answered"])])

    def test_silent(self) -> None:
        out = self.client.command(b"a STORE 1:* +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(out, b"a OK STORE completed\r\n")
        self.assertTrue(all("\\Deleted" in f for f in self.flags()))

    def test_uidStore(self) -> None:
        out = self.client.command(b"a UID STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged \\Recent) UID 2)\r\na OK STORE completed\r\n")

    def test_invalid(self) -> None:
        self.assertTagged(self.client.command(b"a STORE 1 +FLAGS (\\Recent)"), b"a", b"BAD")
        self.assertTagged(self.client.command(b"b STORE 1 BOGUS (\\Seen)"), b"b", b"BAD")
        self.assertTagged(self.client.command(b"c STORE 9 +FLAGS (\\Seen)"), b"c", b"BAD")

    def test_expungeRenumbering(self) -> None:
        self.deliver(message("m3"))
        self.deliver(message("m4"))
        self.client.command(b"n NOOP")
        self.client.command(b"a STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
        out = self.client.command(b"b EXPUNGE")
        self.assertEqual(out, b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n* 3 EXPUNGE\r\nb OK EXPUNGE completed\r\n")
        out = self.client.command(b"c FETCH 1:* UID")
        self.assertEqual(out, b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 4)\r\nc OK FETCH completed\r\n")

    def test_uidExpunge(self) -> None:
        self.client.command(b"a STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        out = self.client.command(b"b UID EXPUNGE 2")
        self.assertEqual(out, b"* 2 EXPUNGE\r\nb OK UID EXPUNGE completed\r\n")
        self.assertEqual(len(self.flags()), 2)


class CopyTests(IMAPTestBase):
    def test_copy(self) -> None:
        self.deliver(message("a"), ("\\Seen",))
        self.deliver(message("b"))
        self.deliver(message("c"))
        client = self.selected()
        out = client.command(b"a COPY 1,3 Archive")
        v = self.mailbox("Archive").uidValidity
        self.assertEqual(out, b"a OK [COPYUID %d 1,3 1:2] COPY completed\r\n" % v)
        copied = self.successResultOf(self.mailbox("Archive").listMessages())
        self.assertEqual([i.flags for i in copied], [frozenset(["\\Seen"]), frozenset()])
        out = client.command(b"b UID COPY 2 Archive")
        self.assertIn(b"[COPYUID %d 2 3]" % v, out)

    def test_copyMissingMailbox(self) -> None:
        self.deliver(message("a"))
        client = self.selected()
        self.assertTagged(client.command(b"a COPY 1 Nope"), b"a", b"NO [TRYCREATE]")

    def test_copyToSelf(self) -> None:
        self.deliver(message("a"))
        client = self.selected()
        out = client.command(b"a COPY 1 INBOX")
        self.assertIn(b"* 2 EXISTS", out)
        self.assertTagged(out, b"a", b"OK [COPYUID")


class SearchTests(IMAPTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(message("apple pie"), ("\\Seen",))
        self.deliver(message("banana", b"with apple inside\r\n"))
        self.deliver(message("cherry"), ("\\Flagged",))
        self.client = self.selected()

    def test_searchFlags(self) -> None:
        self.assertIn(b"* SEARCH 2 3\r\n", self.client.command(b"a SEARCH UNSEEN"))
        self.assertIn(b"* SEARCH 3\r\n", self.client.command(b"b SEARCH FLAGGED"))
        self.assertIn(b"* SEARCH 1 2 3\r\n", self.client.command(b"c SEARCH ALL"))

    def test_searchText(self) -> None:
        self.assertIn(b"* SEARCH 1\r\n", self.client.command(b"a SEARCH SUBJECT apple"))
        self.assertIn(b"* SEARCH 2\r\n", self.client.command(b"b SEARCH BODY apple"))
        self.assertIn(b"* SEARCH 1 2\r\n", self.client.command(b'c SEARCH CHARSET UTF-8 TEXT "apple"'))

    def test_searchLiteral(self) -> None:
        out = self.client.send(b"a SEARCH SUBJECT {6}\r\n")
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        self.assertIn(b"* SEARCH 2\r\n", self.client.send(b"banana\r\n"))

    def test_uidSearch(self) -> None:
        self.client.command(b"x STORE 1 +FLAGS (\\Deleted)")
        self.client.command(b"y EXPUNGE")
        self.assertIn(b"* SEARCH 2 3\r\n", self.client.command(b"a UID SEARCH ALL"))
        self.assertIn(b"* SEARCH 3\r\n", self.client.command(b"b UID SEARCH UID 3:*"))

    def test_searchErrors(self) -> None:
        self.assertTagged(self.client.command(b"a SEARCH BOGUS"), b"a", b"BAD")
        self.assertTagged(self.client.command(b"b SEARCH CHARSET KOI8-Q ALL"), b"b", b"NO [BADCHARSET")

    def test_searchEmpty(self) -> None:
        self.assertIn(b"* SEARCH\r\n", self.client.command(b"a SEARCH SUBJECT nothing-like-this"))


class ConcurrentSessionTests(IMAPTestBase):
    def test_existsFromOtherSession(self) -> None:
        one = self.selected()
        two = self.selected()
        two.send(b"a APPEND INBOX {5}\r\n")
        out = two.send(b"hello\r\n")
        # The appending session reports it first and so claims \\Recent.
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID", out)
        out = one.command(b"b NOOP")
        self.assertEqual(out, b"* 1 EXISTS\r\n* 0 RECENT\r\nb OK NOOP completed\r\n")

    def test_flagsFromOtherSession(self) -> None:
        self.deliver(message("a"))
        one = self.selected()
        two = self.selected()
        two.command(b"a STORE 1 +FLAGS (\\Answered)")
        out = one.command(b"b NOOP")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\nb OK NOOP completed\r\n")

    def test_severalChangesInOneSync(self) -> None:
        """
        Flags another session changed on several messages, and a message
        it appended, are reported together at the next sync, each FETCH
        with its own sequence number (and MODSEQ once CONDSTORE is on).
        """
        for i in range(5):
            self.deliver(message(str(i)))
        one = self.selected()
        one.command(b"e FETCH 1 (MODSEQ)")  # (turns CONDSTORE on)
        two = self.selected()
        two.command(b"a STORE 2,4 +FLAGS.SILENT (\\Flagged)")
        two.command(b"b STORE 5 +FLAGS.SILENT (\\Seen)")
        two.send(b"c APPEND INBOX {5}\r\n")
        two.send(b"hello\r\n")
        out = one.command(b"d NOOP")
        lines = out.split(b"\r\n")
        fetches = [line for line in lines if b" FETCH " in line]
        self.assertEqual([f.split(b" ")[1] for f in fetches], [b"2", b"4", b"5"], out)
        self.assertIn(b"FLAGS (\\Flagged \\Recent) MODSEQ (", fetches[0])
        self.assertIn(b"FLAGS (\\Seen \\Recent) MODSEQ (", fetches[2])
        self.assertIn(b"* 6 EXISTS", out)
        self.assertEqual(one.command(b"f NOOP"), b"f OK NOOP completed\r\n")

    def listings(self, client: Client) -> List[int]:
        """
        Count the listings of the mailbox C{client} has selected.
        """
        mailbox = client.server.view.mailbox
        calls: List[int] = []
        listMessages = mailbox.listMessages
        self.patch(mailbox, "listMessages", lambda: calls.append(1) or listMessages())
        return calls

    def test_ownStoreNotListedAgain(self) -> None:
        """
        Once a session knows every change of its mailbox, its own STORE
        is reported by the STORE itself: the sync after it reads the
        mailbox's counts, finds nothing else changed, and does not list
        the messages again.
        """
        for i in range(3):
            self.deliver(message(str(i)))
        one = self.selected()
        # (A first change makes a full report, after which the view knows
        # the mailbox's highest modseq.)
        one.command(b"a STORE 1 +FLAGS (\\Flagged)")
        calls = self.listings(one)
        out = one.command(b"b STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\nb OK STORE completed\r\n")
        self.assertEqual(one.command(b"c NOOP"), b"c OK NOOP completed\r\n")
        self.assertEqual(calls, [])

    def test_otherChangeAmongOwnStores(self) -> None:
        """
        Another session's change that came between the view's last report
        and its own STORE (its modseq comes before the STORE's) is
        reported after the STORE: the mailbox is listed again.
        """
        for i in range(3):
            self.deliver(message(str(i)))
        one = self.selected()
        two = self.selected()
        one.command(b"a STORE 1 +FLAGS (\\Flagged)")
        two.command(b"x NOOP")
        calls = self.listings(one)
        two.command(b"y STORE 3 +FLAGS.SILENT (\\Answered)")
        out = one.command(b"b STORE 2 +FLAGS (\\Flagged)")
        self.assertIn(b"* 2 FETCH (FLAGS (\\Flagged \\Recent))", out)
        self.assertIn(b"* 3 FETCH (FLAGS (\\Answered \\Recent))", out)
        self.assertEqual(len(calls), 1)
        self.assertEqual(one.command(b"c NOOP"), b"c OK NOOP completed\r\n")

    def test_expungeFromOtherSession(self) -> None:
        for i in range(3):
            self.deliver(message(str(i)))
        one = self.selected()
        two = self.selected()
        two.command(b"a STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* 2 EXPUNGE", two.command(b"b EXPUNGE"))
        # FETCH, STORE and SEARCH never carry EXPUNGE.
        out = one.command(b"c FETCH 1:* UID")
        self.assertNotIn(b" EXPUNGE\r\n", out)
        self.assertIn(b"* 1 FETCH (UID 1)", out)
        self.assertIn(b"* 3 FETCH (UID 3)", out)
        self.assertTagged(out, b"c", b"NO [EXPUNGEISSUED]")
        out = one.command(b"d SEARCH ALL")
        self.assertNotIn(b" EXPUNGE\r\n", out)
        self.assertIn(b"* SEARCH 1 3\r\n", out)
        out = one.command(b"e STORE 3 +FLAGS (\\Seen)")
        self.assertNotIn(b" EXPUNGE\r\n", out)
        self.assertIn(b"* 3 FETCH (FLAGS (\\Seen \\Recent))", out)
        out = one.command(b"e2 UID FETCH 1:* UID")
        self.assertNotIn(b" EXPUNGE\r\n", out)
        out = one.command(b"f NOOP")
        self.assertEqual(out, b"* 2 EXPUNGE\r\nf OK NOOP completed\r\n")
        self.assertIn(b"* 2 FETCH (UID 3)", one.command(b"g FETCH 2 UID"))

    def test_expungeAndAppendTogether(self) -> None:
        for i in range(2):
            self.deliver(message(str(i)), ("\\Deleted",) if i == 0 else ())
        one = self.selected()
        two = self.selected()
        two.command(b"a EXPUNGE")
        self.deliver(message("new"))
        out = one.command(b"b FETCH 1:* FLAGS")
        self.assertNotIn(b" EXPUNGE\r\n", out)
        self.assertIn(b"* 3 EXISTS", out)
        out = one.command(b"c CHECK")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nc OK CHECK completed\r\n")
        self.assertIn(b"* 2 FETCH (UID 3)", one.command(b"d FETCH 2 UID"))

    def test_idle(self) -> None:
        one = self.selected()
        out = one.command(b"a IDLE")
        self.assertEqual(out, b"+ idling\r\n")
        self.deliver(message("while idle"))
        self.assertEqual(one.take(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        two = self.selected()
        two.command(b"b STORE 1 +FLAGS (\\Flagged)")
        self.assertEqual(one.take(), b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n")
        two.command(b"c STORE 1 +FLAGS.SILENT (\\Deleted)")
        one.take()
        two.command(b"d EXPUNGE")
        self.assertEqual(one.take(), b"* 1 EXPUNGE\r\n")
        out = one.send(b"DONE\r\n")
        self.assertEqual(out, b"a OK IDLE terminated\r\n")
        self.assertEqual(one.command(b"e NOOP"), b"e OK NOOP completed\r\n")

    def test_idleReportsPending(self) -> None:
        one = self.selected()
        self.deliver(message("before idle"))
        out = one.command(b"a IDLE")
        self.assertEqual(out, b"+ idling\r\n* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertTagged(one.send(b"DONE\r\n"), b"a", b"OK")

    def test_idleBadEnd(self) -> None:
        one = self.selected()
        one.command(b"a IDLE")
        self.assertTagged(one.send(b"NOOP\r\n"), b"a", b"BAD")

    def test_idleAuthenticatedState(self) -> None:
        client = self.login()
        self.assertEqual(client.command(b"a IDLE"), b"+ idling\r\n")
        self.assertEqual(client.send(b"done\r\n"), b"a OK IDLE terminated\r\n")

    def test_deletedSelectedMailbox(self) -> None:
        self.deliver(message("x"), name="Archive")
        one = self.selected(b"Archive")
        two = self.login()
        self.assertTagged(two.command(b"a DELETE Archive"), b"a", b"OK")
        self.assertEqual(one.command(b"b NOOP"), b"* 1 EXPUNGE\r\nb OK NOOP completed\r\n")


class LimitsAndTimeoutTests(IMAPTestBase):
    def test_overlongLine(self) -> None:
        factory = IMAPFactory(self.portal, "mail.example.test", maxLineLength=100, clock=self.clock)
        client = self.connect(factory=factory)
        out = client.send(b"a1 LOGIN " + b"x" * 200)
        self.assertEqual(out, b"a1 BAD Line too long\r\n")
        out = client.send(b"y" * 5000 + b"\r\nb NOOP\r\n")
        self.assertEqual(out, b"b OK NOOP completed\r\n")
        out = client.send(b"x" * 500 + b"\r\nc NOOP\r\n")
        self.assertEqual(out, b"* BAD Line too long\r\nc OK NOOP completed\r\n")

    def test_autologout(self) -> None:
        client = self.connect()
        self.clock.advance(1700)
        client.command(b"a NOOP")
        self.clock.advance(1700)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(200)
        self.assertEqual(client.take(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_pipelining(self) -> None:
        self.deliver(message("a"))
        client = self.connect()
        out = client.send(
            b"a LOGIN alice@example.test secret\r\nb SELECT INBOX\r\nc FETCH 1 UID\r\nd LOGOUT\r\ne NOOP\r\n"
        )
        tags = [line.split(b" ")[0] for line in out.split(b"\r\n") if line and not line.startswith(b"*")]
        self.assertEqual(tags, [b"a", b"b", b"c", b"d"])

    def test_asyncStoreKeepsOrder(self) -> None:
        """
        While a command waits on the store, later commands stay buffered.
        """
        client = self.login()
        account = client.server.account
        gate: defer.Deferred = defer.Deferred()
        original = account.createMailbox

        def slowCreate(name, specialUse=None):
            d = original(name, specialUse)
            return gate.addCallback(lambda _: d).addCallback(lambda r: r)

        account.createMailbox = slowCreate
        out = client.send(b"a CREATE Slow\r\nb NOOP\r\n")
        self.assertEqual(out, b"")
        gate.callback(None)
        self.assertEqual(client.take(), b"a OK CREATE completed\r\nb OK NOOP completed\r\n")

    def test_internalErrorHidden(self) -> None:
        client = self.login()

        def broken(*a, **kw):
            raise RuntimeError("secret detail")

        client.server.account.listMailboxes = broken
        out = client.command(b'a LIST "" *')
        self.assertEqual(out, b"a NO [SERVERBUG] Internal error\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")


class ConnectionLostTests(IMAPTestBase):
    """
    A connection that goes away mid-command leaves no error behind.
    """

    def test_duringIdle(self) -> None:
        client = self.selected()
        client.command(b"a IDLE")
        client.server.connectionLost(None)
        self.assertNotIn(client.server, self.mailbox()._listeners._listeners)
        self.deliver(message("after"))
        self.assertEqual(client.take(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_duringAuthenticate(self) -> None:
        client = self.connect()
        client.command(b"a AUTHENTICATE PLAIN")
        client.server.connectionLost(None)
        self.assertEqual(client.take(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_duringStream(self) -> None:
        self.deliver(b"Subject: big\r\n\r\n" + b"z" * (1024 * 1024))
        client = self.selected()
        client.server.dataReceived(b"a FETCH 1 BODY.PEEK[]\r\n")
        producer = client.transport.producer
        self.assertIsNotNone(producer)
        producer.resumeProducing()
        client.server.connectionLost(None)
        client.take()
        producer.resumeProducing()
        self.assertEqual(client.take(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pausesWhileBusy(self) -> None:
        """
        Input that piles up while a command waits on the store pauses the
        transport until it is worked off.
        """
        factory = IMAPFactory(self.portal, "mail.example.test", maxLineLength=100, clock=self.clock)
        client = self.login(self.connect(factory=factory))
        gate: defer.Deferred = defer.Deferred()
        account = client.server.account
        original = account.subscribe
        account.subscribe = lambda name: gate.addCallback(lambda _: original(name))
        client.server.dataReceived(b"a SUBSCRIBE Sent\r\n")
        client.server.dataReceived(b"b NOOP\r\n" * 10000)
        self.assertEqual(client.transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(client.transport.producerState, "producing")
        out = client.take()
        self.assertEqual(out.count(b"OK NOOP completed"), 10000)


from mailplat.auth.passwd import PasswordFile, PasswordFileChecker  # noqa: E402
from tests.test_sasl import ScramClient  # noqa: E402


class SASLTests(IMAPTestBase):
    """
    AUTHENTICATE SCRAM-SHA-256 and LOGIN (RFC 3501, SASL-IR) through the
    shared SASL layer, with the memory checker and mailplat's password
    file.
    """

    def passwordFileFactory(self) -> IMAPFactory:
        passwords = PasswordFile(self.mktemp())
        passwords.setPassword(ALICE, "secret")
        return IMAPFactory(Portal(MailRealm(self.store), [PasswordFileChecker(passwords)]), "mail.example.test",
                           clock=self.clock)

    def scram(self, client: Client, scram: ScramClient, password: Optional[bytes] = None, ir: bool = True) -> bytes:
        if ir:
            out = client.command(b"a AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(scram.first()))
        else:
            self.assertEqual(client.command(b"a AUTHENTICATE SCRAM-SHA-256"), b"+ \r\n")
            out = client.send(base64.b64encode(scram.first()) + b"\r\n")
        self.assertTrue(out.startswith(b"+ "), out)
        serverFirst = base64.b64decode(out[2:-2])
        return client.send(base64.b64encode(scram.final(serverFirst, password)) + b"\r\n")

    def test_capabilities(self) -> None:
        client = self.connect()
        for cap in (b"AUTH=PLAIN", b"AUTH=LOGIN", b"AUTH=CRAM-MD5", b"AUTH=SCRAM-SHA-256"):
            self.assertIn(cap, client.greeting)
        client = self.connect(factory=self.passwordFileFactory())
        self.assertIn(b"AUTH=SCRAM-SHA-256", client.greeting)
        self.assertNotIn(b"AUTH=CRAM-MD5", client.greeting)

    def test_scram(self) -> None:
        for factory, ir in ((None, True), (self.passwordFileFactory(), False)):
            client = self.connect(factory=factory)
            scram = ScramClient(ALICE, b"secret")
            self.assertEqual(self.scram(client, scram, ir=ir), b"+ " + base64.b64encode(scram.serverSignature) + b"\r\n")
            self.assertTagged(client.send(b"\r\n"), b"a", b"OK")
            self.assertEqual(client.server.state, "authenticated")

    def test_scramWrongProof(self) -> None:
        client = self.connect(factory=self.passwordFileFactory())
        out = self.scram(client, ScramClient(ALICE, b"secret"), b"wrong")
        self.assertIn(b"NO [AUTHENTICATIONFAILED]", self.assertTagged(out, b"a", b"NO"))
        self.assertEqual(client.server.state, "not authenticated")

    def test_scramCancel(self) -> None:
        client = self.connect()
        client.command(b"a AUTHENTICATE SCRAM-SHA-256")
        self.assertTagged(client.send(b"*\r\n"), b"a", b"BAD")
        self.scram(client, ScramClient(ALICE, b"secret"))
        self.assertTagged(client.send(b"*\r\n"), b"a", b"BAD")
        self.assertEqual(client.server.state, "not authenticated")
        self.assertEqual(client.command(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_scramMalformed(self) -> None:
        client = self.connect()
        out = client.command(b"a AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(b"n,,n=x"))
        self.assertTagged(out, b"a", b"BAD")
        out = client.command(b"b AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(b"p=tls-unique,,n=a@b.test,r=x"))
        self.assertTagged(out, b"b", b"NO")

    def test_login(self) -> None:
        client = self.connect()
        self.assertEqual(client.command(b"a AUTHENTICATE LOGIN"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(client.send(base64.b64encode(ALICE.encode()) + b"\r\n"), b"+ UGFzc3dvcmQ6\r\n")
        self.assertTagged(client.send(base64.b64encode(b"secret") + b"\r\n"), b"a", b"OK")

    def test_loginInitialWrong(self) -> None:
        client = self.connect()
        self.assertEqual(client.command(b"a AUTHENTICATE LOGIN " + base64.b64encode(ALICE.encode())), b"+ UGFzc3dvcmQ6\r\n")
        self.assertTagged(client.send(base64.b64encode(b"nope") + b"\r\n"), b"a", b"NO")

    def test_remoteWithoutTLS(self) -> None:
        """
        Off loopback without TLS no mechanism is offered or accepted.
        """
        client = self.connect(host="198.51.100.7")
        self.assertNotIn(b"AUTH=", client.greeting)
        out = client.command(b"a AUTHENTICATE SCRAM-SHA-256")
        self.assertIn(b"PRIVACYREQUIRED", self.assertTagged(out, b"a", b"NO"))
