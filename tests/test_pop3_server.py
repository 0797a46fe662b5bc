"""
Tests for L{mailplat.pop3.server}: the POP3 protocol over a StringTransport,
with a MemoryStore behind a real cred portal and a L{task.Clock}.
"""

import base64
import hashlib
import hmac
import poplib
import re
from io import BytesIO
from typing import Any, List, Optional

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import alsoProvides, implementer

from mailplat.auth.realm import MailRealm
from mailplat.pop3 import server
from mailplat.pop3.server import DotStuffer, MessageSender, POP3Factory, POP3Server, TopFilter
from mailplat.store.memory import MemoryStore

ALICE = "alice@example.test"
PASSWORD = b"s3cret pass"
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 1234)
REMOTE = IPv4Address("TCP", "198.51.100.7", 40000)

MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
MSG2 = b"From: b@example.test\r\nSubject: two\r\n\r\n.starts with a dot\r\nmiddle\r\n.\r\n..two dots\r\n"
MSG3 = b"Subject: three\r\n\r\nno final newline"


@implementer(ICredentialsChecker)
class PlainOnlyChecker:
    """
    A checker that, like an argon2 one, cannot verify APOP digests.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, **users: bytes) -> None:
        self._db = InMemoryUsernamePasswordDatabaseDontUse(**users)

    def requestAvatarId(self, credentials):
        return self._db.requestAvatarId(credentials)


@implementer(ICredentialsChecker)
class SlowChecker:
    """
    A checker whose answers wait until the test fires them.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: List[defer.Deferred] = []

    def requestAvatarId(self, credentials):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class PausingTransport(StringTransport):
    """
    A transport that, like a TCP one, pauses a streaming producer once its
    buffer holds more than 64 KiB, until the test drains it.
    """

    bufferSize = 65536

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received = BytesIO()
        self.largestBuffer = 0
        self.noDelay = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def write(self, data: bytes) -> None:
        super().write(data)
        size = len(self.io.getvalue())
        self.largestBuffer = max(self.largestBuffer, size)
        if self.producer is not None and self.streaming and size > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """
        Take what was written, and let a paused producer go on.
        """
        data = self.io.getvalue()
        self.received.write(data)
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


class WriteRecorder(StringTransport):
    """
    A transport that keeps each write apart.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class ReadRecorder(BytesIO):
    """
    A message file that remembers the sizes asked of C{read}.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: List[int] = []

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return super().read(size)


