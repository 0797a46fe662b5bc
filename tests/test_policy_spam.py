"""
Tests for L{mailplat.policy.spam} (against a fake rspamd and a fake spamd
on loopback) and L{mailplat.policy.greylist}.
"""

import io
import json
import sqlite3
import os
from typing import Any, Dict, List, Optional

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from mailplat.delivery.policy import ACCEPT, REJECT, TAG
from mailplat.policy.greylist import GreylistPolicy, network
from mailplat.policy.spam import RspamdPolicy, SpamdPolicy, parseSpamdReply, ScannerError
from tests.test_store_sql import POSTGRES, PostgresDatabaseMixin

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nBody.\r\n"


class Session:
    """
    The attributes of an L{SMTPSession} a policy reads.
    """

    def __init__(self, peerHost: str = "192.0.2.10", authenticated: Optional[str] = None) -> None:
        self.peerHost = peerHost
        self.peer = None
        self.helo = "client.example.com"
        self.hostname = "mx.test"
        self.authenticated = authenticated


class FakeRspamd(resource.Resource):
    """
    Answers C{POST /checkv2} with C{answer}, keeping each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        resource.Resource.__init__(self)
        self.answer: Dict[str, Any] = {"score": 1.5, "required_score": 15.0, "action": "no action", "symbols": {"R_SPF_ALLOW": {}}}
        self.requests: List[Any] = []
        self.code = 200

    def render_POST(self, request: Any) -> bytes:
        self.requests.append((request.path, request.requestHeaders, request.content.read()))
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.answer).encode("ascii")


class ScannerTestMixin:
    def listen(self, factory: protocol.Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port.getHost().port

    @defer.inlineCallbacks
    def closedPort(self):
        port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        return number


class RspamdTests(ScannerTestMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeRspamd()
        site = server.Site(self.fake)
        self.url = f"http://127.0.0.1:{self.listen(site)}"

    def check(self, policy: RspamdPolicy, session: Optional[Session] = None):
        return policy.checkMessage(session or Session(), "a@example.com", ["b@example.org", "c@example.org"], io.BytesIO(MESSAGE))

    @defer.inlineCallbacks
    def test_ham(self) -> None:
        verdict = yield self.check(RspamdPolicy(self.url, reactor))
        self.assertEqual(verdict.action, TAG)
        self.assertEqual(
            verdict.headers,
            [b"X-Spam-Status: No, score=1.5 required=15.0\r\n\ttests=R_SPF_ALLOW\r\n", b"X-Spam-Score: 1.5\r\n"],
        )
        path, headers, body = self.fake.requests[0]
        self.assertEqual(path, b"/checkv2")
        self.assertEqual(body, MESSAGE)
        self.assertEqual(headers.getRawHeaders(b"IP"), [b"192.0.2.10"])
        self.assertEqual(headers.getRawHeaders(b"From"), [b"a@example.com"])
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"client.example.com"])
        self.assertEqual(len(headers.getRawHeaders(b"Rcpt")), 2)

    @defer.inlineCallbacks
    def test_addHeaderAction(self) -> None:
        self.fake.answer = {"score": 7.0, "required_score": 15.0, "action": "add header", "symbols": {}}
        verdict = yield self.check(RspamdPolicy(self.url, reactor))
        self.assertEqual(verdict.action, TAG)
        self.assertIn(b"X-Spam-Flag: YES\r\n", verdict.headers)
        self.assertTrue(verdict.headers[0].startswith(b"X-Spam-Status: Yes, score=7.0"))

    @defer.inlineCallbacks
    def test_rejectAction(self) -> None:
        self.fake.answer = {"score": 20.0, "required_score": 15.0, "action": "reject", "symbols": {}}
        verdict = yield self.check(RspamdPolicy(self.url, reactor))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))

    @defer.inlineCallbacks
    def test_ownThresholds(self) -> None:
        self.fake.answer = {"score": 8.0, "required_score": 15.0, "action": "no action", "symbols": {}}
        verdict = yield self.check(RspamdPolicy(self.url, reactor, rejectScore=10.0, addHeaderScore=5.0))
        self.assertEqual(verdict.action, TAG)
        self.assertIn(b"X-Spam-Flag: YES\r\n", verdict.headers)
        self.fake.answer["score"] = 12.0
        verdict = yield self.check(RspamdPolicy(self.url, reactor, rejectScore=10.0, addHeaderScore=5.0))
        self.assertEqual(verdict.action, REJECT)

    @defer.inlineCallbacks
    def test_down(self) -> None:
        url = f"http://127.0.0.1:{(yield self.closedPort())}"
        verdict = yield self.check(RspamdPolicy(url, reactor))
        self.assertEqual(verdict.action, TAG)
        self.assertTrue(verdict.headers[0].startswith(b"X-Spam-Status: Unscanned (rspamd: "))
        verdict = yield self.check(RspamdPolicy(url, reactor, onFailure="tempfail"))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (451, "4.7.1"))

    @defer.inlineCallbacks
    def test_httpError(self) -> None:
        self.fake.code = 500
        verdict = yield self.check(RspamdPolicy(self.url, reactor))
        self.assertEqual(verdict.headers, [b"X-Spam-Status: Unscanned (rspamd: HTTP 500)\r\n"])

    @defer.inlineCallbacks
    def test_authenticatedSkipped(self) -> None:
        verdict = yield self.check(RspamdPolicy(self.url, reactor), Session(authenticated="a@example.com"))
        self.assertEqual(verdict.action, ACCEPT)
        self.assertEqual(self.fake.requests, [])


class FakeSpamd(protocol.Protocol):
    """
    Reads one SPAMC request and answers with the factory's C{answer}.
    """

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
        if len(body) < length:
            return
        self.factory.requests.append((head, body))  # type: ignore[attr-defined]
        if self.factory.answer is not None:  # type: ignore[attr-defined]
            self.transport.write(self.factory.answer)  # type: ignore[attr-defined]
            self.transport.loseConnection()


class SpamdTests(ScannerTestMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.factory = protocol.Factory.forProtocol(FakeSpamd)
        self.factory.requests = []  # type: ignore[attr-defined]
        self.factory.answer = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 24\r\nSpam: True ; 15.2 / 5.0\r\n\r\nBAYES_99,URIBL_BLACK\r\n"  # type: ignore[attr-defined]
        self.port = self.listen(self.factory)

    def check(self, policy: SpamdPolicy):
        return policy.checkMessage(Session(), "a@example.com", ["b@example.org"], io.BytesIO(MESSAGE))

    @defer.inlineCallbacks
    def test_spam(self) -> None:
        verdict = yield self.check(SpamdPolicy("127.0.0.1", self.port, reactor, user="b"))
        self.assertEqual(verdict.action, TAG)
        self.assertEqual(
            verdict.headers,
            [
                b"X-Spam-Status: Yes, score=15.2 required=5.0\r\n\ttests=BAYES_99,URIBL_BLACK\r\n",
                b"X-Spam-Score: 15.2\r\n",
                b"X-Spam-Flag: YES\r\n",
            ],
        )
        head, body = self.factory.requests[0]  # type: ignore[attr-defined]
        self.assertEqual(head, b"SYMBOLS SPAMC/1.5\r\nContent-length: " + str(len(MESSAGE)).encode() + b"\r\nUser: b")
        self.assertEqual(body, MESSAGE)

    @defer.inlineCallbacks
    def test_rejectScore(self) -> None:
        verdict = yield self.check(SpamdPolicy("127.0.0.1", self.port, reactor, rejectScore=10.0))
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (550, "5.7.1"))

    @defer.inlineCallbacks
    def test_ham(self) -> None:
        self.factory.answer = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.4 / 5.0\r\n\r\n"  # type: ignore[attr-defined]
        verdict = yield self.check(SpamdPolicy("127.0.0.1", self.port, reactor))
        self.assertEqual(verdict.headers, [b"X-Spam-Status: No, score=0.4 required=5.0\r\n\ttests=none\r\n", b"X-Spam-Score: 0.4\r\n"])

    @defer.inlineCallbacks
    def test_down(self) -> None:
        port = yield self.closedPort()
        verdict = yield self.check(SpamdPolicy("127.0.0.1", port, reactor))
        self.assertEqual(verdict.action, TAG)
        self.assertTrue(verdict.headers[0].startswith(b"X-Spam-Status: Unscanned (spamd: "))
        verdict = yield self.check(SpamdPolicy("127.0.0.1", port, reactor, onFailure="tempfail"))
        self.assertEqual(verdict.reply.code, 451)

    @defer.inlineCallbacks
    def test_timeout(self) -> None:
        self.factory.answer = None  # type: ignore[attr-defined]
        verdict = yield self.check(SpamdPolicy("127.0.0.1", self.port, reactor, timeout=0.2))
        self.assertEqual(verdict.headers, [b"X-Spam-Status: Unscanned (spamd: TimeoutError)\r\n"])

    def test_parseErrors(self) -> None:
        self.assertRaises(ScannerError, parseSpamdReply, b"")
        self.assertRaises(ScannerError, parseSpamdReply, b"SPAMD/1.1 76 EX_PROTOCOL\r\n\r\n")
        self.assertRaises(ScannerError, parseSpamdReply, b"SPAMD/1.1 0 EX_OK\r\n\r\n")
        self.assertRaises(ScannerError, parseSpamdReply, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; x / y\r\n\r\n")


class GreylistTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.path = os.path.join(self.mktemp(), "greylist.sqlite")
        self.policy = GreylistPolicy(self.path, self.clock, delay=300)

    def check(self, policy: Optional[GreylistPolicy] = None, ip: str = "192.0.2.10", sender: str = "a@example.com", recipients: Optional[List[str]] = None, authenticated: Optional[str] = None):
        policy = policy or self.policy
        return self.successResultOf(policy.checkMessage(Session(ip, authenticated), sender, recipients or ["b@example.org"], io.BytesIO(MESSAGE)))

    def test_network(self) -> None:
        self.assertEqual(network("192.0.2.77"), "192.0.2.0/24")
        self.assertEqual(network("2001:db8:1:2:3::4"), "2001:db8:1:2::/64")

    def test_firstAttemptDeferred(self) -> None:
        verdict = self.check()
        self.assertEqual(verdict.action, REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (451, "4.7.1"))
        self.clock.advance(299)
        self.assertEqual(self.check().action, REJECT)
        self.clock.advance(1)
        self.assertEqual(self.check().action, ACCEPT)
        # Another host of the same /24 is known too, and it stays accepted.
        self.clock.advance(86400)
        self.assertEqual(self.check(ip="192.0.2.99").action, ACCEPT)

    def test_otherTriplets(self) -> None:
        self.check()
        self.clock.advance(300)
        self.assertEqual(self.check(sender="other@example.com").action, REJECT)
        self.assertEqual(self.check(ip="198.51.100.1").action, REJECT)
        self.assertEqual(self.check(recipients=["b@example.org", "new@example.org"]).action, REJECT)

    def test_persistent(self) -> None:
        self.check()
        self.clock.advance(300)
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("SELECT count(*) FROM triplets").fetchone(), (1,))
        again = GreylistPolicy(self.path, self.clock, delay=300)
        self.assertEqual(self.check(again).action, ACCEPT)

    def test_sharedBetweenProcesses(self) -> None:
        """
        Two policies on one file (two worker processes) see each other's
        triplets: a retry is accepted whichever takes it, and neither
        loses what the other recorded.
        """
        other = GreylistPolicy(self.path, self.clock, delay=300)
        self.assertEqual(self.check().action, REJECT)
        self.assertEqual(self.check(other, recipients=["c@example.org"]).action, REJECT)
        self.clock.advance(300)
        self.assertEqual(self.check(other).action, ACCEPT)
        self.assertEqual(self.check(recipients=["c@example.org"]).action, ACCEPT)

    def test_oldJSONTakenIn(self) -> None:
        """
        The JSON state of an older version beside the file is taken in
        once, then removed.
        """
        old = os.path.join(os.path.dirname(self.path), "greylist.json")
        os.makedirs(os.path.dirname(old))
        key = self.policy.key("192.0.2.10", "a@example.com", "b@example.org")
        with open(old, "w") as f:
            json.dump({key: {"first": self.clock.seconds() - 600, "last": self.clock.seconds(), "passed": True},
                       "junk": "not an entry"}, f)
        self.assertEqual(self.check().action, ACCEPT)
        self.assertFalse(os.path.exists(old))

    def test_damagedFileSetAside(self) -> None:
        """
        A file that is not a database is set aside and made anew (the
        sender is greylisted again); a state that cannot be used at all
        lets mail through.
        """
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"not a database at all" * 100)
        self.assertEqual(self.check().action, REJECT)
        self.assertTrue(os.path.exists(self.path + ".damaged"))
        broken = GreylistPolicy(os.path.join(self.path, "cannot", "be"), self.clock, delay=300)
        self.assertEqual(self.check(broken).action, ACCEPT)
        self.flushLoggedErrors()

    def test_retryWindow(self) -> None:
        self.check()
        self.clock.advance(5 * 3600)
        self.assertEqual(self.check().action, REJECT)

    def test_authenticatedSkipped(self) -> None:
        self.assertEqual(self.check(authenticated="a@example.com").action, ACCEPT)
        self.assertFalse(os.path.exists(self.path))

    def test_loopbackTrusted(self) -> None:
        """
        Mail from loopback is not greylisted while loopback is trusted.
        """
        from twisted.internet.address import IPv4Address

        local = Session("127.0.0.1")
        local.peer = IPv4Address("TCP", "127.0.0.1", 2525)
        self.assertEqual(self.successResultOf(self.policy.checkRecipient(local, "a@example.com", "b@example.org")).action, ACCEPT)
        strict = GreylistPolicy(self.path, self.clock, delay=300, trustLoopback=False)
        self.assertEqual(self.successResultOf(strict.checkRecipient(local, "a@example.com", "b@example.org")).action, REJECT)

    def test_perRecipientAtRcpt(self) -> None:
        """
        At RCPT each recipient is judged alone: a known triplet passes
        while a new one waits, and the end of DATA then accepts the
        recipients that passed, without writing the state again.
        """
        session = Session("192.0.2.10")

        def rcpt(recipient: str) -> str:
            return self.successResultOf(self.policy.checkRecipient(session, "a@example.com", recipient)).action

        self.assertEqual(rcpt("b@example.org"), REJECT)
        self.clock.advance(300)
        self.assertEqual(rcpt("b@example.org"), ACCEPT)
        self.assertEqual(rcpt("new@example.org"), REJECT)
        written = os.stat(self.path).st_mtime_ns
        self.assertEqual(self.check(recipients=["b@example.org"]).action, ACCEPT)
        self.assertEqual(os.stat(self.path).st_mtime_ns, written)


class PostgresGreylistTests(PostgresDatabaseMixin, unittest.TestCase):
    """
    With the store on PostgreSQL, the greylisting state is in its
    database, so that several nodes share it: two policies on two
    L{PostgresDatabase}s of one schema stand for two nodes.
    """

    def setUp(self) -> Any:
        super().setUp()
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.path = os.path.join(self.mktemp(), "greylist.sqlite")

    def node(self) -> GreylistPolicy:
        from mailplat.store.sql.database import PostgresDatabase

        database = PostgresDatabase(POSTGRES, self.schema, poolSize=2)
        self.addCleanup(database.close)
        return GreylistPolicy(self.path, self.clock, delay=300, database=database)

    def check(self, policy: GreylistPolicy, ip: str = "192.0.2.10", recipient: str = "b@example.org") -> Any:
        return policy.checkRecipient(Session(ip), "a@example.com", recipient).addCallback(lambda v: v.action)

    @defer.inlineCallbacks
    def test_sharedBetweenNodes(self) -> Any:
        """
        A first attempt on one node is recognised when its retry reaches
        the other; nothing goes to the data directory's file.
        """
        one, two = self.node(), self.node()
        self.assertEqual((yield self.check(one)), REJECT)
        self.assertEqual((yield self.check(two, recipient="c@example.org")), REJECT)
        self.clock.advance(299)
        self.assertEqual((yield self.check(two)), REJECT)
        self.clock.advance(1)
        self.assertEqual((yield self.check(two)), ACCEPT)
        self.assertEqual((yield self.check(one, recipient="c@example.org")), ACCEPT)
        self.assertEqual(self.rawQuery("SELECT count(*) FROM greylist WHERE passed = 1"), [(2,)])
        self.assertFalse(os.path.exists(self.path))

    @defer.inlineCallbacks
    def test_expired(self) -> Any:
        """
        A first attempt not retried within the window is forgotten.
        """
        one = self.node()
        yield self.check(one)
        self.clock.advance(5 * 3600)
        self.assertEqual((yield self.check(one, ip="198.51.100.7")), REJECT)
        self.assertEqual(self.rawQuery("SELECT count(*) FROM greylist"), [(1,)])
        self.assertEqual((yield self.check(one)), REJECT)

    @defer.inlineCallbacks
    def test_unusableLetsThrough(self) -> Any:
        """
        A database that cannot take the state lets mail through, logged.
        """
        one = self.node()
        yield one.database.close()
        self.assertEqual((yield self.check(one)), ACCEPT)