class POP3TestsMixin:
    """
    Building blocks: a store with one account, a portal, sessions.

    @cvar streamed: send every message through C{openMessage} and a
        L{MessageSender}, as for a store without L{IMessageReader} (SQL),
        instead of reading small ones at once.
    """

    streamed = False

    def setUp(self) -> None:
        if self.streamed:
            self.patch(server, "SMALL_MESSAGE", -1)
        self.store = MemoryStore()
        self.clock = task.Clock()
        self.account = self.successResultOf(self.store.getAccount(ALICE, create=True))
        self.inbox = self.successResultOf(self.account.getMailbox("INBOX"))
        for body in (MSG1, MSG2, MSG3):
            self.successResultOf(self.inbox.append(BytesIO(body)))
        self.checker = InMemoryUsernamePasswordDatabaseDontUse(**{ALICE: PASSWORD})
        self.portal = Portal(MailRealm(self.store), [self.checker])
        self.factory = POP3Factory(self.portal, "pop.example.test", timeout=600.0, clock=self.clock)

    def connect(self, peer=LOOPBACK, portal: Optional[Portal] = None, transport=None):
        """
        A new session; returns (protocol, transport) with the greeting
        already read.
        """
        factory = self.factory if portal is None else POP3Factory(portal, "pop.example.test", clock=self.clock)
        proto = factory.buildProtocol(peer)
        if transport is None:
            transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.greeting = transport.value()
        transport.clear()
        return proto, transport

    def send(self, proto, transport, data: bytes) -> bytes:
        """
        Feed C{data}, return what the server wrote in answer.
        """
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def login(self, peer=LOOPBACK, transport=None):
        proto, transport = self.connect(peer, transport=transport)
        reply = self.send(proto, transport, b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
        self.assertTrue(reply.startswith(b"+OK\r\n+OK Logged in, "), reply)
        transport.clear()
        return proto, transport

    def lose(self, proto, transport) -> None:
        proto.connectionLost(Failure(ConnectionDone()))

    def uids(self) -> List[int]:
        return [info.uid for info in self.successResultOf(self.inbox.listMessages())]


class GreetingTests(POP3TestsMixin, SynchronousTestCase):
    """
    The greeting, APOP and the factory.
    """

    def test_greetingWithAPOP(self) -> None:
        """
        A checker that holds secrets (IUsernameHashedPassword) makes the
        greeting carry an RFC 1939 timestamp.
        """
        proto, transport = self.connect()
        self.assertRegex(proto.greeting, rb"^\+OK mailplat ready\. <\d+\.\d+\.[0-9a-f]+@pop\.example\.test>\r\n$")

    def test_greetingWithoutAPOP(self) -> None:
        """
        With only a plain-password checker, no timestamp is given and APOP
        is refused.
        """
        portal = Portal(MailRealm(self.store), [PlainOnlyChecker(**{ALICE: PASSWORD})])
        proto, transport = self.connect(portal=portal)
        self.assertEqual(proto.greeting, b"+OK mailplat ready.\r\n")
        reply = self.send(proto, transport, b"APOP alice@example.test 0123456789abcdef0123456789abcdef\r\n")
        self.assertEqual(reply, b"-ERR APOP is not available\r\n")
        self.assertNotIn(b"APOP", self.send(proto, transport, b"HELP\r\n"))

    def test_apopCorrectDigest(self) -> None:
        """
        A correct APOP digest logs in.
        """
        proto, transport = self.connect()
        challenge = re.search(rb"<[^>]+>", proto.greeting).group(0)
        digest = hashlib.md5(challenge + PASSWORD).hexdigest().encode()
        reply = self.send(proto, transport, b"APOP Alice@Example.Test " + digest + b"\r\n")
        self.assertTrue(reply.startswith(b"+OK Logged in, 3 messages"), reply)
        self.assertEqual(proto.state, server.TRANSACTION)

    def test_apopUppercaseDigest(self) -> None:
        """
        A digest in upper-case hex is as good.
        """
        proto, transport = self.connect()
        challenge = re.search(rb"<[^>]+>", proto.greeting).group(0)
        digest = hashlib.md5(challenge + PASSWORD).hexdigest().upper().encode()
        self.assertTrue(self.send(proto, transport, b"APOP alice@example.test " + digest + b"\r\n").startswith(b"+OK"))

    def test_apopWrongDigest(self) -> None:
        """
        A wrong APOP digest fails with [AUTH].
        """
        proto, transport = self.connect()
        challenge = re.search(rb"<[^>]+>", proto.greeting).group(0)
        digest = hashlib.md5(challenge + b"wrong").hexdigest().encode()
        reply = self.send(proto, transport, b"APOP alice@example.test " + digest + b"\r\n")
        self.assertEqual(reply, b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(proto.state, server.AUTHORIZATION)

    def test_apopBadSyntax(self) -> None:
        """
        APOP needs exactly a name and a digest.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"APOP alice\r\n"), b"-ERR APOP needs a name and a digest\r\n")

    def test_challengeDiffersPerSession(self) -> None:
        """
        Each session gets its own timestamp.
        """
        first, _ = self.connect()
        second, _ = self.connect()
        self.assertNotEqual(first.greeting, second.greeting)

    def test_noDelay(self) -> None:
        """
        connectionMade turns TCP_NODELAY on.
        """
        transport = PausingTransport(peerAddress=LOOPBACK)
        self.connect(transport=transport)
        self.assertIs(transport.noDelay, True)

    def test_factoryBuildsServer(self) -> None:
        """
        The factory hands its portal, hostname, timeout and clock to each
        session.
        """
        proto = self.factory.buildProtocol(LOOPBACK)
        self.assertIsInstance(proto, POP3Server)
        self.assertIs(proto.portal, self.portal)
        self.assertIs(proto.clock, self.clock)
        self.assertEqual(proto.hostname, "pop.example.test")
        self.assertEqual(proto.timeout, 600.0)
        self.assertIs(proto.factory, self.factory)

    def test_defaultClockIsReactor(self) -> None:
        """
        Without a clock the reactor schedules the timeout.
        """
        from twisted.internet import reactor

        self.assertIs(POP3Factory(self.portal, "h").clock, reactor)


class AuthorizationTests(POP3TestsMixin, SynchronousTestCase):
    """
    USER/PASS, AUTH PLAIN, the cleartext rule, and AUTHORIZATION-state rules.
    """

    def test_userPass(self) -> None:
        """
        USER then PASS logs in; the name is normalised.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"USER  Alice@Example.TEST \r\n"), b"+OK\r\n")
        self.assertTrue(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n").startswith(b"+OK Logged in"))

    def test_wrongPassword(self) -> None:
        """
        A wrong password fails with [AUTH] and USER must be given again.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"USER alice@example.test\r\n")
        self.assertEqual(self.send(proto, transport, b"PASS nope\r\n"), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n"), b"-ERR USER first\r\n")
        self.assertEqual(proto.state, server.AUTHORIZATION)

    def test_unknownUser(self) -> None:
        """
        An unknown user fails just like a wrong password.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"USER bob@example.test\r\n")
        self.assertEqual(self.send(proto, transport, b"PASS x\r\n"), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_passWithoutUser(self) -> None:
        """
        PASS needs USER first.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"PASS x\r\n"), b"-ERR USER first\r\n")

    def test_userWithoutName(self) -> None:
        """
        USER needs an argument.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"USER\r\n"), b"-ERR USER needs a name\r\n")

    def test_cleartextRefusedOffLoopback(self) -> None:
        """
        Off loopback and without TLS, USER, PASS and AUTH PLAIN are refused
        and CAPA offers neither USER nor SASL.
        """
        proto, transport = self.connect(peer=REMOTE)
        refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
        self.assertEqual(self.send(proto, transport, b"USER alice@example.test\r\n"), refused)
        self.assertEqual(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n"), refused)
        self.assertEqual(self.send(proto, transport, b"AUTH PLAIN\r\n"), refused)
        self.assertEqual(self.send(proto, transport, b"AUTH\r\n"), b"+OK\r\n.\r\n")
        capa = self.send(proto, transport, b"CAPA\r\n")
        self.assertNotIn(b"\r\nUSER\r\n", capa)
        self.assertNotIn(b"SASL", capa)
        self.assertIn(b"\r\nUIDL\r\n", capa)
        self.assertEqual(proto.state, server.AUTHORIZATION)

    def test_apopAllowedOffLoopback(self) -> None:
        """
        APOP sends no password, so it works off loopback.
        """
        proto, transport = self.connect(peer=REMOTE)
        challenge = re.search(rb"<[^>]+>", proto.greeting).group(0)
        digest = hashlib.md5(challenge + PASSWORD).hexdigest().encode()
        self.assertTrue(self.send(proto, transport, b"APOP alice@example.test " + digest + b"\r\n").startswith(b"+OK"))

    def test_cleartextAllowedOverTLS(self) -> None:
        """
        Over TLS, a remote peer may use USER/PASS.
        """
        transport = StringTransport(peerAddress=REMOTE)
        alsoProvides(transport, ISSLTransport)
        proto, transport = self.connect(peer=REMOTE, transport=transport)
        self.assertIn(b"\r\nUSER\r\n", self.send(proto, transport, b"CAPA\r\n"))
        self.send(proto, transport, b"USER alice@example.test\r\n")
        self.assertTrue(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n").startswith(b"+OK Logged in"))

    def test_capaAuthorization(self) -> None:
        """
        CAPA lists exactly what works.
        """
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"CAPA\r\n"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r\nEXPIRE NEVER\r\nIMPLEMENTATION mailplat\r\n.\r\n",
        )

    def test_helpAuthorization(self) -> None:
        """
        HELP lists the commands of the AUTHORIZATION state.
        """
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"help\r\n"),
            b"+OK Commands follow\r\nAPOP\r\nAUTH\r\nCAPA\r\nHELP\r\nPASS\r\nQUIT\r\nUSER\r\n.\r\n",
        )

    def test_transactionCommandsRefused(self) -> None:
        """
        Every TRANSACTION command is refused before login.
        """
        proto, transport = self.connect()
        for command in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 0", b"UIDL", b"LAST"):
            reply = self.send(proto, transport, command + b"\r\n")
            self.assertEqual(
                reply, b"-ERR %s is not valid in the AUTHORIZATION state\r\n" % (command.split()[0],)
            )

    def test_quitAuthorization(self) -> None:
        """
        QUIT before login says goodbye and closes.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"+OK mailplat signing off\r\n")
        self.assertTrue(transport.disconnecting)

    def test_unknownCommand(self) -> None:
        """
        An unknown command is -ERR; so is an empty line.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"XYZZY\r\n"), b"-ERR Unknown command\r\n")
        self.assertEqual(self.send(proto, transport, b"\r\n"), b"-ERR Unknown command\r\n")
        self.assertEqual(self.send(proto, transport, b"\xff\xfe\r\n"), b"-ERR Unknown command\r\n")

    def test_authPlainInitialResponse(self) -> None:
        """
        AUTH PLAIN with an initial response logs in.
        """
        proto, transport = self.connect()
        response = base64.b64encode(b"\0alice@example.test\0" + PASSWORD)
        self.assertTrue(self.send(proto, transport, b"AUTH PLAIN " + response + b"\r\n").startswith(b"+OK Logged in"))

    def test_authPlainContinuation(self) -> None:
        """
        AUTH PLAIN without an initial response asks for it with C{+ }.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH plain\r\n"), b"+ \r\n")
        response = base64.b64encode(ALICE.encode() + b"\0alice@example.test\0" + PASSWORD)
        self.assertTrue(self.send(proto, transport, response + b"\r\n").startswith(b"+OK Logged in"))

    def test_authPlainLongContinuation(self) -> None:
        """
        A SASL response may be longer than a command line.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"AUTH PLAIN\r\n")
        response = base64.b64encode(b"\0alice@example.test\0" + b"x" * 400)
        self.assertEqual(self.send(proto, transport, response + b"\r\n"), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_authPlainCancel(self) -> None:
        """
        C{*} cancels the exchange.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"AUTH PLAIN\r\n")
        self.assertEqual(self.send(proto, transport, b"*\r\n"), b"-ERR Authentication cancelled\r\n")
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"-ERR NOOP is not valid in the AUTHORIZATION state\r\n")

    def test_authPlainBadData(self) -> None:
        """
        Undecodable or malformed responses are refused.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH PLAIN !!!!\r\n"), b"-ERR Invalid base64 in authentication response\r\n")
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + base64.b64encode(b"no nul") + b"\r\n"),
            b"-ERR Invalid PLAIN response\r\n",
        )

    def test_authPlainWrongPassword(self) -> None:
        """
        A wrong password fails with [AUTH]; so does another authzid.
        """
        proto, transport = self.connect()
        bad = base64.b64encode(b"\0alice@example.test\0nope")
        self.assertEqual(self.send(proto, transport, b"AUTH PLAIN " + bad + b"\r\n"), b"-ERR [AUTH] Authentication failed.\r\n")
        other = base64.b64encode(b"bob@example.test\0alice@example.test\0" + PASSWORD)
        self.assertEqual(self.send(proto, transport, b"AUTH PLAIN " + other + b"\r\n"), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_authOtherMechanism(self) -> None:
        """
        An unknown mechanism is refused; AUTH alone lists the mechanisms the
        checker can verify (the memory checker holds plain secrets, so all).
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH GSSAPI\r\n"), b"-ERR Unsupported authentication mechanism\r\n")
        self.assertEqual(
            self.send(proto, transport, b"AUTH\r\n"), b"+OK\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\nSCRAM-SHA-256\r\n.\r\n"
        )

    def test_inUse(self) -> None:
        """
        A second session on a locked maildrop gets [IN-USE] and stays in
        AUTHORIZATION; it can log in once the first has quit.
        """
        first, firstTransport = self.login()
        proto, transport = self.connect()
        self.send(proto, transport, b"USER alice@example.test\r\n")
        self.assertEqual(
            self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n"),
            b"-ERR [IN-USE] Mailbox is locked by another session\r\n",
        )
        self.assertEqual(proto.state, server.AUTHORIZATION)
        self.send(first, firstTransport, b"QUIT\r\n")
        self.send(proto, transport, b"USER alice@example.test\r\n")
        self.assertTrue(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n").startswith(b"+OK Logged in"))

    def test_inUseLogsOut(self) -> None:
        """
        The avatar of a session refused with [IN-USE] is logged out.
        """
        logouts = []

        class Realm(MailRealm):
            def requestAvatar(self, avatarId, mind, *interfaces):
                d = super().requestAvatar(avatarId, mind, *interfaces)
                return d.addCallback(lambda r: (r[0], r[1], lambda: logouts.append(1)))

        portal = Portal(Realm(self.store), [self.checker])
        self.login()
        proto, transport = self.connect(portal=portal)
        self.send(proto, transport, b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\n")
        self.assertEqual(logouts, [1])

    def test_tooManyBadCommands(self) -> None:
        """
        After 20 bad commands the connection is closed.
        """
        proto, transport = self.connect()
        reply = self.send(proto, transport, b"BOGUS\r\n" * 19)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(reply, b"-ERR Unknown command\r\n" * 19)
        reply = self.send(proto, transport, b"BOGUS\r\nNOOP\r\n")
        self.assertEqual(reply, b"-ERR Unknown command\r\n-ERR Too many bad commands.\r\n")
        self.assertTrue(transport.disconnecting)


class TransactionTests(POP3TestsMixin, SynchronousTestCase):
    """
    The TRANSACTION state, command by command.
    """

    def test_stat(self) -> None:
        """
        STAT counts the messages and their wire octets.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"+OK 3 %d\r\n" % (len(MSG1 + MSG2 + MSG3),))
        self.assertEqual(self.send(proto, transport, b"STAT x\r\n"), b"-ERR STAT takes no argument\r\n")

    def test_list(self) -> None:
        """
        LIST gives every size; LIST n one.
        """
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"LIST\r\n"),
            b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n"
            % (len(MSG1 + MSG2 + MSG3), len(MSG1), len(MSG2), len(MSG3)),
        )
        self.assertEqual(self.send(proto, transport, b"LIST 2\r\n"), b"+OK 2 %d\r\n" % (len(MSG2),))

    def test_listBadArguments(self) -> None:
        """
        Message numbers out of range, not numbers, or too many arguments.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"LIST 4\r\n"), b"-ERR No such message 4\r\n")
        self.assertEqual(self.send(proto, transport, b"LIST 0\r\n"), b"-ERR No such message 0\r\n")
        self.assertEqual(self.send(proto, transport, b"LIST -1\r\n"), b"-ERR Invalid message number\r\n")
        self.assertEqual(self.send(proto, transport, b"LIST abc\r\n"), b"-ERR Invalid message number\r\n")
        self.assertEqual(self.send(proto, transport, b"LIST 99999999999999\r\n"), b"-ERR Invalid message number\r\n")
        self.assertEqual(self.send(proto, transport, b"LIST 1 2\r\n"), b"-ERR LIST takes at most one argument\r\n")

    def flags(self) -> List[frozenset]:
        return [i.flags for i in self.successResultOf(self.inbox.listMessages())]

    def test_retr(self) -> None:
        """
        RETR sends the message with its size, in one write.
        """
        proto, transport = self.login(transport=WriteRecorder(peerAddress=LOOPBACK))
        transport.writes.clear()
        self.assertEqual(self.send(proto, transport, b"RETR 1\r\n"), b"+OK %d octets\r\n" % (len(MSG1),) + MSG1 + b".\r\n")
        self.assertEqual(len(transport.writes), 1)

    def test_pipelinedRetrs(self) -> None:
        """
        Pipelined RETRs are answered in order, one write each, whatever
        else comes between them.
        """
        proto, transport = self.login(transport=WriteRecorder(peerAddress=LOOPBACK))
        transport.writes.clear()
        reply = self.send(proto, transport, b"RETR 1\r\nRETR 3\r\nNOOP\r\nRETR 2\r\n")
        self.assertEqual(reply, b"+OK %d octets\r\n" % (len(MSG1),) + MSG1 + b".\r\n"
                         + b"+OK %d octets\r\n" % (len(MSG3),) + MSG3 + b"\r\n.\r\n+OK\r\n"
                         + b"+OK %d octets\r\n" % (len(MSG2),) + MSG2.replace(b"\n.", b"\n..") + b".\r\n")
        self.assertEqual(len(transport.writes), 4)

    def test_retrSeenAtQuit(self) -> None:
        """
        RETR changes nothing in the mailbox; QUIT flags \\Seen the messages
        retrieved, except those deleted, in one setFlags call that leaves
        out those already seen (Dovecot's UPDATE state does the same).
        """
        uids = self.uids()
        self.successResultOf(self.inbox.setFlags([uids[1]], ["\\Seen"], "add"))
        calls: List[Any] = []
        real = self.inbox.setFlags

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return real(*args, **kwargs)

        self.inbox.setFlags = counting  # type: ignore[method-assign]
        self.addCleanup(setattr, self.inbox, "setFlags", real)
        self.successResultOf(self.inbox.append(BytesIO(MSG1)))
        uids = self.uids()
        proto, transport = self.login()
        for command in (b"RETR 1", b"RETR 1", b"RETR 2", b"RETR 3", b"TOP 4 1", b"DELE 3"):
            self.assertTrue(self.send(proto, transport, command + b"\r\n").startswith(b"+OK"))
        self.assertEqual(calls, [])
        self.assertEqual([("\\Seen" in f) for f in self.flags()], [False, True, False, False])
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"+OK mailplat signing off (3 messages left)\r\n")
        self.assertEqual(calls, [([uids[0]], ["\\Seen"], "add")])
        self.assertEqual(self.uids(), [uids[0], uids[1], uids[3]])
        self.assertEqual([("\\Seen" in f) for f in self.flags()], [True, True, False])

    def test_retrConnectionLost(self) -> None:
        """
        A session that ends without QUIT flags nothing \\Seen.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 1\r\nRETR 2\r\n")
        self.lose(proto, transport)
        self.assertEqual(self.flags(), [frozenset()] * 3)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_retrRset(self) -> None:
        """
        RSET forgets what was retrieved: QUIT then flags only what RETR
        sent after it.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 1\r\nRSET\r\nRETR 2\r\nQUIT\r\n")
        self.assertEqual([("\\Seen" in f) for f in self.flags()], [False, True, False])

    def test_seenFailsAtQuit(self) -> None:
        """
        When the \\Seen flags cannot be set, QUIT still removes what was
        deleted and answers +OK (nothing the client asked for is lost); the
        failure is logged.
        """
        self.inbox.setFlags = lambda *a, **k: defer.fail(OSError("disk gone"))  # type: ignore[method-assign]
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 1\r\nDELE 2\r\n")
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"+OK mailplat signing off (2 messages left)\r\n")
        self.assertEqual(len(self.uids()), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_pipelinedRetrsWaitForTheTransport(self) -> None:
        """
        Pipelined RETRs wait while the transport's buffer is full (the
        session is its producer): a client that does not read holds at
        most about one buffer and one message of replies, and past
        MAX_PENDING_LINES queued lines the session stops reading.
        """
        body = b"Subject: mid\r\n\r\n" + b"x" * 20000 + b"\r\n"
        self.successResultOf(self.inbox.append(BytesIO(body)))
        proto, transport = self.login(transport=PausingTransport(peerAddress=LOOPBACK))
        proto.dataReceived(b"RETR 4\r\n" * 100 + b"NOOP\r\n")
        self.assertLessEqual(len(transport.value()), transport.bufferSize + len(body) + 100)
        self.assertEqual(transport.producerState, "paused")
        rounds = 0
        while rounds < 1000 and not transport.drain().endswith(b".\r\n+OK\r\n"):
            rounds += 1
        reply = b"+OK %d octets\r\n" % (len(body),) + body + b".\r\n"
        self.assertEqual(transport.received.getvalue(), reply * 100 + b"+OK\r\n")
        self.assertGreater(rounds, 10)
        self.assertLessEqual(transport.largestBuffer, transport.bufferSize + len(body) + 100)
        self.assertEqual(transport.producerState, "producing")

    def test_quitUnregisters(self) -> None:
        """
        The session is the transport's producer until it closes the
        connection (a paused producer would hold the close back).
        """
        proto, transport = self.login()
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        self.send(proto, transport, b"QUIT\r\n")
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_retrByteStuffing(self) -> None:
        """
        Lines starting with C{.} get another C{.}.
        """
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"RETR 2\r\n"),
            b"+OK %d octets\r\n" % (len(MSG2),)
            + b"From: b@example.test\r\nSubject: two\r\n\r\n..starts with a dot\r\nmiddle\r\n..\r\n...two dots\r\n.\r\n",
        )

    def test_retrAddsFinalCRLF(self) -> None:
        """
        A message that does not end in CRLF gets one before the terminator.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"RETR 3\r\n"), b"+OK %d octets\r\n" % (len(MSG3),) + MSG3 + b"\r\n.\r\n")

    def test_retrBadArguments(self) -> None:
        """
        RETR needs one existing message number.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"RETR\r\n"), b"-ERR RETR needs a message number\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 9\r\n"), b"-ERR No such message 9\r\n")

    def test_retrNumbers(self) -> None:
        """
        Every spelling of a message number means what it says (leading
        zeros, spaces around it), and a number out of range, too long or
        of a deleted message is refused as by the other commands.
        """
        proto, transport = self.login()
        first = b"+OK %d octets\r\n" % (len(MSG1),) + MSG1 + b".\r\n"
        for command in (b"RETR 1", b"RETR 0001", b"RETR  1", b"RETR 1 "):
            self.assertEqual(self.send(proto, transport, command + b"\r\n"), first, command)
        self.assertEqual(self.send(proto, transport, b"RETR 0\r\n"), b"-ERR No such message 0\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 4\r\n"), b"-ERR No such message 4\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 12345678901\r\n"), b"-ERR Invalid message number\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR -1\r\n"), b"-ERR Invalid message number\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 1 2\r\n"), b"-ERR RETR takes at most one argument\r\n")
        self.send(proto, transport, b"DELE 2\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 2\r\n"), b"-ERR message 2 already deleted\r\n")

    def test_verbCase(self) -> None:
        """
        Verbs are case-insensitive (RFC 1939 section 3), in any mix of
        cases; the error for a misplaced one names it in capitals.
        """
        proto, transport = self.login()
        for verb in (b"NOOP", b"noop", b"Noop", b"nOoP"):
            self.assertEqual(self.send(proto, transport, verb + b"\r\n"), b"+OK\r\n", verb)
        self.assertEqual(self.send(proto, transport, b"stat\r\n"), self.send(proto, transport, b"STAT\r\n"))
        self.assertEqual(self.send(proto, transport, b"user x\r\n"),
                         b"-ERR USER is not valid in the TRANSACTION state\r\n")
        self.assertEqual(self.send(proto, transport, b"User x\r\n"),
                         b"-ERR USER is not valid in the TRANSACTION state\r\n")
        self.assertEqual(self.send(proto, transport, b"FOO\r\n"), b"-ERR Unknown command\r\n")

    def test_retrExpungedElsewhere(self) -> None:
        """
        A message removed behind the session's back (by IMAP) is an error,
        not a crash.
        """
        proto, transport = self.login()
        self.successResultOf(self.inbox.expunge([self.uids()[0]], requireDeleted=False))
        self.assertEqual(self.send(proto, transport, b"RETR 1\r\n"), b"-ERR Message 1 no longer exists\r\n")
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")

    def test_dele(self) -> None:
        """
        A deleted message disappears from STAT, LIST, UIDL, RETR, TOP, DELE.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"DELE 1\r\n"), b"+OK message 1 deleted\r\n")
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"+OK 2 %d\r\n" % (len(MSG2 + MSG3),))
        listing = self.send(proto, transport, b"LIST\r\n")
        self.assertEqual(listing, b"+OK 2 messages (%d octets)\r\n2 %d\r\n3 %d\r\n.\r\n" % (len(MSG2 + MSG3), len(MSG2), len(MSG3)))
        self.assertNotIn(b"\r\n1 ", self.send(proto, transport, b"UIDL\r\n"))
        for command in (b"RETR 1", b"TOP 1 0", b"LIST 1", b"UIDL 1", b"DELE 1"):
            self.assertEqual(self.send(proto, transport, command + b"\r\n"), b"-ERR message 1 already deleted\r\n")

    def test_deleRset(self) -> None:
        """
        RSET undoes DELE: nothing is removed at QUIT.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\nDELE 2\r\n")
        self.assertEqual(self.send(proto, transport, b"RSET\r\n"), b"+OK 3 messages (%d octets)\r\n" % (len(MSG1 + MSG2 + MSG3),))
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"+OK mailplat signing off (3 messages left)\r\n")
        self.assertEqual(len(self.uids()), 3)

    def test_deleQuit(self) -> None:
        """
        QUIT removes the deleted messages and releases the lock.
        """
        proto, transport = self.login()
        before = self.uids()
        self.send(proto, transport, b"DELE 1\r\nDELE 3\r\n")
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"+OK mailplat signing off (1 messages left)\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.uids(), [before[1]])
        self.lose(proto, transport)
        release = self.successResultOf(self.inbox.lockExclusive())
        release()

    def test_deleConnectionLost(self) -> None:
        """
        A connection lost in TRANSACTION removes nothing and frees the lock.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\n")
        self.lose(proto, transport)
        self.assertEqual(len(self.uids()), 3)
        self.login()

    def test_connectionLostLogsOut(self) -> None:
        """
        The avatar's logout is called when the connection goes.
        """
        logouts = []

        class Realm(MailRealm):
            def requestAvatar(self, avatarId, mind, *interfaces):
                d = super().requestAvatar(avatarId, mind, *interfaces)
                return d.addCallback(lambda r: (r[0], r[1], lambda: logouts.append(1)))

        portal = Portal(Realm(self.store), [self.checker])
        proto, transport = self.connect(portal=portal)
        self.send(proto, transport, b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\n")
        self.lose(proto, transport)
        self.lose(proto, transport)
        self.assertEqual(logouts, [1])

    def test_expungeFails(self) -> None:
        """
        A failed expunge answers [SYS/TEMP] and still frees the lock.
        """
        proto, transport = self.login()
        self.inbox.expunge = lambda uids, requireDeleted=True: defer.fail(OSError("disk gone"))
        self.send(proto, transport, b"DELE 1\r\n")
        self.assertEqual(self.send(proto, transport, b"QUIT\r\n"), b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_connectionLostDuringUpdate(self) -> None:
        """
        A client that goes while QUIT's expunge runs still gets its
        deletions, and the lock is held until the expunge is done.
        """
        proto, transport = self.login()
        gate = defer.Deferred()
        expunge = self.inbox.expunge
        self.inbox.expunge = lambda uids, requireDeleted=True: gate.addCallback(
            lambda _: expunge(uids, requireDeleted=requireDeleted))
        self.send(proto, transport, b"DELE 2\r\nQUIT\r\n")
        self.lose(proto, transport)
        self.failureResultOf(self.inbox.lockExclusive())
        gate.callback(None)
        self.assertEqual(len(self.uids()), 2)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_noop(self) -> None:
        """
        NOOP answers +OK.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")

    def test_uidl(self) -> None:
        """
        UIDL gives Dovecot-style ids: UID and UIDVALIDITY in hex.
        """
        proto, transport = self.login()
        uids = self.uids()
        v = self.inbox.uidValidity
        expected = [b"%d %08X%08X" % (n + 1, uid, v) for n, uid in enumerate(uids)]
        self.assertEqual(self.send(proto, transport, b"UIDL\r\n"), b"+OK\r\n" + b"\r\n".join(expected) + b"\r\n.\r\n")
        self.assertEqual(self.send(proto, transport, b"UIDL 2\r\n"), b"+OK " + expected[1] + b"\r\n")

    def test_uidlStableAcrossSessions(self) -> None:
        """
        The same message has the same UIDL in the next session, even after
        earlier messages were removed and renumbered.
        """
        proto, transport = self.login()
        first = self.send(proto, transport, b"UIDL\r\n").split(b"\r\n")[1:4]
        self.send(proto, transport, b"DELE 1\r\nQUIT\r\n")
        self.lose(proto, transport)
        proto, transport = self.connect()
        self.send(proto, transport, b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\n")
        second = self.send(proto, transport, b"UIDL\r\n").split(b"\r\n")[1:3]
        self.assertEqual([l.split()[1] for l in second], [l.split()[1] for l in first[1:]])
        self.assertEqual([l.split()[0] for l in second], [b"1", b"2"])

    def test_top(self) -> None:
        """
        TOP n k gives the header, the blank line and k body lines.
        """
        proto, transport = self.login()
        header = b"From: a@example.test\r\nSubject: one\r\n\r\n"
        self.assertEqual(self.send(proto, transport, b"TOP 1 0\r\n"), b"+OK\r\n" + header + b".\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 1 2\r\n"), b"+OK\r\n" + header + b"line 1\r\nline 2\r\n.\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 1 10\r\n"), b"+OK\r\n" + MSG1 + b".\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 2 2\r\n"),
                         b"+OK\r\nFrom: b@example.test\r\nSubject: two\r\n\r\n..starts with a dot\r\nmiddle\r\n.\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 3 5\r\n"), b"+OK\r\n" + MSG3 + b"\r\n.\r\n")
        flags = self.successResultOf(self.inbox.listMessages())[0].flags
        self.assertNotIn("\\Seen", flags)

    def test_topBadArguments(self) -> None:
        """
        TOP needs a message number and a non-negative count.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"TOP 1\r\n"), b"-ERR TOP needs a message number and a line count\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 1 -1\r\n"), b"-ERR Invalid line count\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 7 1\r\n"), b"-ERR No such message 7\r\n")

    def test_last(self) -> None:
        """
        LAST is the highest message number retrieved (RETR or TOP); RSET
        resets it (RFC 1725).
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"LAST\r\n"), b"+OK 0\r\n")
        self.send(proto, transport, b"RETR 2\r\n")
        self.assertEqual(self.send(proto, transport, b"LAST\r\n"), b"+OK 2\r\n")
        self.send(proto, transport, b"RETR 1\r\n")
        self.assertEqual(self.send(proto, transport, b"LAST\r\n"), b"+OK 2\r\n")
        self.send(proto, transport, b"TOP 3 0\r\n")
        self.assertEqual(self.send(proto, transport, b"LAST\r\n"), b"+OK 3\r\n")
        self.send(proto, transport, b"RSET\r\n")
        self.assertEqual(self.send(proto, transport, b"LAST\r\n"), b"+OK 0\r\n")

    def test_capaTransaction(self) -> None:
        """
        CAPA works after login too.
        """
        proto, transport = self.login()
        self.assertIn(b"\r\nPIPELINING\r\n", self.send(proto, transport, b"CAPA\r\n"))

    def test_helpTransaction(self) -> None:
        """
        HELP lists the TRANSACTION commands.
        """
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"HELP\r\n"),
            b"+OK Commands follow\r\nCAPA\r\nDELE\r\nHELP\r\nLAST\r\nLIST\r\nNOOP\r\nQUIT\r\n"
            b"RETR\r\nRSET\r\nSTAT\r\nTOP\r\nUIDL\r\n.\r\n",
        )

    def test_authorizationCommandsRefused(self) -> None:
        """
        USER, PASS, APOP and AUTH are refused once logged in.
        """
        proto, transport = self.login()
        for command in (b"USER x", b"PASS x", b"APOP x y", b"AUTH PLAIN"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"),
                b"-ERR %s is not valid in the TRANSACTION state\r\n" % (command.split()[0],),
            )

    def test_snapshotNumbering(self) -> None:
        """
        Messages delivered after login are not seen by the session.
        """
        proto, transport = self.login()
        self.successResultOf(self.inbox.append(BytesIO(b"Subject: late\r\n\r\nx\r\n")))
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"+OK 3 %d\r\n" % (len(MSG1 + MSG2 + MSG3),))

    def test_internalError(self) -> None:
        """
        An unexpected exception is logged and answered [SYS/TEMP], with no
        traceback on the wire; the session goes on.
        """
        proto, transport = self.login()

        def boom(*args: Any) -> Any:
            raise RuntimeError("boom")

        self.inbox.openMessage = lambda uid: defer.maybeDeferred(boom)
        self.inbox.readMessage = boom
        self.assertEqual(self.send(proto, transport, b"RETR 1\r\n"), b"-ERR [SYS/TEMP] Internal error\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")

    def test_internalErrorSynchronous(self) -> None:
        """
        A handler raising directly is answered the same way.
        """
        proto, transport = self.login()
        proto._totals = lambda: 1 / 0
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"-ERR [SYS/TEMP] Internal error\r\n")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_loginStoreError(self) -> None:
        """
        A store failing at login is [SYS/TEMP], and the lock is released.
        """
        self.inbox.listMessages = lambda: defer.fail(OSError("disk"))
        proto, transport = self.connect()
        reply = self.send(proto, transport, b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\n")
        self.assertEqual(reply, b"+OK\r\n-ERR [SYS/TEMP] Internal error\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(proto.state, server.AUTHORIZATION)
        self.successResultOf(self.inbox.lockExclusive())()


class StreamedTransactionTests(TransactionTests):
    """
    The same, with every message streamed (L{POP3TestsMixin.streamed}).
    """

    streamed = True


class ErrorLimitTests(POP3TestsMixin, SynchronousTestCase):
    def test_configuredLimit(self) -> None:
        """
        The factory's C{maxErrors} ([limits] max_errors) closes a session
        after that many bad commands.
        """
        self.factory.maxErrors = 2
        proto, transport = self.connect()
        self.send(proto, transport, b"BOGUS\r\n")
        self.assertFalse(transport.disconnecting)
        reply = self.send(proto, transport, b"BOGUS\r\n")
        self.assertIn(b"-ERR Too many bad commands.", reply)
        self.assertTrue(transport.disconnecting)


class LineTests(POP3TestsMixin, SynchronousTestCase):
    """
    Line limits and pipelining.
    """

    def test_overlongLine(self) -> None:
        """
        A line over 255 octets plus CRLF is refused; the next one works.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"NOOP " + b"x" * 251 + b"\r\n"), b"-ERR Line too long\r\n")
        self.assertEqual(self.send(proto, transport, b"CAPA " + b"x" * 250 + b"\r\n")[:3], b"+OK")

    def test_overlongLineNotBuffered(self) -> None:
        """
        Waiting for a CRLF that never comes, the server keeps at most the
        limit, answers once, and recovers at the next line end.
        """
        proto, transport = self.connect()
        replies = b""
        for _ in range(100):
            replies += self.send(proto, transport, b"x" * 1000)
            self.assertLessEqual(len(proto._buffer), server.MAX_LINE)
        self.assertEqual(replies, b"-ERR Line too long\r\n")
        self.assertEqual(self.send(proto, transport, b"yyy\r\nQUIT\r\n"), b"+OK mailplat signing off\r\n")

    def test_lineSplitAcrossPackets(self) -> None:
        """
        A command may arrive a byte at a time; bare LF ends a line too.
        """
        proto, transport = self.connect()
        replies = b""
        for byte in b"CAPA\r\nQUIT\n":
            replies += self.send(proto, transport, bytes([byte]))
        self.assertTrue(replies.startswith(b"+OK Capability list follows\r\n"))
        self.assertTrue(replies.endswith(b".\r\n+OK mailplat signing off\r\n"))

    def test_pipelining(self) -> None:
        """
        Commands sent together are all answered, in order.
        """
        proto, transport = self.connect()
        reply = self.send(
            proto, transport,
            b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nLIST 1\r\nQUIT\r\n",
        )
        total = len(MSG1 + MSG2 + MSG3)
        self.assertEqual(
            reply,
            b"+OK\r\n+OK Logged in, 3 messages (%d octets)\r\n+OK 3 %d\r\n" % (total, total)
            + b"+OK %d octets\r\n" % (len(MSG1),) + MSG1 + b".\r\n"
            + b"+OK message 1 deleted\r\n-ERR message 1 already deleted\r\n"
            + b"+OK mailplat signing off (2 messages left)\r\n",
        )

    def test_pipeliningWaitsForLogin(self) -> None:
        """
        Commands after PASS wait until the portal answers.
        """
        checker = SlowChecker()
        portal = Portal(MailRealm(self.store), [checker])
        proto, transport = self.connect(portal=portal)
        reply = self.send(proto, transport, b"USER alice@example.test\r\nPASS x\r\nSTAT\r\nNOOP\r\n")
        self.assertEqual(reply, b"+OK\r\n")
        transport.clear()
        checker.pending[0].callback(ALICE.encode())
        total = len(MSG1 + MSG2 + MSG3)
        self.assertEqual(transport.value(), b"+OK Logged in, 3 messages (%d octets)\r\n+OK 3 %d\r\n+OK\r\n" % (total, total))

    def test_connectionLostDuringLogin(self) -> None:
        """
        If the client goes while the portal works, the login that then
        succeeds leaves no lock behind.
        """
        checker = SlowChecker()
        portal = Portal(MailRealm(self.store), [checker])
        proto, transport = self.connect(portal=portal)
        self.send(proto, transport, b"USER alice@example.test\r\nPASS x\r\n")
        self.lose(proto, transport)
        checker.pending[0].callback(ALICE.encode())
        self.successResultOf(self.inbox.lockExclusive())()

    def test_manyPipelinedLinesPauseReading(self) -> None:
        """
        Many lines queued behind a slow step pause the transport until
        they are answered.
        """
        checker = SlowChecker()
        portal = Portal(MailRealm(self.store), [checker])
        proto, transport = self.connect(portal=portal)
        self.send(proto, transport, b"USER alice@example.test\r\nPASS x\r\n" + b"NOOP\r\n" * 100)
        self.assertEqual(transport.producerState, "paused")
        checker.pending[0].callback(ALICE.encode())
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value().count(b"+OK\r\n"), 101)


class TimeoutTests(POP3TestsMixin, SynchronousTestCase):
    """
    The idle timeout.
    """

    def test_idleTimeout(self) -> None:
        """
        After the idle timeout the connection is closed and nothing
        deleted; activity pushes the deadline back.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\n")
        self.clock.advance(599)
        self.send(proto, transport, b"NOOP\r\n")
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(transport.disconnecting)
        self.lose(proto, transport)
        self.assertEqual(len(self.uids()), 3)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_timeoutInAuthorization(self) -> None:
        """
        An idle unauthenticated session is closed too.
        """
        proto, transport = self.connect()
        self.clock.advance(600)
        self.assertTrue(transport.disconnecting)

    def test_noTimerAfterClose(self) -> None:
        """
        Closing leaves no timer behind.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"QUIT\r\n")
        self.lose(proto, transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StreamingTests(POP3TestsMixin, SynchronousTestCase):
    """
    Large messages go out in chunks, paced by the transport.
    """

    def bigMessage(self) -> bytes:
        lines = []
        for i in range(230000):
            lines.append(b".dotted line %d" % (i,) if i % 7 == 0 else b"plain line %d with some text" % (i,))
        return b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"

    def test_streamBigMessage(self) -> None:
        """
        A multi-MB message is read in 64 KiB chunks, never more than about
        one chunk waits in the transport, and the client gets exact,
        dot-stuffed bytes.
        """
        body = self.bigMessage()
        self.assertGreater(len(body), 5 * 1024 * 1024)
        uid = self.successResultOf(self.inbox.append(BytesIO(body)))
        files = []
        original = self.inbox.openMessage

        def openMessage(u):
            data = original(u)
            f = ReadRecorder(self.successResultOf(data).read())
            files.append(f)
            return defer.succeed(f)

        self.inbox.openMessage = openMessage
        transport = PausingTransport(peerAddress=LOOPBACK)
        proto, transport = self.connect(transport=transport)
        self.send(proto, transport, b"USER alice@example.test\r\nPASS " + PASSWORD + b"\r\n")
        transport.clear()
        proto.dataReceived(b"RETR 4\r\nNOOP\r\n")
        rounds = 0
        while rounds < 1000 and not transport.drain().endswith(b".\r\n+OK\r\n"):
            rounds += 1
        received = transport.received.getvalue()
        header = b"+OK %d octets\r\n" % (len(body),)
        expected = header + b"\r\n".join(
            b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n")
        ) + b".\r\n+OK\r\n"
        self.assertEqual(received, expected)
        self.assertGreater(rounds, 50)
        self.assertLessEqual(transport.largestBuffer, 2 * server.CHUNK_SIZE + 100)
        self.assertEqual(set(files[0].reads), {server.CHUNK_SIZE})
        self.assertTrue(files[0].closed)
        proto.dataReceived(b"QUIT\r\n")
        flags = [i.flags for i in self.successResultOf(self.inbox.listMessages()) if i.uid == uid][0]
        self.assertIn("\\Seen", flags)

    def test_stuffingAcrossChunkBoundary(self) -> None:
        """
        A line starting with C{.} right at a chunk boundary is stuffed, and
        a CRLF split across chunks is kept as it is.
        """
        first = b"Subject: x\r\n\r\n" + b"a" * (server.CHUNK_SIZE - 16) + b"\r\n"
        self.assertEqual(len(first), server.CHUNK_SIZE)
        body = first + b".dot\r\n" + b"b" * (server.CHUNK_SIZE - 1) + b"\r\n.\r\n"
        self.successResultOf(self.inbox.append(BytesIO(body)))
        proto, transport = self.login()
        reply = self.send(proto, transport, b"RETR 4\r\n")
        self.assertEqual(
            reply,
            b"+OK %d octets\r\n" % (len(body),) + first + b"..dot\r\n" + b"b" * (server.CHUNK_SIZE - 1) + b"\r\n..\r\n.\r\n",
        )

    def test_smallAndBigInOrder(self) -> None:
        """
        Small messages answered at once and a big one streamed, pipelined,
        come out in the order asked.
        """
        body = self.bigMessage()
        self.successResultOf(self.inbox.append(BytesIO(body)))
        proto, transport = self.login(transport=PausingTransport(peerAddress=LOOPBACK))
        proto.dataReceived(b"RETR 1\r\nRETR 4\r\nRETR 3\r\nNOOP\r\n")
        rounds = 0
        while rounds < 1000 and not transport.drain().endswith(b".\r\n+OK\r\n"):
            rounds += 1
        stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n"))
        self.assertEqual(
            transport.received.getvalue(),
            b"+OK %d octets\r\n" % (len(MSG1),) + MSG1 + b".\r\n"
            + b"+OK %d octets\r\n" % (len(body),) + stuffed + b".\r\n"
            + b"+OK %d octets\r\n" % (len(MSG3),) + MSG3 + b"\r\n.\r\n+OK\r\n",
        )

    def test_connectionLostWhileStreaming(self) -> None:
        """
        Losing the connection mid-message closes the file, keeps the
        message unseen and frees the lock.
        """
        body = self.bigMessage()
        self.successResultOf(self.inbox.append(BytesIO(body)))
        files = []
        original = self.inbox.openMessage

        def openMessage(u):
            f = ReadRecorder(self.successResultOf(original(u)).read())
            files.append(f)
            return defer.succeed(f)

        self.inbox.openMessage = openMessage
        transport = PausingTransport(peerAddress=LOOPBACK)
        proto, transport = self.login(transport=transport)
        proto.dataReceived(b"RETR 4\r\n")
        transport.drain()
        self.lose(proto, transport)
        self.assertTrue(files[0].closed)
        self.assertNotIn("\\Seen", self.successResultOf(self.inbox.listMessages())[3].flags)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_readErrorBeforeAnyText(self) -> None:
        """
        A message whose first read fails is answered [SYS/TEMP], as nothing
        of it was sent, and the session goes on.
        """
        class Broken(BytesIO):
            def read(self, size=-1):
                raise OSError("bad sector")

        self.inbox.openMessage = lambda uid: defer.succeed(Broken())
        self.patch(server, "SMALL_MESSAGE", -1)
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"RETR 1\r\n"), server._INTERNAL_ERROR + b"\r\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")

    def test_timeoutWhileStreaming(self) -> None:
        """
        A client that stops reading in the middle of a big message is
        disconnected by the idle timeout, with no error line written into
        the message's text.
        """
        self.successResultOf(self.inbox.append(BytesIO(self.bigMessage())))
        proto, transport = self.login(transport=PausingTransport(peerAddress=LOOPBACK))
        proto.dataReceived(b"RETR 4\r\n")
        self.assertTrue(transport.value().startswith(b"+OK "))
        self.clock.advance(600)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"-ERR", transport.value())
        self.lose(proto, transport)
        self.successResultOf(self.inbox.lockExclusive())()

    def test_readErrorMidStream(self) -> None:
        """
        A read failing after part of the message was sent closes the
        connection (no reply can follow half a message).
        """
        class Broken(BytesIO):
            def read(self, size=-1):
                if self.tell() >= server.CHUNK_SIZE:
                    raise OSError("bad sector")
                return super().read(size)

        self.successResultOf(self.inbox.append(BytesIO(b"x" * 200000)))
        self.inbox.openMessage = lambda uid: defer.succeed(Broken(b"x" * 200000))
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 4\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class HelperTests(SynchronousTestCase):
    """
    The stuffing and TOP filters on their own, with every split point.
    """

    def feedAll(self, chunks, topLines=None) -> bytes:
        stuffer = DotStuffer()
        top = TopFilter(topLines) if topLines is not None else None
        out = []
        for chunk in chunks:
            if top is not None:
                chunk = top.feed(chunk)
            out.append(stuffer.feed(chunk))
            if top is not None and top.done:
                break
        return b"".join(out) + stuffer.finish()

    def test_stuffingEverySplit(self) -> None:
        """
        Whatever the split, the result is the same.
        """
        text = b".a\r\nb\r\n.\r\n..c\r\nd."
        whole = self.feedAll([text])
        self.assertEqual(whole, b"..a\r\nb\r\n..\r\n...c\r\nd.\r\n.\r\n")
        for i in range(len(text) + 1):
            self.assertEqual(self.feedAll([text[:i], text[i:]]), whole)

    def test_emptyMessage(self) -> None:
        """
        An empty message is just the terminator.
        """
        self.assertEqual(self.feedAll([b""]), b".\r\n")
        self.assertEqual(server.multiLineResponse(b"+OK\r\n", b""), b"+OK\r\n.\r\n")

    def test_wholeMessageAsStreamed(self) -> None:
        """
        L{server.multiLineResponse}, for a message read whole, gives what
        the L{DotStuffer} gives for it in pieces, after the status line.
        """
        for text in (b".", b"\n", b"\r", b"a", b".a\r\n", b"a\r\n.", b"a\r\n.\r\n", b"..\r\n..",
                     b"x\r\n\r\n.\r\n..\r\nend", b"no newline", b"bare LF\n.dot\n", b"CR at end\r"):
            self.assertEqual(server.multiLineResponse(b"+OK\r\n", text),
                             b"+OK\r\n" + self.feedAll([text[:1], text[1:]]), text)

    def test_topEverySplit(self) -> None:
        """
        TOP finds the header end and counts lines across any split.
        """
        text = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
        for k, expected in ((0, b"A: 1\r\nB: 2\r\n\r\n"), (2, b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n"), (9, text)):
            expected = expected.replace(b"\r\n.l2", b"\r\n..l2") + b".\r\n"
            for i in range(len(text) + 1):
                self.assertEqual(self.feedAll([text[:i], text[i:]], k), expected, (k, i))
                for j in range(i, len(text) + 1):
                    self.assertEqual(self.feedAll([text[:i], text[i:j], text[j:]], k), expected, (k, i, j))

    def test_senderIsPushProducer(self) -> None:
        """
        L{MessageSender} provides IPushProducer.
        """
        from twisted.internet.interfaces import IPushProducer
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IPushProducer, MessageSender(StringTransport(), BytesIO(b""))))


class LoopbackTests(POP3TestsMixin, TestCase):
    """
    One session over a real loopback socket with the standard library's
    C{poplib}, so the producer meets a real TCP transport's pauses.
    """

    def setUp(self) -> None:
        POP3TestsMixin.setUp(self)
        self.big = b"Subject: big\r\n\r\n" + b"".join(
            b".line %d of a message big enough to fill many TCP buffers\r\n" % (i,) for i in range(40000)
        )
        self.successResultOf(self.inbox.append(BytesIO(self.big)))
        factory = POP3Factory(self.portal, "pop.example.test")
        d = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

        def listening(port):
            self.port = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def test_poplibSession(self) -> None:
        """
        poplib logs in, reads the big message exactly, deletes one message
        and quits; a second session sees the result.
        """
        portNumber = self.port.getHost().port

        def client():
            pop = poplib.POP3("127.0.0.1", portNumber, timeout=30)
            try:
                pop.user(ALICE)
                pop.pass_(PASSWORD.decode())
                stat = pop.stat()
                _, lines, octets = pop.retr(4)
                pop.dele(1)
                bye = pop.quit()
            except BaseException:
                pop.close()
                raise
            pop = poplib.POP3("127.0.0.1", portNumber, timeout=30)
            pop.apop(ALICE, PASSWORD.decode())
            after = pop.stat()
            pop.quit()
            return stat, b"\r\n".join(lines) + b"\r\n", octets, bye, after

        def check(result):
            stat, body, octets, bye, after = result
            self.assertEqual(stat, (4, len(MSG1 + MSG2 + MSG3 + self.big)))
            self.assertEqual(body, self.big)
            self.assertEqual(bye, b"+OK mailplat signing off (3 messages left)")
            self.assertEqual(after, (3, len(MSG2 + MSG3 + self.big)))

        return threads.deferToThread(client).addCallback(check)


class STLSTransport(StringTransport):
    """
    A StringTransport that fakes C{startTLS} and then says it is TLS.
    """

    tlsContext = None

    def startTLS(self, contextFactory) -> None:
        self.tlsContext = contextFactory
        alsoProvides(self, ISSLTransport)


class STLSTests(POP3TestsMixin, SynchronousTestCase):
    """
    C{STLS} (RFC 2595) and the cleartext rule with C{allow_plaintext}.
    """

    context = object()

    def tlsSession(self, peer=REMOTE, allowPlaintext: bool = False):
        factory = POP3Factory(self.portal, "pop.example.test", clock=self.clock, contextFactory=self.context,
                              allowPlaintext=allowPlaintext)
        proto = factory.buildProtocol(peer)
        transport = STLSTransport(peerAddress=peer)
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def test_capaAndStls(self) -> None:
        """
        Off loopback CAPA offers STLS and no passwords; after STLS it offers
        USER and SASL PLAIN but no STLS, and logins work.
        """
        proto, transport = self.tlsSession()
        capa = self.send(proto, transport, b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", capa)
        self.assertNotIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(self.send(proto, transport, b"USER " + ALICE.encode() + b"\r\n"),
                         server._PLAINTEXT_REFUSED + b"\r\n")
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertIs(transport.tlsContext, self.context)
        self.assertTrue(proto.tls)
        capa = self.send(proto, transport, b"CAPA\r\n")
        self.assertNotIn(b"\r\nSTLS\r\n", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR Command not permitted when TLS active\r\n")
        reply = self.send(proto, transport, b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
        self.assertTrue(reply.startswith(b"+OK\r\n+OK Logged in"), reply)
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR STLS is not valid in the TRANSACTION state\r\n")
        self.assertNotIn(b"STLS", self.send(proto, transport, b"CAPA\r\n"))

    def test_pipelinedAfterStlsDropped(self) -> None:
        """
        Commands sent with STLS in one packet are discarded, and the USER
        given before it is forgotten.
        """
        proto, transport = self.tlsSession(peer=LOOPBACK)
        self.send(proto, transport, b"USER " + ALICE.encode() + b"\r\n")
        self.assertEqual(
            self.send(proto, transport, b"STLS\r\nPASS " + PASSWORD + b"\r\n"),
            b"+OK Begin TLS negotiation\r\n",
        )
        self.assertEqual(proto.state, server.AUTHORIZATION)
        self.assertEqual(self.send(proto, transport, b"PASS " + PASSWORD + b"\r\n"), b"-ERR USER first\r\n")

    def test_noContext(self) -> None:
        """
        Without a context STLS is neither offered nor listed in HELP.
        """
        proto, transport = self.connect()
        self.assertNotIn(b"STLS", self.send(proto, transport, b"CAPA\r\n"))
        self.assertNotIn(b"STLS", self.send(proto, transport, b"HELP\r\n"))
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR STLS is not available\r\n")
        proto, transport = self.tlsSession()
        self.assertIn(b"\r\nSTLS\r\n", self.send(proto, transport, b"HELP\r\n"))
        self.assertEqual(self.send(proto, transport, b"STLS x\r\n"), b"-ERR STLS takes no argument\r\n")

    def test_transportWithoutTLS(self) -> None:
        factory = POP3Factory(self.portal, "pop.example.test", clock=self.clock, contextFactory=self.context)
        proto, transport = self.connect(peer=REMOTE, portal=self.portal)
        proto.contextFactory = factory.contextFactory
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR [SYS/TEMP] TLS not available\r\n")

    def test_allowPlaintext(self) -> None:
        """
        With C{allow_plaintext} passwords work off loopback without TLS.
        """
        proto, transport = self.tlsSession(allowPlaintext=True)
        self.assertIn(b"\r\nUSER\r\n", self.send(proto, transport, b"CAPA\r\n"))
        reply = self.send(proto, transport, b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
        self.assertTrue(reply.startswith(b"+OK\r\n+OK Logged in"), reply)


from mailplat.auth.passwd import PasswordFile, PasswordFileChecker  # noqa: E402
from tests.test_sasl import ScramClient  # noqa: E402


class SASLTests(POP3TestsMixin, SynchronousTestCase):
    """
    AUTH SCRAM-SHA-256 and AUTH LOGIN (RFC 5034) through the shared SASL
    layer, with the memory checker and with mailplat's password file.
    """

    def passwordFilePortal(self) -> Portal:
        passwords = PasswordFile(self.mktemp())
        passwords.setPassword(ALICE, PASSWORD.decode())
        return Portal(MailRealm(self.store), [PasswordFileChecker(passwords)])

    def scram(self, proto, transport, client: ScramClient, password: Optional[bytes] = None) -> bytes:
        reply = self.send(proto, transport, b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.first()) + b"\r\n")
        self.assertTrue(reply.startswith(b"+ ") and reply.endswith(b"\r\n"), reply)
        serverFirst = base64.b64decode(reply[2:-2])
        return self.send(proto, transport, base64.b64encode(client.final(serverFirst, password)) + b"\r\n")

    def test_scram(self) -> None:
        for portal in (None, self.passwordFilePortal()):
            proto, transport = self.connect(portal=portal)
            client = ScramClient(ALICE, PASSWORD)
            self.assertEqual(self.scram(proto, transport, client), b"+ " + base64.b64encode(client.serverSignature) + b"\r\n")
            self.assertEqual(proto.state, server.AUTHORIZATION)
            self.assertTrue(self.send(proto, transport, b"\r\n").startswith(b"+OK Logged in, 3 messages"))
            self.assertEqual(proto.state, server.TRANSACTION)
            self.lose(proto, transport)

    def test_scramWrongProof(self) -> None:
        proto, transport = self.connect(portal=self.passwordFilePortal())
        reply = self.scram(proto, transport, ScramClient(ALICE, PASSWORD), b"wrong")
        self.assertEqual(reply, b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(proto.state, server.AUTHORIZATION)

    def test_scramCancelFinal(self) -> None:
        """
        C{*} in place of the empty final response abandons the login; the
        maildrop is not locked.
        """
        proto, transport = self.connect()
        self.scram(proto, transport, ScramClient(ALICE, PASSWORD))
        self.assertEqual(self.send(proto, transport, b"*\r\n"), b"-ERR Authentication cancelled\r\n")
        self.assertEqual(proto.state, server.AUTHORIZATION)
        other, otherTransport = self.connect()
        self.assertTrue(self.send(other, otherTransport, b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
                        .startswith(b"+OK\r\n+OK Logged in"))

    def test_scramCancelAndMalformed(self) -> None:
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH SCRAM-SHA-256\r\n"), b"+ \r\n")
        self.assertEqual(self.send(proto, transport, b"*\r\n"), b"-ERR Authentication cancelled\r\n")
        self.assertEqual(
            self.send(proto, transport, b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,nope") + b"\r\n"),
            b"-ERR Invalid SCRAM message: expected n=\r\n",
        )
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n")[:4], b"-ERR")

    def test_login(self) -> None:
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH LOGIN\r\n"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(self.send(proto, transport, base64.b64encode(ALICE.encode()) + b"\r\n"), b"+ UGFzc3dvcmQ6\r\n")
        self.assertTrue(self.send(proto, transport, base64.b64encode(PASSWORD) + b"\r\n").startswith(b"+OK Logged in"))

    def test_cramMD5(self) -> None:
        proto, transport = self.connect()
        reply = self.send(proto, transport, b"AUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(reply[2:-2])
        digest = hmac.new(PASSWORD, challenge, hashlib.md5).hexdigest().encode()
        answer = base64.b64encode(ALICE.encode() + b" " + digest) + b"\r\n"
        self.assertTrue(self.send(proto, transport, answer).startswith(b"+OK Logged in"))

    def test_passwordFileOffers(self) -> None:
        proto, transport = self.connect(portal=self.passwordFilePortal())
        self.assertEqual(self.send(proto, transport, b"AUTH\r\n"), b"+OK\r\nPLAIN\r\nLOGIN\r\nSCRAM-SHA-256\r\n.\r\n")
        self.assertEqual(self.send(proto, transport, b"AUTH CRAM-MD5\r\n"), b"-ERR Unsupported authentication mechanism\r\n")

    def test_lineTooLongDropsPendingLogin(self) -> None:
        proto, transport = self.connect()
        self.scram(proto, transport, ScramClient(ALICE, PASSWORD))
        self.assertEqual(self.send(proto, transport, b"x" * 9000 + b"\r\n"), b"-ERR Line too long\r\n")
        self.assertIsNone(proto._pendingLogin)
        self.assertEqual(proto.state, server.AUTHORIZATION)
