"""
Tests for L{mailplat.smtp.server}: the ESMTP server protocol.
"""

import hashlib
import tracemalloc
from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery
from mailplat.smtp.server import SMTPFactory, SMTPServer, SMTPSession

HOST = "mx.example.test"
PEER = IPv4Address("TCP", "192.0.2.5", 40000)


@implementer(IDelivery)
class FakeDelivery:
    """
    Records every call; each answer can be set to a value, a Deferred, an
    exception to raise, or a callable giving one of those.

    @ivar messages: C{(sender, recipients, data)} for each delivery.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.sessions: List[Any] = []
        self.senderAnswer: Any = None
        self.recipientAnswers: dict = {}
        self.deliverAnswer: Any = None
        self.messages: List[tuple] = []
        self.files: List[Any] = []
        self.envelopes: List[Any] = []

    def _answer(self, answer: Any) -> Any:
        if callable(answer) and not isinstance(answer, Deferred):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def validateSender(self, session: Any, sender: Optional[str]) -> Any:
        self.calls.append(("sender", sender))
        self.sessions.append(session)
        return self._answer(self.senderAnswer)

    def validateRecipient(self, session: Any, recipient: str) -> Any:
        self.calls.append(("recipient", recipient))
        return self._answer(self.recipientAnswers.get(recipient))

    def deliver(self, session: Any, sender: Optional[str], recipients: List[str], message: Any) -> Any:
        self.calls.append(("deliver", sender, list(recipients)))
        self.envelopes.append(session.transaction)
        self.files.append(message)
        self.messages.append((sender, list(recipients), message.read()))
        return self._answer(self.deliverAnswer)


class NoDelayTransport(StringTransport):
    """
    A StringTransport that records C{setTcpNoDelay}.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class ServerTestsMixin:
    """
    Set-up shared by the test cases: a server on a StringTransport with a
    Clock and a L{FakeDelivery}.
    """

    def connect(self, start: float = 0, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.delivery = FakeDelivery()
        self.factory = SMTPFactory(self.delivery, HOST, clock=self.clock, **kwargs)
        self.proto = self.factory.buildProtocol(PEER)
        self.transport = NoDelayTransport(peerAddress=PEER)
        self.proto.makeConnection(self.transport)

    def setUp(self) -> None:
        self.connect()

    def replies(self) -> List[str]:
        """
        The reply lines written since the last call.
        """
        out = self.transport.value().decode("ascii")
        self.transport.clear()
        self.assertTrue(out == "" or out.endswith("\r\n"), out)
        return out.split("\r\n")[:-1]

    def send(self, data: bytes) -> List[str]:
        self.proto.dataReceived(data)
        return self.replies()

    def ehlo(self) -> None:
        self.replies()
        self.send(b"EHLO client.example.test\r\n")

    def transaction(self, rcpts: tuple = ("bob@example.test",)) -> None:
        self.ehlo()
        self.assertEqual(self.send(b"MAIL FROM:<alice@example.org>\r\n"), ["250 2.1.0 Sender OK"])
        for r in rcpts:
            self.assertEqual(self.send(b"RCPT TO:<%s>\r\n" % r.encode()), ["250 2.1.5 Recipient OK"])

    def delivered(self, index: int = -1) -> bytes:
        """
        The body of a delivered message, without the Received header.
        """
        data = self.delivery.messages[index][2]
        lines = data.split(b"\r\n")
        for i, line in enumerate(lines):
            if not line.startswith((b"Received:", b"\t")):
                return b"\r\n".join(lines[i:])
        return b""


class GreetingTests(ServerTestsMixin, SynchronousTestCase):
    def test_greeting(self) -> None:
        self.assertEqual(self.replies(), [f"220 {HOST} ESMTP mailplat"])

    def test_noDelay(self) -> None:
        self.assertTrue(self.transport.noDelay)

    def test_session(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        session = self.delivery.sessions[0]
        self.assertIsInstance(session, SMTPSession)
        self.assertIs(session, self.proto.session)
        self.assertEqual(session.hostname, HOST)
        self.assertEqual(session.helo, "client.example.test")
        self.assertTrue(session.esmtp)
        self.assertEqual(session.peer, PEER)
        self.assertEqual(session.peerHost, "192.0.2.5")
        self.assertFalse(session.tls)
        self.assertIsNone(session.authenticated)

    def test_fakeDeliveryProvides(self) -> None:
        self.assertTrue(verifyObject(IDelivery, self.delivery))

    def test_ehlo(self) -> None:
        self.replies()
        self.assertEqual(
            self.send(b"EHLO client.example.test\r\n"),
            [
                f"250-{HOST} Hello client.example.test",
                "250-PIPELINING",
                f"250-SIZE {50 * 1024 * 1024}",
                "250-8BITMIME",
                "250-ENHANCEDSTATUSCODES",
                "250-DSN",
                "250-SMTPUTF8",
                "250 CHUNKING",
            ],
        )

    def test_ehloSizeFollowsFactory(self) -> None:
        self.connect(maxMessageSize=12345)
        self.replies()
        self.assertIn("250-SIZE 12345", self.send(b"EHLO c.example\r\n"))

    def test_helo(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"HELO client.example.test\r\n"), [f"250 {HOST} Hello client.example.test"])
        self.assertFalse(self.proto.session.esmtp)
        self.assertEqual(self.proto.session.helo, "client.example.test")

    def test_heloAddressLiteral(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"EHLO [192.0.2.5]\r\n")[0], f"250-{HOST} Hello [192.0.2.5]")
        self.assertEqual(self.send(b"HELO [IPv6:2001:db8::1]\r\n"), [f"250 {HOST} Hello [IPv6:2001:db8::1]"])

    def test_heloMissingArgument(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"EHLO\r\n"), ["501 5.5.4 Syntax: EHLO hostname"])
        self.assertEqual(self.send(b"HELO \r\n"), ["501 5.5.4 Syntax: HELO hostname"])
        self.assertIsNone(self.proto.session.helo)

    def test_heloBadArgument(self) -> None:
        self.replies()
        for bad in [b"a;b", b"foo bar", b"[300.1.1.1]", b"-x.example", b"a..b", b"x" * 256]:
            self.assertEqual(self.send(b"EHLO " + bad + b"\r\n"), ["501 5.5.4 Invalid domain name"], bad)

    def test_heloUnderscoreTolerated(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"HELO my_pc.local\r\n"), [f"250 {HOST} Hello my_pc.local"])

    def test_ehloResetsTransaction(self) -> None:
        self.transaction()
        self.send(b"EHLO again.example\r\n")
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_lowerCaseVerbs(self) -> None:
        self.replies()
        self.send(b"ehlo c.example\r\n")
        self.assertEqual(self.send(b"mail from:<a@example.org>\r\n"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.send(b"Rcpt To:<b@example.test>\r\n"), ["250 2.1.5 Recipient OK"])


class SimpleVerbTests(ServerTestsMixin, SynchronousTestCase):
    def test_noop(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(self.send(b"NOOP anything\r\n"), ["250 2.0.0 Ok"])

    def test_rset(self) -> None:
        self.transaction()
        self.assertEqual(self.send(b"RSET\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])
        self.assertEqual(self.send(b"RSET x\r\n"), ["501 5.5.4 Syntax: RSET"])

    def test_quit(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"QUIT\r\n"), ["221 2.0.0 Bye"])
        self.assertTrue(self.transport.disconnecting)

    def test_quitStopsPipeline(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"QUIT\r\nNOOP\r\nHELO x.example\r\n"), ["221 2.0.0 Bye"])
        self.assertEqual(self.send(b"NOOP\r\n"), [])

    def test_quitWithArgument(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"QUIT now\r\n"), ["501 5.5.4 Syntax: QUIT"])
        self.assertFalse(self.transport.disconnecting)

    def test_help(self) -> None:
        self.replies()
        lines = self.send(b"HELP\r\n")
        self.assertEqual(lines[0], "214-2.0.0 Commands supported:")
        self.assertTrue(lines[-1].startswith("214 2.0.0 "))
        for middle in lines[1:-1]:
            self.assertTrue(middle.startswith("214-2.0.0 "))
        text = " ".join(lines)
        for verb in ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN"]:
            self.assertIn(verb, text)
        self.assertEqual(self.send(b"HELP MAIL\r\n")[0], "214-2.0.0 Commands supported:")

    def test_vrfyExpn(self) -> None:
        self.replies()
        for line in [b"VRFY alice", b"VRFY <alice@example.test>", b"EXPN staff"]:
            reply = self.send(line + b"\r\n")
            self.assertEqual(len(reply), 1)
            self.assertTrue(reply[0].startswith("252 2.5.0 "), reply)
        self.assertEqual(self.delivery.calls, [])
        self.assertEqual(self.send(b"VRFY\r\n"), ["501 5.5.4 Syntax: VRFY address"])
        self.assertEqual(self.send(b"EXPN\r\n"), ["501 5.5.4 Syntax: EXPN address"])

    def test_notImplemented(self) -> None:
        self.ehlo()
        for verb in [b"TURN", b"SEND FROM:<a@b.example>", b"SOML FROM:<a@b.example>", b"SAML FROM:<a@b.example>"]:
            self.assertEqual(self.send(verb + b"\r\n"), ["502 5.5.1 Command not implemented"], verb)

    def test_unknown(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"FOO bar\r\n"), ["500 5.5.2 Command unrecognized"])
        self.assertEqual(self.send(b"\r\n"), ["500 5.5.2 Command unrecognized"])
        self.assertEqual(self.send(b"GET / HTTP/1.0\r\n"), ["500 5.5.2 Command unrecognized"])

    def test_bareLFCommand(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"NOOP\n"), ["500 5.5.2 Bare CR or LF not allowed, lines end with CRLF"])
        self.assertEqual(self.send(b"NOOP\rQUIT\r\n"), ["500 5.5.2 Bare CR or LF not allowed, lines end with CRLF"])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])


class SequenceTests(ServerTestsMixin, SynchronousTestCase):
    def test_mailBeforeHelo(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["503 5.5.1 Send HELO/EHLO first"])
        self.assertEqual(self.delivery.calls, [])

    def test_rcptBeforeMail(self) -> None:
        self.ehlo()
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_dataBeforeMail(self) -> None:
        self.ehlo()
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_dataBeforeRcpt(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Need RCPT command"])

    def test_dataAfterRefusedRecipients(self) -> None:
        self.ehlo()
        self.delivery.recipientAnswers["b@example.test"] = SMTPReply(550, "5.1.1", "No such user")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"),
            ["250 2.1.0 Sender OK", "550 5.1.1 No such user", "554 5.5.1 No valid recipients"],
        )

    def test_nestedMail(self) -> None:
        self.transaction()
        self.assertEqual(self.send(b"MAIL FROM:<c@example.org>\r\n"), ["503 5.5.1 Sender already specified"])

    def test_dataWithArgument(self) -> None:
        self.transaction()
        self.assertEqual(self.send(b"DATA now\r\n"), ["501 5.5.4 Syntax: DATA"])


class AddressTests(ServerTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.connect()
        self.ehlo()

    def mail(self, line: bytes) -> List[str]:
        reply = self.send(line + b"\r\n")
        if reply == ["250 2.1.0 Sender OK"]:
            self.send(b"RSET\r\n")
        return reply

    def test_normalised(self) -> None:
        self.assertEqual(self.mail(b"MAIL FROM:<Alice@Example.ORG>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls[-1], ("sender", "alice@example.org"))

    def test_spaceAfterColon(self) -> None:
        self.assertEqual(self.mail(b"MAIL FROM: <a@example.org>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls[-1], ("sender", "a@example.org"))

    def test_nullSender(self) -> None:
        self.assertEqual(self.mail(b"MAIL FROM:<>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls[-1], ("sender", None))

    def test_sourceRouteIgnored(self) -> None:
        self.assertEqual(self.mail(b"MAIL FROM:<@a.example,@b.example:user@d.example>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls[-1], ("sender", "user@d.example"))
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<@relay.example:bob@example.test>\r\n"), ["250 2.1.5 Recipient OK"])
        self.assertEqual(self.delivery.calls[-1], ("recipient", "bob@example.test"))

    def test_quotedLocalPart(self) -> None:
        self.assertEqual(self.mail(b'MAIL FROM:<"john doe>\\"x"@example.org>'), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls[-1], ("sender", '"john doe>\\"x"@example.org'))

    def test_addressLiteral(self) -> None:
        self.assertEqual(self.mail(b"MAIL FROM:<a@[192.0.2.1]>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.mail(b"MAIL FROM:<a@[IPv6:2001:db8::1]>"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.mail(b"MAIL FROM:<a@[300.0.0.1]>")[0][:9], "501 5.1.7")
        self.assertEqual(self.mail(b"MAIL FROM:<a@[IPv6:zz::1]>")[0][:9], "501 5.1.7")

    def test_badSenderSyntax(self) -> None:
        for line in [
            b"MAIL FROM:",
            b"MAIL FROM:a@example.org",
            b"MAIL FROM:<a@example.org",
            b"MAIL FROM:<a>",
            b"MAIL FROM:<a b@example.org>",
            b"MAIL FROM:<a@@example.org>",
            b"MAIL FROM:<.a@example.org>",
            b"MAIL FROM:<a@-example.org>",
            b"MAIL FROM:<postmaster>",
            b"MAIL FROM:  <a@example.org>",
        ]:
            reply = self.mail(line)
            self.assertEqual(len(reply), 1, line)
            self.assertTrue(reply[0].startswith("501 5.1.7 "), (line, reply))
        self.assertEqual(self.delivery.calls, [])

    def test_mailSyntax(self) -> None:
        self.assertEqual(self.mail(b"MAIL"), ["501 5.5.4 Syntax: MAIL FROM:<address>"])
        self.assertEqual(self.mail(b"MAIL TO:<a@example.org>"), ["501 5.5.4 Syntax: MAIL FROM:<address>"])
        self.assertEqual(self.mail(b"MAIL FROM:<a@example.org>garbage")[0][:9], "501 5.5.4")

    def test_badRecipientSyntax(self) -> None:
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        for line in [
            b"RCPT TO:",
            b"RCPT TO:<>",
            b"RCPT TO:bob@example.test",
            b"RCPT TO:<bob>",
            b"RCPT TO:<bob@example.test",
        ]:
            reply = self.send(line + b"\r\n")
            self.assertEqual(len(reply), 1, line)
            self.assertTrue(reply[0].startswith("501 5.1.3 "), (line, reply))
        self.assertEqual(self.send(b"RCPT <bob@example.test>\r\n"), ["501 5.5.4 Syntax: RCPT TO:<address>"])
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_postmaster(self) -> None:
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<Postmaster>\r\n"), ["250 2.1.5 Recipient OK"])
        self.assertEqual(self.delivery.calls[-1], ("recipient", "postmaster"))

    def test_localPartLimit(self) -> None:
        ok = b"a" * 64 + b"@example.org"
        self.assertEqual(self.mail(b"MAIL FROM:<" + ok + b">"), ["250 2.1.0 Sender OK"])
        reply = self.mail(b"MAIL FROM:<a" + ok + b">")
        self.assertEqual(reply, ["501 5.1.7 Bad sender address: Local part too long"])
        self.send(b"MAIL FROM:<>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<a" + ok + b">\r\n"), ["501 5.1.3 Bad recipient address: Local part too long"]
        )

    def test_pathLimit(self) -> None:
        domain = b".".join([b"d" * 60] * 3) + b".example"  # 190 octets
        ok = b"<" + b"a" * 63 + b"@" + domain + b">"
        self.assertEqual(len(ok), 256)
        self.assertEqual(self.mail(b"MAIL FROM:" + ok), ["250 2.1.0 Sender OK"])
        self.assertEqual(
            self.mail(b"MAIL FROM:<" + b"a" * 64 + b"@" + domain + b">"),
            ["501 5.1.7 Bad sender address: Path too long"],
        )
        self.send(b"MAIL FROM:<>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<" + b"a" * 64 + b"@" + domain + b">\r\n"),
            ["501 5.1.3 Bad recipient address: Path too long"],
        )

    def test_domainLimit(self) -> None:
        domain = b".".join([b"d" * 63] * 4) + b".ex"  # 258 octets
        self.assertEqual(self.mail(b"MAIL FROM:<a@" + domain + b">")[0][:9], "501 5.1.7")


class ParameterTests(ServerTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.connect(maxMessageSize=1000)
        self.ehlo()

    def test_size(self) -> None:
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org> SIZE=1000\r\n"), ["250 2.1.0 Sender OK"])

    def test_sizeTooBig(self) -> None:
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org> SIZE=1001\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size"],
        )
        self.assertEqual(self.delivery.calls, [])

    def test_sizeSyntax(self) -> None:
        for line in [b"SIZE", b"SIZE=", b"SIZE=abc", b"SIZE=-1", b"SIZE=1 SIZE=2"]:
            reply = self.send(b"MAIL FROM:<a@example.org> " + line + b"\r\n")
            self.assertTrue(reply[0].startswith("501 5.5.4 "), (line, reply))

    def test_body(self) -> None:
        for value in [b"7BIT", b"8BITMIME", b"8bitmime"]:
            self.assertEqual(
                self.send(b"MAIL FROM:<a@example.org> BODY=" + value + b" SIZE=10\r\n"), ["250 2.1.0 Sender OK"]
            )
            self.send(b"RSET\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"), ["555 5.5.4 Unsupported BODY parameter"]
        )

    def test_unknownMailParameter(self) -> None:
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org> MT-PRIORITY=3\r\n"), ["555 5.5.4 Unsupported parameter MT-PRIORITY"]
        )
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org> XFOO\r\n"), ["555 5.5.4 Unsupported parameter XFOO"])

    def test_unknownRcptParameter(self) -> None:
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<b@example.test> RRVS=2030-01-01T00:00:00Z\r\n"), ["555 5.5.4 Unsupported parameter RRVS"]
        )
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_parametersAfterHelo(self) -> None:
        self.send(b"HELO c.example\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org> SIZE=10\r\n"), ["555 5.5.4 Parameters not allowed after HELO"]
        )
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["250 2.1.0 Sender OK"])


class RecipientTests(ServerTestsMixin, SynchronousTestCase):
    def test_tooManyRecipients(self) -> None:
        self.connect(maxRecipients=2)
        self.transaction(("b@example.test", "c@example.test"))
        self.assertEqual(self.send(b"RCPT TO:<d@example.test>\r\n"), ["452 4.5.3 Too many recipients"])
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"hi\r\n.\r\n")[0][:9], "250 2.0.0")
        self.assertEqual(self.delivery.messages[0][1], ["b@example.test", "c@example.test"])
        self.assertNotIn(("recipient", "d@example.test"), self.delivery.calls)

    def test_duplicateRecipient(self) -> None:
        self.transaction(("b@example.test", "B@Example.Test"))
        self.send(b"DATA\r\n")
        self.send(b"hi\r\n.\r\n")
        self.assertEqual(self.delivery.messages[0][1], ["b@example.test"])

    def test_refusalDoesNotEndTransaction(self) -> None:
        self.delivery.recipientAnswers["x@example.test"] = SMTPReply(550, "5.1.1", "No such user here")
        self.transaction()
        self.assertEqual(self.send(b"RCPT TO:<x@example.test>\r\n"), ["550 5.1.1 No such user here"])
        self.send(b"DATA\r\n")
        self.send(b"hi\r\n.\r\n")
        self.assertEqual(self.delivery.messages[0][1], ["bob@example.test"])


class DeliveryAnswerTests(ServerTestsMixin, SynchronousTestCase):
    def test_senderRefusedRaise(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = SMTPReply(550, "5.7.1", "Go away")
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["550 5.7.1 Go away"])
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_senderRefusedFailure(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = lambda: fail(SMTPReply(451, "4.7.1", "Try later"))
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["451 4.7.1 Try later"])

    def test_refusal421Closes(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = SMTPReply(421, "4.3.2", "Shutting down")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n"), ["421 4.3.2 Shutting down"]
        )
        self.assertTrue(self.transport.disconnecting)

    def test_refusalWithoutEnhancedCode(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = SMTPReply(550, None, "No")
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["550 No"])

    def test_multiLineRefusal(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = SMTPReply(550, "5.7.1", "Go away\nand stay away")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org>\r\n"), ["550-5.7.1 Go away", "550 5.7.1 and stay away"]
        )

    def test_senderException(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = RuntimeError("database down")
        reply = self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(reply, ["451 4.3.0 Temporary failure, please try again later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_recipientFailure(self) -> None:
        self.transaction()
        self.delivery.recipientAnswers["c@example.test"] = lambda: fail(KeyError("boom"))
        reply = self.send(b"RCPT TO:<c@example.test>\r\n")
        self.assertEqual(reply, ["451 4.3.0 Temporary failure, please try again later"])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_recipientDeferred(self) -> None:
        self.transaction()
        d: Deferred = Deferred()
        self.delivery.recipientAnswers["c@example.test"] = d
        self.assertEqual(self.send(b"RCPT TO:<c@example.test>\r\n"), [])
        d.callback("whatever")
        self.assertEqual(self.replies(), ["250 2.1.5 Recipient OK"])

    def test_deliverFailure(self) -> None:
        self.transaction()
        self.delivery.deliverAnswer = lambda: fail(OSError("disk full"))
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"hi\r\n.\r\n"), ["451 4.3.0 Temporary failure, please try again later"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        # The transaction is over.
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_deliverRefused(self) -> None:
        self.transaction()
        self.delivery.deliverAnswer = SMTPReply(554, "5.7.1", "Spam")
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"hi\r\n.\r\n"), ["554 5.7.1 Spam"])

    def test_deliverDeferred(self) -> None:
        self.transaction()
        d: Deferred = Deferred()
        self.delivery.deliverAnswer = d
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"hi\r\n.\r\nNOOP\r\n"), [])
        self.assertEqual(self.transport.producerState, "paused")
        message = self.delivery.files[0]
        self.assertFalse(message.closed)
        d.callback(None)
        reply = self.replies()
        self.assertEqual(len(reply), 2)
        self.assertTrue(reply[0].startswith("250 2.0.0 Ok: queued as "), reply)
        self.assertEqual(reply[1], "250 2.0.0 Ok")
        self.assertEqual(self.transport.producerState, "producing")
        self.assertTrue(message.closed)

    def test_queuedIdMatchesReceived(self) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        reply = self.send(b"hi\r\n.\r\n")
        queueId = reply[0].rsplit(" ", 1)[1]
        self.assertIn(b" id " + queueId.encode() + b"\r\n", self.delivery.messages[0][2])

    def test_bogusReplyCode(self) -> None:
        self.ehlo()
        self.delivery.senderAnswer = SMTPReply(999, "9.9.9", "What")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org>\r\n"), ["451 4.3.0 Temporary failure, please try again later"]
        )
        self.assertEqual(len(self.flushLoggedErrors(SMTPReply)), 1)


class PipeliningTests(ServerTestsMixin, SynchronousTestCase):
    def test_oneWrite(self) -> None:
        self.replies()
        reply = self.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"
            b"RCPT TO:<c@example.test>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        )
        reply = reply[3:]
        self.assertEqual(reply[5:8], ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK"])
        self.assertEqual(reply[8], "354 End data with <CR><LF>.<CR><LF>")
        self.assertTrue(reply[9].startswith("250 2.0.0 Ok: queued as "))
        self.assertEqual(reply[10:], ["221 2.0.0 Bye"])
        self.assertEqual(self.delivered(), b"Subject: x\r\n\r\nhello\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_deferredKeepsOrder(self) -> None:
        self.ehlo()
        d: Deferred = Deferred()
        self.delivery.senderAnswer = d
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"), []
        )
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])
        self.assertEqual(self.transport.producerState, "paused")
        # More input while paused waits too.
        self.assertEqual(self.send(b"body\r\n.\r\n"), [])
        d.callback(None)
        reply = self.replies()
        self.assertEqual(reply[:3], ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 End data with <CR><LF>.<CR><LF>"])
        self.assertTrue(reply[3].startswith("250 2.0.0 Ok: queued as "))
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.delivered(), b"body\r\n")

    def test_refusedSenderThenPipelinedRcpt(self) -> None:
        self.ehlo()
        d: Deferred = Deferred()
        self.delivery.senderAnswer = d
        self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        d.errback(SMTPReply(550, "5.7.1", "No"))
        self.assertEqual(
            self.replies(),
            ["550 5.7.1 No", "503 5.5.1 Need MAIL command", "503 5.5.1 Need MAIL command"],
        )

    def test_byteByByte(self) -> None:
        self.replies()
        session = (
            b"EHLO c.example\r\nMAIL FROM:<a@example.org> SIZE=30\r\nRCPT TO:<b@example.test>\r\n"
            b"DATA\r\n..dots\r\nline\r\n.\r\nQUIT\r\n"
        )
        for i in range(len(session)):
            self.proto.dataReceived(session[i : i + 1])
        reply = self.replies()
        self.assertEqual(reply[-1], "221 2.0.0 Bye")
        self.assertTrue(reply[-2].startswith("250 2.0.0 Ok: queued as "))
        self.assertEqual(self.delivered(), b".dots\r\nline\r\n")

    def test_disconnectWhileWaiting(self) -> None:
        self.ehlo()
        d: Deferred = Deferred()
        self.delivery.senderAnswer = d
        self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n")
        self.proto.connectionLost(Failure(Exception("gone")))
        d.callback(None)
        self.assertEqual(self.replies(), [])
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])


class DataTests(ServerTestsMixin, SynchronousTestCase):
    def data(self, body: bytes, rcpts: tuple = ("bob@example.test",)) -> List[str]:
        self.transaction(rcpts)
        self.assertEqual(self.send(b"DATA\r\n"), ["354 End data with <CR><LF>.<CR><LF>"])
        return self.send(body)

    def test_simple(self) -> None:
        reply = self.data(b"Subject: hi\r\n\r\nHello\r\n.\r\n")
        self.assertTrue(reply[0].startswith("250 2.0.0 Ok: queued as "))
        sender, rcpts, _ = self.delivery.messages[0]
        self.assertEqual((sender, rcpts), ("alice@example.org", ["bob@example.test"]))
        self.assertEqual(self.delivered(), b"Subject: hi\r\n\r\nHello\r\n")

    def test_emptyMessage(self) -> None:
        self.data(b".\r\n")
        self.assertEqual(self.delivered(), b"")
        self.assertTrue(self.delivery.messages[0][2].startswith(b"Received: "))

    def test_dotUnstuffing(self) -> None:
        self.data(b"..\r\n..leading\r\nmid.dle\r\n...\r\n. x\r\n.\r\n")
        self.assertEqual(self.delivered(), b".\r\n.leading\r\nmid.dle\r\n..\r\n x\r\n")

    def test_dotUnstuffingAcrossWrites(self) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        for piece in [b"a\r", b"\n.", b".b\r\n", b".", b".", b"\r\n", b".\r", b"\n"]:
            self.proto.dataReceived(piece)
        self.assertEqual(self.delivered(), b"a\r\n.b\r\n.\r\n")

    def test_receivedHeaderOneRecipient(self) -> None:
        self.connect(start=86400 + 3661)
        self.data(b"x\r\n.\r\n")
        data = self.delivery.messages[0][2]
        header = data[: data.index(b"x\r\n")]
        lines = header.split(b"\r\n")
        self.assertEqual(lines[0], b"Received: from client.example.test ([192.0.2.5])")
        self.assertRegex(lines[1], rb"^\tby mx\.example\.test \(mailplat\) with ESMTP id [0-9A-F]{16}$")
        self.assertEqual(lines[2], b"\tfor <bob@example.test>;")
        self.assertEqual(lines[3], b"\tFri, 02 Jan 1970 01:01:01 +0000")
        self.assertEqual(lines[4], b"")

    def test_receivedHeaderSeveralRecipients(self) -> None:
        self.data(b"x\r\n.\r\n", ("b@example.test", "c@example.test"))
        data = self.delivery.messages[0][2]
        self.assertNotIn(b"for <", data)
        self.assertRegex(data, rb"with ESMTP id [0-9A-F]{16};\r\n\tThu, 01 Jan 1970 00:00:00 \+0000\r\nx\r\n$")

    def test_receivedHeaderHelo(self) -> None:
        self.replies()
        self.send(b"HELO old.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        self.send(b"x\r\n.\r\n")
        self.assertIn(b"Received: from old.example ([192.0.2.5])\r\n\tby mx.example.test (mailplat) with SMTP id ",
                      self.delivery.messages[0][2])

    def test_uniqueIds(self) -> None:
        self.data(b"x\r\n.\r\n")
        self.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        self.send(b"y\r\n.\r\n")
        first, second = (m[2].split(b" id ")[1][:16] for m in self.delivery.messages)
        self.assertNotEqual(first, second)

    def test_transactionResetAfterDelivery(self) -> None:
        self.data(b"x\r\n.\r\n")
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["250 2.1.0 Sender OK"])

    def test_fileRewoundAndClosed(self) -> None:
        self.data(b"x\r\n.\r\n")
        self.assertTrue(self.delivery.messages[0][2].startswith(b"Received:"))
        self.assertTrue(self.delivery.files[0].closed)

    def test_commandsInBodyNotExecuted(self) -> None:
        reply = self.data(b"QUIT\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n.\r\n")
        self.assertEqual(len(reply), 1)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.delivered(), b"QUIT\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n")

    def test_8bitData(self) -> None:
        """
        8-bit octets pass through untouched (8BITMIME); NUL does not (see
        test_nulInBody).
        """
        self.data(b"caf\xc3\xa9 \xff\r\n.\r\n")
        self.assertEqual(self.delivered(), b"caf\xc3\xa9 \xff\r\n")

    def test_disconnectMidData(self) -> None:
        self.transaction()
        self.send(b"DATA\r\nSubject: x\r\n\r\npart")
        temp = self.proto._file
        self.proto.connectionLost(Failure(Exception("gone")))
        self.assertTrue(temp.closed)
        self.assertEqual(self.delivery.messages, [])

    def test_disconnectDuringDelivery(self) -> None:
        d: Deferred = Deferred()
        self.delivery.deliverAnswer = d
        self.data(b"x\r\n.\r\n")
        self.proto.connectionLost(Failure(Exception("gone")))
        message = self.delivery.files[0]
        self.assertFalse(message.closed)
        d.callback(None)
        self.assertTrue(message.closed)
        self.assertEqual(self.replies(), [])


class SmugglingTests(ServerTestsMixin, SynchronousTestCase):
    """
    Only CR LF "." CR LF ends message data; a message with any bare CR or
    LF is refused, and what followed the fake end is never run as
    commands.
    """

    def check(self, fakeEnd: bytes) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        smuggled = (
            b"Subject: real\r\n\r\nbody" + fakeEnd + b"MAIL FROM:<evil@example.org>\r\n"
            b"RCPT TO:<victim@example.test>\r\nDATA\r\nSubject: fake\r\n\r\nfake\r\n"
        )
        self.assertEqual(self.send(smuggled), [])
        self.assertEqual(self.proto._mode, "data")
        self.assertEqual(self.send(b"\r\n.\r\n"), ["550 5.6.0 Message contains bare CR or LF"])
        self.assertEqual(self.delivery.messages, [])
        self.assertEqual(
            self.delivery.calls, [("sender", "alice@example.org"), ("recipient", "bob@example.test")]
        )
        # Back in command mode, in a clean state.
        self.assertEqual(self.send(b"RCPT TO:<b@example.test>\r\n"), ["503 5.5.1 Need MAIL command"])

    def test_lfDotLf(self) -> None:
        self.check(b"\n.\n")

    def test_crDotCr(self) -> None:
        self.check(b"\r.\r")

    def test_lfDotCrLf(self) -> None:
        self.check(b"\n.\r\n")

    def test_crLfDotLf(self) -> None:
        self.check(b"\r\n.\n")

    def test_crLfDotCr(self) -> None:
        self.check(b"\r\n.\r")

    def test_crDotCrLf(self) -> None:
        self.check(b"\r.\r\n")

    def test_split(self) -> None:
        """
        The fake ends split over several writes behave the same.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        for piece in [b"body\n", b".", b"\r\nMAIL FROM:<e@example.org>\r", b"\r.", b"\r", b"\nNOOP\r\n"]:
            self.assertEqual(self.send(piece), [])
        self.assertEqual(self.send(b"\r\n.\r\n"), ["550 5.6.0 Message contains bare CR or LF"])
        self.assertEqual(len(self.delivery.calls), 2)

    def test_bareCRInBody(self) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"a\rb\r\n.\r\n"), ["550 5.6.0 Message contains bare CR or LF"])
        self.assertEqual(self.delivery.messages, [])

    def test_bareLFInBody(self) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"a\nb\r\n.\r\n"), ["550 5.6.0 Message contains bare CR or LF"])

    def test_bareCRAndLFBalanced(self) -> None:
        """
        A bare CR and a bare LF in the same data (as many CRs as LFs, in
        any order) still refuse the message.
        """
        for body in (b"a\rb\nc\r\n", b"a\n\rb\r\n", b"ok\r\na\nb\rc\r\nmore\r\n", b"\n\r\r\n"):
            self.transaction()
            self.send(b"DATA\r\n")
            self.assertEqual(self.send(body + b".\r\n"), ["550 5.6.0 Message contains bare CR or LF"], body)
            self.assertEqual(self.delivery.messages, [])

    def test_nulInBody(self) -> None:
        """
        A NUL in the data refuses the message (no BINARYMIME), after reading
        it to its end; the session goes on.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"a\x00b\r\nNOOP\r\n.\r\n"), ["550 5.6.0 Message contains a NUL character"])
        self.assertEqual(self.delivery.messages, [])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_dotLineAfterBareLF(self) -> None:
        """
        ".\\r\\n" right after a bare LF (as the first line of a write) does
        not end the data.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertEqual(self.send(b"a\n"), [])
        self.assertEqual(self.send(b".\r\nNOOP\r\n"), [])
        self.assertEqual(self.send(b".\r\n"), ["550 5.6.0 Message contains bare CR or LF"])


class LimitTests(ServerTestsMixin, SynchronousTestCase):
    def test_commandLineLimit(self) -> None:
        self.replies()
        line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
        self.assertEqual(len(line), 512)
        self.assertEqual(self.send(line), ["250 2.0.0 Ok"])
        line = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
        self.assertEqual(self.send(line + b"NOOP\r\n"), ["500 5.5.2 Line too long", "250 2.0.0 Ok"])

    def test_overlongCommandNotBuffered(self) -> None:
        self.replies()
        for i in range(100):
            self.assertEqual(self.send(b"MAIL FROM:<" + b"a" * 997 + b">"), [])
            self.assertLess(len(self.proto._buffer), 512)
        # The rest of the line, including what looks like a command, is dropped.
        self.assertEqual(self.send(b"\r\nNOOP\r\n"), ["500 5.5.2 Line too long", "250 2.0.0 Ok"])
        self.assertEqual(self.delivery.calls, [])

    def test_overlongCommandSplitCRLF(self) -> None:
        self.replies()
        self.assertEqual(self.send(b"x" * 600 + b"\r"), [])
        self.assertEqual(self.send(b"\nNOOP\r\n"), ["500 5.5.2 Line too long", "250 2.0.0 Ok"])

    def test_textLineLimit(self) -> None:
        self.transaction()
        self.send(b"DATA\r\n")
        ok = b"x" * 998 + b"\r\n"
        stuffed = b"." + b"." + b"y" * 997 + b"\r\n"  # 1001 on the wire, 1000 unstuffed
        self.assertTrue(self.send(ok + stuffed + b".\r\n")[0].startswith("250 2.0.0 "))
        self.assertEqual(self.delivered(), ok + stuffed[1:])

    def test_textLineLimitInOneWrite(self) -> None:
        """
        The limit is exact for lines with and without a stuffed dot, in a
        write of many lines.
        """
        for line, refused in ((b"x" * 998, False), (b"x" * 999, True), (b"." + b"x" * 998, False),
                              (b"." + b"x" * 999, True), (b".." + b"x" * 997, False)):
            self.transaction()
            self.send(b"DATA\r\n")
            reply = self.send(b"a\r\n" * 20 + line + b"\r\n" + b"b\r\n" * 20 + b".\r\n")
            if refused:
                self.assertEqual(reply, ["554 5.6.0 Message has a line longer than 998 characters"], line)
            else:
                self.assertTrue(reply[0].startswith("250 2.0.0 "), (line, reply))

    def test_overlongTextLine(self) -> None:
        self.transaction()
        self.assertEqual(self.send(b"DATA\r\n"), ["354 End data with <CR><LF>.<CR><LF>"])
        body = b"x" * 999 + b"\r\n" + b"MAIL FROM:<evil@example.org>\r\nQUIT\r\n"
        self.assertEqual(self.send(body), [])
        self.assertEqual(self.proto._mode, "data")
        self.assertEqual(self.send(b".\r\n"), ["554 5.6.0 Message has a line longer than 998 characters"])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.delivery.messages, [])
        self.assertEqual(len(self.delivery.calls), 2)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_hugeLineStaysInData(self) -> None:
        """
        A line of megabytes arriving in pieces is dropped as it comes; the
        server stays in DATA mode and the end of data is still found, even
        right after the long line.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        for i in range(100):
            self.assertEqual(self.send(b"z" * 10000 + b"\r\nQUIT\r"), [])
            self.assertLess(len(self.proto._buffer), 1100)
        self.assertEqual(self.proto._mode, "data")
        self.assertEqual(self.send(b"\n.\r"), [])
        self.assertEqual(self.send(b"\n"), ["554 5.6.0 Message has a line longer than 998 characters"])

    def test_messageSizeLimit(self) -> None:
        self.connect(maxMessageSize=1000)
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertEqual(self.send((b"y" * 98 + b"\r\n") * 10), [])
        self.assertEqual(self.send(b"z\r\nRSET\r\n"), [])
        self.assertEqual(self.proto._file, None)
        self.assertEqual(
            self.send(b".\r\nNOOP\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 Ok"],
        )
        self.assertEqual(self.delivery.messages, [])

    def test_messageSizeExactLimit(self) -> None:
        self.connect(maxMessageSize=1000)
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertTrue(self.send((b"y" * 98 + b"\r\n") * 10 + b".\r\n")[0].startswith("250 "))

    def test_largeMessageStreamed(self) -> None:
        """
        A 20 MB message sent in 64 KiB writes reaches the delivery as a file
        on disk holding exactly the bytes sent, and the server never holds
        much of it in memory.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        line = b"0123456789" * 7 + b"abcdef\r\n"  # 78 octets
        chunk = line * 840  # 65,520 octets
        count = (20 * 1024 * 1024) // len(chunk) + 1
        sent = hashlib.sha256()
        digests = []

        def deliver() -> None:
            message = self.delivery.files[0]
            self.assertTrue(message._rolled)  # on disk, not in memory
            message.seek(0)
            data = hashlib.sha256()
            header = message.readline()
            self.assertTrue(header.startswith(b"Received: "))
            while not message.readline().startswith(b"\tThu"):
                pass
            size = 0
            while True:
                block = message.read(1 << 16)
                if not block:
                    break
                size += len(block)
                data.update(block)
            digests.append((size, data.hexdigest()))

        self.delivery.deliverAnswer = deliver
        # FakeDelivery.deliver reads the whole file; keep it light here.
        original = self.delivery.deliver

        def deliverLight(session: Any, sender: Any, recipients: Any, message: Any) -> Any:
            self.delivery.files.append(message)
            self.delivery.calls.append(("deliver", sender, list(recipients)))
            return self.delivery._answer(self.delivery.deliverAnswer)

        self.delivery.deliver = deliverLight  # type: ignore[method-assign]
        tracemalloc.start()
        try:
            for i in range(count):
                self.proto.dataReceived(chunk)
                sent.update(chunk)
                self.assertLess(len(self.proto._buffer), len(chunk) + 1100)
            reply = self.send(b".\r\n")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.delivery.deliver = original  # type: ignore[method-assign]
        reply = [r for r in self.replies() if r] + reply
        self.assertTrue(reply[-1].startswith("250 2.0.0 Ok: queued as "), reply)
        self.assertEqual(digests, [(count * len(chunk), sent.hexdigest())])
        self.assertGreater(count * len(chunk), 20 * 1024 * 1024)
        self.assertLess(peak, 2 * 1024 * 1024)


class TimeoutTests(ServerTestsMixin, SynchronousTestCase):
    def test_idleTimeout(self) -> None:
        self.replies()
        self.clock.advance(299)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.clock.advance(299)
        self.assertEqual(self.replies(), [])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.replies(), [f"421 4.4.2 {HOST} Idle timeout, closing connection"])
        self.assertTrue(self.transport.disconnecting)

    def test_timeoutFromFactory(self) -> None:
        self.connect(timeout=10)
        self.replies()
        self.clock.advance(10)
        self.assertEqual(self.replies(), [f"421 4.4.2 {HOST} Idle timeout, closing connection"])

    def test_timeoutInData(self) -> None:
        self.transaction()
        self.send(b"DATA\r\npartial\r\n")
        temp = self.proto._file
        self.clock.advance(300)
        self.assertEqual(self.replies(), [f"421 4.4.2 {HOST} Idle timeout, closing connection"])
        self.proto.connectionLost(Failure(Exception("closed")))
        self.assertTrue(temp.closed)
        self.assertEqual(self.delivery.messages, [])

    def test_noTimeoutWhileDelivering(self) -> None:
        d: Deferred = Deferred()
        self.delivery.deliverAnswer = d
        self.transaction()
        self.send(b"DATA\r\nx\r\n.\r\n")
        self.clock.advance(1000)
        self.assertEqual(self.replies(), [])
        d.callback(None)
        self.assertTrue(self.replies()[0].startswith("250 2.0.0 "))
        # Idle from the reply on.
        self.clock.advance(299)
        self.assertEqual(self.replies(), [])
        self.clock.advance(1)
        self.assertEqual(self.replies(), [f"421 4.4.2 {HOST} Idle timeout, closing connection"])

    def test_noTimerAfterClose(self) -> None:
        self.replies()
        self.send(b"QUIT\r\n")
        self.proto.connectionLost(Failure(Exception("closed")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ErrorLimitTests(ServerTestsMixin, SynchronousTestCase):
    def test_tooManyErrors(self) -> None:
        self.replies()
        reply = self.send(b"BOGUS\r\n" * 25)
        self.assertEqual(reply[:20], ["500 5.5.2 Command unrecognized"] * 20)
        self.assertEqual(reply[20:], [f"421 4.7.0 {HOST} Too many errors, closing connection"])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.send(b"NOOP\r\n"), [])

    def test_deliveryResetsCount(self) -> None:
        self.replies()
        self.send(b"BOGUS\r\n" * 19)
        self.transaction()
        self.send(b"DATA\r\nx\r\n.\r\n")
        self.assertEqual(self.send(b"BOGUS\r\n" * 19), ["500 5.5.2 Command unrecognized"] * 19)
        self.assertFalse(self.transport.disconnecting)

    def test_refusedRecipientsCount(self) -> None:
        self.delivery.recipientAnswers = {f"u{i}@example.test": SMTPReply(550, "5.1.1", "No such user") for i in range(30)}
        self.transaction()
        reply = self.send(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(30)))
        self.assertEqual(reply[-1], f"421 4.7.0 {HOST} Too many errors, closing connection")
        self.assertEqual(len(reply), 21)


class WriteFailingFile:
    """
    A file whose writes fail after the first (the trace header).
    """

    closed = False

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(28, "No space left on device")
        return len(data)

    def close(self) -> None:
        self.closed = True


class SpoolFailureTests(ServerTestsMixin, SynchronousTestCase):
    def test_diskFull(self) -> None:
        from mailplat.smtp import server

        self.patch(server, "_Spool", lambda factory, declared: WriteFailingFile())
        self.transaction()
        self.send(b"DATA\r\n")
        temp = self.proto._file
        self.assertEqual(self.send(b"x\r\n"), [])
        self.assertTrue(temp.closed)
        self.assertEqual(self.send(b"y\r\n.\r\n"), ["451 4.3.0 Temporary failure, please try again later"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.delivery.messages, [])


class SpoolMemoryTests(ServerTestsMixin, SynchronousTestCase):
    """
    Message data stays in memory up to what the factory's budget lends
    each message, and the loan is given back when the message is done.
    """

    body = b"x" * 76 + b"\r\n"

    def receive(self, lines: int, answer: Any = None) -> Any:
        """
        Send a message of C{lines} lines; the spool the delivery got.
        """
        self.delivery.deliverAnswer = answer
        self.transaction()
        self.send(b"DATA\r\n")
        self.send(self.body * lines + b".\r\n")
        return self.delivery.files[-1]

    def test_inMemoryWithinBudget(self) -> None:
        """
        A 100 KB message, over the fixed threshold, stays in memory while
        the budget lends room for it; the loan is back after the reply.
        """
        d: Deferred = Deferred()
        spool = self.receive(1300, d)
        self.assertFalse(spool._rolled)
        self.assertGreater(self.factory._spoolLent, 0)
        d.callback(None)
        self.assertTrue(self.replies()[0].startswith("250 2.0.0 Ok: queued as "))
        self.assertEqual(self.factory._spoolLent, 0)

    def test_diskPastBudget(self) -> None:
        """
        With no budget left, a message over the fixed threshold goes to
        disk, and one under it stays in memory.
        """
        self.connect(spoolMemory=0)
        self.assertTrue(self.receive(1300)._rolled)
        self.assertFalse(self.receive(10)._rolled)
        self.assertEqual(self.factory._spoolLent, 0)

    def test_budgetShared(self) -> None:
        """
        The budget lends each message at most SPOOL_MEMORY_MAX, or its
        declared size, and never more than it holds; nothing for a message
        small enough to stay in memory anyway, or declared too large to.
        """
        from mailplat.smtp import server

        factory = SMTPFactory(FakeDelivery(), HOST, clock=Clock(), spoolMemory=server.SPOOL_MEMORY_MAX + 100 * 1024)
        first, second, third = (factory.lendSpoolMemory() for _ in range(3))
        self.assertEqual((first, second, third), (server.SPOOL_MEMORY_MAX, 100 * 1024, 0))
        factory.returnSpoolMemory(first)
        self.assertEqual(factory.lendSpoolMemory(200 * 1024), 200 * 1024)
        self.assertEqual(factory.lendSpoolMemory(server.SPOOL_THRESHOLD), 0)
        self.assertEqual(factory.lendSpoolMemory(server.SPOOL_MEMORY_MAX + 1), 0)

    def test_declaredSize(self) -> None:
        """
        A message declared with C{SIZE} borrows about that much.
        """
        d: Deferred = Deferred()
        self.delivery.deliverAnswer = d
        self.ehlo()
        self.send(b"MAIL FROM:<alice@example.org> SIZE=200000\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.assertTrue(200000 < self.factory._spoolLent < 210000)
        self.send(self.body * 2000 + b".\r\n")
        self.assertFalse(self.delivery.files[-1]._rolled)
        d.callback(None)
        self.assertEqual(self.factory._spoolLent, 0)

    def test_returnedWhenConnectionLost(self) -> None:
        """
        A message cut off by the connection's end gives its loan back.
        """
        self.transaction()
        self.send(b"DATA\r\n")
        self.send(self.body * 10)
        self.assertGreater(self.factory._spoolLent, 0)
        self.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.factory._spoolLent, 0)


class ExtensionTests(SynchronousTestCase):
    def test_subclassAddsVerb(self) -> None:
        """
        A subclass adds a verb with C{do_<VERB>} and an EHLO keyword with
        L{SMTPServer.extensions}; it replaces a 502 answer.
        """

        class Server(SMTPServer):
            def extensions(self) -> List[str]:
                return super().extensions() + ["XTEST", "STARTTLS"]

            def do_STARTTLS(self, arg: str) -> None:
                self.sendReply(220, "2.0.0", "Ready")

        factory = SMTPFactory(FakeDelivery(), HOST, clock=Clock())
        factory.protocol = Server
        proto = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c.example\r\nSTARTTLS\r\nTURN\r\n")
        lines = transport.value().decode().split("\r\n")
        self.assertEqual(lines[5:12], ["250-ENHANCEDSTATUSCODES", "250-DSN", "250-SMTPUTF8", "250-CHUNKING", "250-XTEST", "250 STARTTLS", "220 2.0.0 Ready"])
        self.assertEqual(lines[12], "502 5.5.1 Command not implemented")


class FactoryTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        from twisted.internet import reactor

        factory = SMTPFactory(FakeDelivery(), HOST)
        self.assertIs(factory.clock, reactor)
        self.assertEqual(factory.maxMessageSize, 50 * 1024 * 1024)
        self.assertEqual(factory.timeout, 300.0)
        self.assertEqual(factory.maxRecipients, 1000)
        self.assertIsInstance(factory.buildProtocol(PEER), SMTPServer)


# STARTTLS, AUTH and listener roles.

import base64  # noqa: E402
import hmac  # noqa: E402

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse  # noqa: E402
from twisted.cred.credentials import IUsernamePassword  # noqa: E402
from twisted.cred.portal import Portal  # noqa: E402
from twisted.internet.interfaces import ISSLTransport  # noqa: E402
from zope.interface import alsoProvides  # noqa: E402

from mailplat.auth.realm import MailRealm  # noqa: E402
from mailplat.store.memory import MemoryStore  # noqa: E402

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40001)
ALICE = "alice@example.test"
SECRET = b"s3cret pass"


class TLSTransport(NoDelayTransport):
    """
    A StringTransport that fakes C{startTLS}: it records the context
    factory and what had been written before, and then says it is TLS.
    """

    tlsContext: Any = None
    writtenBeforeTLS: bytes = b""

    def startTLS(self, contextFactory: Any) -> None:
        self.tlsContext = contextFactory
        self.writtenBeforeTLS = self.value()
        alsoProvides(self, ISSLTransport)


@implementer(ICredentialsChecker)
class PlainOnlyChecker:
    """
    Like mailplat's argon2 checker: cannot verify CRAM-MD5.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self._db = InMemoryUsernamePasswordDatabaseDontUse(**{ALICE: SECRET})

    def requestAvatarId(self, credentials: Any) -> Any:
        return self._db.requestAvatarId(credentials)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class TLSAuthTests(ServerTestsMixin, SynchronousTestCase):
    """
    STARTTLS (RFC 3207), AUTH (RFC 4954) and the mx/submission roles.
    """

    context = object()

    def setUp(self) -> None:
        self.open()

    def open(self, peer: Any = PEER, role: str = "mx", plainOnly: bool = False, context: Any = context,
             allowPlaintext: bool = False) -> None:
        self.clock = Clock()
        self.delivery = FakeDelivery()
        checker = PlainOnlyChecker() if plainOnly else InMemoryUsernamePasswordDatabaseDontUse(**{ALICE: SECRET})
        self.portal = Portal(MailRealm(MemoryStore()), [checker])
        self.factory = SMTPFactory(
            self.delivery, HOST, clock=self.clock, portal=self.portal, contextFactory=context, role=role,
            allowPlaintext=allowPlaintext,
        )
        self.proto = self.factory.buildProtocol(peer)
        self.transport = TLSTransport(peerAddress=peer)
        self.proto.makeConnection(self.transport)
        self.replies()

    def ehloKeywords(self) -> List[str]:
        lines = self.send(b"EHLO client.example.test\r\n")
        return [line[4:] for line in lines[1:]]

    def starttls(self) -> None:
        self.assertIn("STARTTLS", self.ehloKeywords())
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["220 2.0.0 Ready to start TLS"])

    def plain(self, user: str = ALICE, password: bytes = SECRET, authzid: bytes = b"") -> bytes:
        return b"AUTH PLAIN " + b64(authzid + b"\0" + user.encode() + b"\0" + password) + b"\r\n"

    def test_mxRemoteBeforeTLS(self) -> None:
        """
        Off loopback without TLS, the MX offers STARTTLS and no AUTH;
        AUTH is answered 538.
        """
        keywords = self.ehloKeywords()
        self.assertIn("STARTTLS", keywords)
        self.assertFalse([k for k in keywords if k.startswith("AUTH")])
        self.assertEqual(self.send(self.plain()), ["538 5.7.11 Encryption required for requested authentication mechanism"])
        self.assertIsNone(self.proto.session.authenticated)

    def test_loopbackOffersAuth(self) -> None:
        """
        On loopback AUTH is offered at once; CRAM-MD5 only when a checker
        can verify it.
        """
        self.open(peer=LOOPBACK)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", self.ehloKeywords())
        self.open(peer=LOOPBACK, plainOnly=True)
        self.assertIn("AUTH PLAIN LOGIN", self.ehloKeywords())

    def test_noContextNoPortal(self) -> None:
        """
        Without a context STARTTLS is neither offered nor accepted; without
        a portal AUTH is neither.
        """
        self.connect()
        self.replies()
        self.assertEqual(self.send(b"EHLO c.example\r\n")[-1], "250 CHUNKING")
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["502 5.5.1 Command not implemented"])
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["502 5.5.1 Command not implemented"])

    def test_starttls(self) -> None:
        """
        STARTTLS replies 220 in the clear, starts TLS with the factory's
        context, forgets the EHLO, and drops commands pipelined after it.
        """
        self.starttls()
        self.assertIs(self.transport.tlsContext, self.context)
        self.assertTrue(self.transport.writtenBeforeTLS.endswith(b"220 2.0.0 Ready to start TLS\r\n"))
        self.assertTrue(self.proto.session.tls)
        self.assertIsNone(self.proto.session.helo)
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["503 5.5.1 Send HELO/EHLO first"])
        keywords = self.ehloKeywords()
        self.assertNotIn("STARTTLS", keywords)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", keywords)
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["503 5.5.1 TLS already active"])

    def test_starttlsInjection(self) -> None:
        """
        Commands sent in the same packet as STARTTLS are discarded (the
        CVE-2011-0411 plaintext injection).
        """
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(
            self.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n"),
            ["220 2.0.0 Ready to start TLS"],
        )
        self.assertEqual(self.delivery.calls, [])
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org>\r\n"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_starttlsRefusals(self) -> None:
        """
        STARTTLS takes no argument and is refused inside a transaction.
        """
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"STARTTLS now\r\n"), ["501 5.5.4 Syntax: STARTTLS"])
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["503 5.5.1 STARTTLS not permitted during a mail transaction"])

    def test_starttlsNotSupportedByTransport(self) -> None:
        """
        A transport that cannot start TLS gets a temporary refusal.
        """
        self.proto = self.factory.buildProtocol(PEER)
        self.transport = NoDelayTransport(peerAddress=PEER)
        self.proto.makeConnection(self.transport)
        self.replies()
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["454 4.7.0 TLS not available due to temporary reason"])

    def test_starttlsForgetsLogin(self) -> None:
        """
        A login made before STARTTLS (on loopback) is forgotten.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(self.plain()), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.session.authenticated, ALICE)
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["220 2.0.0 Ready to start TLS"])
        self.assertIsNone(self.proto.session.authenticated)

    def test_authPlain(self) -> None:
        """
        AUTH PLAIN with an initial response, after STARTTLS.
        """
        self.starttls()
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(self.plain("Alice@Example.TEST")), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.session.authenticated, ALICE)
        self.assertEqual(self.send(self.plain()), ["503 5.5.1 Already authenticated"])

    def test_authPlainChallenge(self) -> None:
        """
        AUTH PLAIN without an initial response gets an empty challenge.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(b64(b"\0" + ALICE.encode() + b"\0" + SECRET) + b"\r\n"),
                         ["235 2.7.0 Authentication successful"])

    def test_authPlainAuthzid(self) -> None:
        """
        Logging in as someone else (authzid) is refused.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(self.plain(authzid=b"bob@example.test")), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(self.send(self.plain(authzid=ALICE.encode())), ["235 2.7.0 Authentication successful"])

    def test_authLogin(self) -> None:
        """
        AUTH LOGIN asks for the user name and the password.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b64(ALICE.encode()) + b"\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b64(SECRET) + b"\r\n"), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.session.authenticated, ALICE)

    def test_authLoginInitial(self) -> None:
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"AUTH LOGIN " + b64(ALICE.encode()) + b"\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b64(b"wrong") + b"\r\n"), ["535 5.7.8 Authentication credentials invalid"])

    def test_authCramMD5(self) -> None:
        """
        CRAM-MD5: the digest of the challenge with the secret logs in.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        reply = self.send(b"AUTH CRAM-MD5\r\n")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith("334 "))
        challenge = base64.b64decode(reply[0][4:])
        self.assertTrue(challenge.startswith(b"<") and challenge.endswith(b"@" + HOST.encode() + b">"))
        digest = hmac.new(SECRET, challenge, hashlib.md5).hexdigest().encode()
        self.assertEqual(self.send(b64(ALICE.encode() + b" " + digest) + b"\r\n"), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.session.authenticated, ALICE)

    def test_authCramMD5Wrong(self) -> None:
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        challenge = base64.b64decode(self.send(b"AUTH CRAM-MD5\r\n")[0][4:])
        digest = hmac.new(b"wrong", challenge, hashlib.md5).hexdigest().encode()
        self.assertEqual(self.send(b64(ALICE.encode() + b" " + digest) + b"\r\n"), ["535 5.7.8 Authentication credentials invalid"])

    def test_cramMD5NotOffered(self) -> None:
        """
        CRAM-MD5 is refused when no checker can verify it.
        """
        self.open(peer=LOOPBACK, plainOnly=True)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"AUTH CRAM-MD5\r\n"), ["504 5.5.4 Unrecognized authentication type"])

    def test_authFailedCounts(self) -> None:
        """
        A wrong password is 535 5.7.8 and counts towards the error limit.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        for _ in range(self.factory.maxErrors - 1):
            self.assertEqual(self.send(self.plain(password=b"wrong")), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(
            self.send(self.plain(password=b"wrong")),
            ["535 5.7.8 Authentication credentials invalid", "421 4.7.0 mx.example.test Too many errors, closing connection"],
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.proto.session.authenticated)

    def test_authSyntax(self) -> None:
        """
        Cancelled, undecodable, out-of-order and unknown AUTH commands.
        """
        self.open(peer=LOOPBACK)
        self.assertEqual(self.send(self.plain()), ["503 5.5.1 Send EHLO first"])
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"AUTH\r\n"), ["501 5.5.4 Syntax: AUTH mechanism [initial-response]"])
        self.assertEqual(self.send(b"AUTH GSSAPI\r\n"), ["504 5.5.4 Unrecognized authentication type"])
        self.assertEqual(self.send(b"AUTH PLAIN !!!\r\n"), ["501 5.5.2 Cannot decode response"])
        self.assertEqual(self.send(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication cancelled"])
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(b"x" * 20000 + b"\r\n"), ["500 5.5.6 Authentication exchange line is too long"])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(self.plain()), ["503 5.5.1 AUTH not permitted during a mail transaction"])

    def test_authLongResponseAllowed(self) -> None:
        """
        An AUTH response may be longer than a command line (RFC 4954: up to
        12288 octets).
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.send(b"AUTH PLAIN\r\n")
        response = b64(b"\0" + ALICE.encode() + b"\0" + b"p" * 2000)
        self.assertEqual(self.send(response + b"\r\n"), ["535 5.7.8 Authentication credentials invalid"])

    def test_allowPlaintext(self) -> None:
        """
        With C{allow_plaintext} AUTH works off loopback without TLS.
        """
        self.open(allowPlaintext=True)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", self.ehloKeywords())
        self.assertEqual(self.send(self.plain()), ["235 2.7.0 Authentication successful"])

    def test_mailAuthParameter(self) -> None:
        """
        RFC 4954 5: C{MAIL FROM:<...> AUTH=<>} is accepted where AUTH is
        offered.
        """
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org> AUTH=<>\r\n"), ["250 2.1.0 Sender OK"])

    def test_submissionRequiresAuth(self) -> None:
        """
        The submission role refuses MAIL before AUTH, and AUTH before TLS
        off loopback.
        """
        self.open(role="submission")
        keywords = self.ehloKeywords()
        self.assertIn("STARTTLS", keywords)
        self.assertFalse([k for k in keywords if k.startswith("AUTH")])
        self.assertEqual(self.send(b"MAIL FROM:<alice@example.test>\r\n"), ["530 5.7.0 Authentication required"])
        self.assertEqual(self.send(self.plain()), ["538 5.7.11 Encryption required for requested authentication mechanism"])
        self.assertEqual(self.delivery.calls, [])

    def test_submissionOwnAddressOnly(self) -> None:
        """
        An authenticated submission client may use only its own address
        (or the null sender) in MAIL FROM.
        """
        self.open(role="submission")
        self.starttls()
        self.send(b"EHLO client.example.test\r\n")
        self.assertEqual(self.send(self.plain()), ["235 2.7.0 Authentication successful"])
        self.assertEqual(
            self.send(b"MAIL FROM:<bob@example.test>\r\n"),
            ["553 5.7.1 Sender address rejected: not owned by user"],
        )
        self.assertEqual(self.send(b"MAIL FROM:<Alice@EXAMPLE.test>\r\n"), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.delivery.sessions[-1].authenticated, ALICE)
        self.assertEqual(self.delivery.sessions[-1].role, "submission")
        self.send(b"RSET\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<>\r\n"), ["250 2.1.0 Sender OK"])

    def test_smtpsRole(self) -> None:
        """
        On an implicit-TLS (smtps) connection AUTH is offered at once,
        STARTTLS is not, and MAIL needs AUTH.
        """
        self.clock = Clock()
        self.delivery = FakeDelivery()
        self.factory = SMTPFactory(self.delivery, HOST, clock=self.clock, portal=self.portal,
                                   contextFactory=self.context, role="smtps")
        self.proto = self.factory.buildProtocol(PEER)
        self.transport = NoDelayTransport(peerAddress=PEER)
        alsoProvides(self.transport, ISSLTransport)
        self.proto.makeConnection(self.transport)
        self.replies()
        keywords = self.ehloKeywords()
        self.assertNotIn("STARTTLS", keywords)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", keywords)
        self.assertEqual(self.send(b"MAIL FROM:<alice@example.test>\r\n"), ["530 5.7.0 Authentication required"])
        self.assertEqual(self.send(self.plain()), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.send(b"MAIL FROM:<alice@example.test>\r\n"), ["250 2.1.0 Sender OK"])

    def test_receivedHeaderSaysESMTPSA(self) -> None:
        """
        The trace header records TLS and authentication (RFC 3848).
        """
        self.starttls()
        self.send(b"EHLO client.example.test\r\n")
        self.send(self.plain())
        self.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.assertIn(b"with ESMTPSA id", self.delivery.messages[-1][2])

    def test_unknownRole(self) -> None:
        self.assertRaises(ValueError, SMTPFactory, FakeDelivery(), HOST, role="relay")

    def test_logoutOnDisconnect(self) -> None:
        """
        The avatar's logout runs when the connection ends.
        """
        calls = []
        self.open(peer=LOOPBACK)
        self.send(b"EHLO client.example.test\r\n")
        self.send(self.plain())
        self.proto._logout = lambda: calls.append(1)
        self.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(calls, [1])


class DSNParameterTests(ServerTestsMixin, SynchronousTestCase):
    """
    RFC 3461 parameters of MAIL and RCPT, carried to the delivery in
    C{session.transaction}.
    """

    def test_carried(self) -> None:
        self.ehlo()
        self.assertEqual(
            self.send(b"MAIL FROM:<a@example.org> RET=hdrs ENVID=QQ+2B1\r\n"), ["250 2.1.0 Sender OK"]
        )
        self.assertEqual(
            self.send(b"RCPT TO:<b@example.test> NOTIFY=success,FAILURE ORCPT=rfc822;B+2Bx@example.test\r\n"),
            ["250 2.1.5 Recipient OK"],
        )
        self.assertEqual(self.send(b"RCPT TO:<c@example.test> NOTIFY=NEVER\r\n"), ["250 2.1.5 Recipient OK"])
        self.assertEqual(self.send(b"RCPT TO:<d@example.test>\r\n"), ["250 2.1.5 Recipient OK"])
        self.send(b"DATA\r\n")
        self.assertTrue(self.send(b"hi\r\n.\r\n")[0].startswith("250 2.0.0"))
        [envelope] = self.delivery.envelopes
        self.assertEqual(envelope.ret, "HDRS")
        self.assertEqual(envelope.envid, "QQ+1")
        self.assertEqual(envelope.recipient("b@example.test").notify, ["SUCCESS", "FAILURE"])
        self.assertEqual(envelope.recipient("b@example.test").orcpt, "rfc822;B+x@example.test")
        self.assertEqual(envelope.recipient("c@example.test").notify, ["NEVER"])
        self.assertFalse(envelope.recipient("c@example.test").wants("FAILURE"))
        self.assertTrue(envelope.recipient("d@example.test").wants("FAILURE"))
        self.assertFalse(envelope.recipient("d@example.test").wants("SUCCESS"))
        # The transaction is over: the session no longer has one.
        self.assertIsNone(self.proto.session.transaction)

    def test_badMailValues(self) -> None:
        self.ehlo()
        for line, reply in [
            (b"RET=ALL", "501 5.5.4 RET is FULL or HDRS"),
            (b"RET", "501 5.5.4 RET is FULL or HDRS"),
            (b"ENVID=a+2", "501 5.5.4 ENVID is not valid xtext"),
            (b"ENVID=a+zz", "501 5.5.4 ENVID is not valid xtext"),
            (b"ENVID=" + b"x" * 101, "501 5.5.4 Syntax error in ENVID parameter"),
            (b"RET=FULL RET=HDRS", "501 5.5.4 Duplicate RET parameter"),
        ]:
            self.assertEqual(self.send(b"MAIL FROM:<a@example.org> " + line + b"\r\n"), [reply], line)
        self.assertEqual(self.delivery.calls, [])

    def test_badRcptValues(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        for line in [
            b"NOTIFY=NEVER,SUCCESS",
            b"NOTIFY=SOMETIMES",
            b"NOTIFY=SUCCESS,SUCCESS",
            b"NOTIFY",
            b"ORCPT=bob@example.test",
            b"ORCPT=rfc822;",
            b"ORCPT=rfc822;a+4",
            b"ORCPT=;a@b",
        ]:
            reply = self.send(b"RCPT TO:<b@example.test> " + line + b"\r\n")
            self.assertEqual(len(reply), 1)
            self.assertTrue(reply[0].startswith("501 5.5.4 "), (line, reply))
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_notAfterHelo(self) -> None:
        self.replies()
        self.send(b"HELO c.example\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org> RET=FULL\r\n"), ["555 5.5.4 Parameters not allowed after HELO"])
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<b@example.test> NOTIFY=NEVER\r\n"), ["555 5.5.4 Parameters not allowed after HELO"]
        )

    def test_rsetForgets(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org> RET=FULL\r\n")
        self.assertEqual(self.proto.session.transaction.ret, "FULL")
        self.send(b"RSET\r\n")
        self.assertIsNone(self.proto.session.transaction)
        self.transaction()
        self.send(b"DATA\r\nx\r\n.\r\n")
        self.assertIsNone(self.delivery.envelopes[0].ret)


class ChunkingTests(ServerTestsMixin, SynchronousTestCase):
    """
    BDAT (RFC 3030).
    """

    def test_chunks(self) -> None:
        self.transaction()
        self.assertEqual(self.send(b"BDAT 12\r\nSubject: x\r\n"), ["250 2.0.0 12 octets received"])
        # Bare LF and a lone dot line are data here, read by count.
        reply = self.send(b"BDAT 14 LAST\r\n\r\nbare\nlf\r\n.\r\n")
        self.assertTrue(reply[0].startswith("250 2.0.0 Ok: queued as "), reply)
        self.assertEqual(self.delivered(), b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_pipelinedAndSplit(self) -> None:
        """
        A chunk split over many reads, followed at once by more commands.
        """
        self.transaction()
        data = b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"
        out = []
        for i in range(len(data)):
            out += self.send(data[i : i + 1])
        self.assertTrue(out[0].startswith("250 2.0.0 Ok: queued"), out)
        self.assertEqual(out[1:], ["250 2.0.0 Ok"])
        self.assertEqual(self.delivered(), b"QUIT\r\n")

    def test_zeroLast(self) -> None:
        self.transaction()
        self.send(b"BDAT 3\r\nabc")
        self.assertTrue(self.send(b"BDAT 0 LAST\r\n")[0].startswith("250 2.0.0 Ok: queued"))
        self.assertEqual(self.delivered(), b"abc")

    def test_beforeRcpt(self) -> None:
        """
        BDAT before MAIL or RCPT is refused, and its octets are still read
        (never run as commands).
        """
        self.ehlo()
        self.assertEqual(self.send(b"BDAT 6 LAST\r\nQUIT\r\n"), ["503 5.5.1 Need MAIL command"])
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(self.send(b"BDAT 6\r\nRSET\r\n"), ["503 5.5.1 Need RCPT command"])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_noDataAfterBdat(self) -> None:
        self.transaction()
        self.send(b"BDAT 2\r\nab")
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 DATA not allowed after BDAT in a transaction"])
        self.assertTrue(self.send(b"BDAT 1 LAST\r\nc")[0].startswith("250 2.0.0 Ok"))
        self.assertEqual(self.delivered(), b"abc")

    def test_syntax(self) -> None:
        self.transaction()
        for arg in [b"", b"x", b"-1", b"5 FIRST", b"5 LAST x", b"1" * 21]:
            self.assertEqual(self.send(b"BDAT " + arg + b"\r\n"), ["501 5.5.4 Syntax: BDAT chunk-size [LAST]"], arg)

    def test_tooBig(self) -> None:
        """
        Going over the size limit answers 552 after the chunk and ends the
        transaction; the chunk's octets are consumed.
        """
        self.connect(maxMessageSize=10)
        self.transaction()
        self.assertEqual(self.send(b"BDAT 20\r\n" + b"x" * 20), ["552 5.3.4 Message size exceeds fixed maximum message size"])
        self.assertEqual(self.send(b"BDAT 2 LAST\r\nab"), ["503 5.5.1 Need MAIL command"])
        self.assertEqual(self.delivery.messages, [])

    def test_rsetAllowsData(self) -> None:
        self.transaction()
        self.send(b"BDAT 2\r\nab")
        self.send(b"RSET\r\n")
        self.transaction()
        self.send(b"DATA\r\n")
        self.assertTrue(self.send(b"x\r\n.\r\n")[0].startswith("250 2.0.0 Ok"))
        self.assertEqual(self.delivered(), b"x\r\n")

    def test_envelopeCarried(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org> RET=FULL\r\nRCPT TO:<b@example.test>\r\n")
        self.send(b"BDAT 1 LAST\r\nx")
        self.assertEqual(self.delivery.envelopes[0].ret, "FULL")


class SMTPUTF8Tests(ServerTestsMixin, SynchronousTestCase):
    """
    RFC 6531: UTF-8 addresses only in a transaction that says SMTPUTF8.
    """

    def test_withoutParameter(self) -> None:
        self.ehlo()
        self.assertEqual(
            self.send("MAIL FROM:<jöe@example.org>\r\n".encode()),
            ["553 5.6.7 Non-ASCII addresses not permitted for that sender"],
        )
        self.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(
            self.send("RCPT TO:<bö@example.test>\r\n".encode()),
            ["553 5.6.7 Non-ASCII addresses not permitted for that recipient"],
        )
        self.assertEqual(self.delivery.calls, [("sender", "a@example.org")])

    def test_withParameter(self) -> None:
        self.ehlo()
        self.assertEqual(self.send("MAIL FROM:<jöe@Bücher.example> SMTPUTF8\r\n".encode()), ["250 2.1.0 Sender OK"])
        self.assertEqual(self.send("RCPT TO:<Bö@Ünicode.example>\r\n".encode()), ["250 2.1.5 Recipient OK"])
        self.send(b"DATA\r\n")
        self.send("Subject: ça\r\n\r\nhi\r\n.\r\n".encode())
        self.assertEqual(
            self.delivery.calls,
            [
                ("sender", "jöe@xn--bcher-kva.example"),
                ("recipient", "bö@xn--nicode-2ya.example"),
                ("deliver", "jöe@xn--bcher-kva.example", ["bö@xn--nicode-2ya.example"]),
            ],
        )
        self.assertTrue(self.delivery.envelopes[0].smtputf8)

    def test_invalidUTF8(self) -> None:
        self.ehlo()
        self.assertEqual(
            self.send(b"MAIL FROM:<j\xe9@example.org> SMTPUTF8\r\n"), ["501 5.6.7 Sender address is not valid UTF-8"]
        )
        self.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
        self.assertEqual(self.send(b"RCPT TO:<\xff@example.test>\r\n"), ["501 5.6.7 Recipient address is not valid UTF-8"])

    def test_badIDN(self) -> None:
        self.ehlo()
        self.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
        reply = self.send("RCPT TO:<b@\u00a0x.example>\r\n".encode())
        self.assertTrue(reply[0].startswith("501 5.1.3 "), reply)

    def test_valueRefused(self) -> None:
        self.ehlo()
        self.assertEqual(self.send(b"MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n"), ["501 5.5.4 SMTPUTF8 takes no value"])

    def test_controlsRefused(self) -> None:
        self.ehlo()
        reply = self.send("MAIL FROM:<a\u0085b@example.org> SMTPUTF8\r\n".encode())
        self.assertTrue(reply[0].startswith("501 5.1.7 "), reply)


from mailplat.auth.passwd import PasswordFile, PasswordFileChecker  # noqa: E402
from mailplat.auth.throttle import LoginThrottle, ThrottledPortal  # noqa: E402
from tests.test_sasl import ScramClient  # noqa: E402


class SASLTests(ServerTestsMixin, SynchronousTestCase):
    """
    SCRAM-SHA-256 and LOGIN through the shared SASL layer
    (L{mailplat.auth.sasl}), with Twisted's memory checker and with
    mailplat's own password file behind the throttling portal.
    """

    def setUp(self) -> None:
        self.open()

    def open(self, passwordFile: bool = False) -> None:
        self.clock = Clock()
        self.delivery = FakeDelivery()
        if passwordFile:
            passwords = PasswordFile(self.mktemp())
            passwords.setPassword(ALICE, SECRET.decode())
            checker: Any = PasswordFileChecker(passwords)
        else:
            checker = InMemoryUsernamePasswordDatabaseDontUse(**{ALICE: SECRET})
        portal = ThrottledPortal(MailRealm(MemoryStore()), [checker], throttle=LoginThrottle(self.clock))
        self.factory = SMTPFactory(self.delivery, HOST, clock=self.clock, portal=portal, role="submission")
        self.proto = self.factory.buildProtocol(LOOPBACK)
        self.transport = TLSTransport(peerAddress=LOOPBACK)
        self.proto.makeConnection(self.transport)
        self.replies()
        self.send(b"EHLO client.example.test\r\n")

    def scram(self, client: ScramClient, password: Optional[bytes] = None, initial: bool = True) -> List[str]:
        """
        Run the exchange up to the client-final message; the replies to it.
        """
        if initial:
            reply = self.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
        else:
            self.assertEqual(self.send(b"AUTH SCRAM-SHA-256\r\n"), ["334 "])
            reply = self.send(b64(client.first()) + b"\r\n")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith("334 "), reply)
        serverFirst = base64.b64decode(reply[0][4:])
        return self.send(b64(client.final(serverFirst, password)) + b"\r\n")

    def test_offered(self) -> None:
        self.open(passwordFile=True)
        self.assertIn("250 AUTH PLAIN LOGIN SCRAM-SHA-256", self.send(b"EHLO client.example.test\r\n"))

    def test_scramMemory(self) -> None:
        """
        SCRAM-SHA-256 with a checker holding plain secrets: server-first,
        then the server signature in a 334, then 235 after the empty line.
        """
        client = ScramClient(ALICE, SECRET)
        self.assertEqual(self.scram(client), ["334 " + b64(client.serverSignature).decode()])
        self.assertIsNone(self.proto.session.authenticated)
        self.assertEqual(self.send(b"\r\n"), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.session.authenticated, ALICE)

    def test_scramPasswordFile(self) -> None:
        self.open(passwordFile=True)
        client = ScramClient(ALICE, SECRET)
        self.assertEqual(self.scram(client, initial=False), ["334 " + b64(client.serverSignature).decode()])
        self.assertEqual(self.send(b"\r\n"), ["235 2.7.0 Authentication successful"])
        self.assertEqual(self.send(b"MAIL FROM:<" + ALICE.encode() + b">\r\n"), ["250 2.1.0 Sender OK"])

    def test_scramWrongProof(self) -> None:
        self.open(passwordFile=True)
        self.assertEqual(self.scram(ScramClient(ALICE, SECRET), b"wrong"), ["535 5.7.8 Authentication credentials invalid"])
        self.assertIsNone(self.proto.session.authenticated)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_scramCancelled(self) -> None:
        """
        C{*} ends the exchange at any step, the last one too (the login is
        then abandoned).
        """
        self.send(b"AUTH SCRAM-SHA-256 " + b64(ScramClient(ALICE, SECRET).first()) + b"\r\n")
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication cancelled"])
        client = ScramClient(ALICE, SECRET)
        self.scram(client)
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication cancelled"])
        self.assertIsNone(self.proto.session.authenticated)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_scramFinalNotEmpty(self) -> None:
        self.scram(ScramClient(ALICE, SECRET))
        self.assertEqual(self.send(b64(b"junk") + b"\r\n"), ["501 5.5.2 Expected an empty response"])
        self.assertIsNone(self.proto.session.authenticated)

    def test_scramMalformed(self) -> None:
        self.assertEqual(
            self.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,garbage") + b"\r\n"),
            ["501 5.5.2 Invalid SCRAM message: expected n="],
        )
        self.assertEqual(self.send(b"AUTH SCRAM-SHA-256 " + b64(b"p=tls-unique,,n=a@b.test,r=x") + b"\r\n"),
                         ["535 5.7.8 Authentication credentials invalid"])
        self.send(b"AUTH SCRAM-SHA-256 " + b64(ScramClient(ALICE, SECRET).first()) + b"\r\n")
        self.assertEqual(self.send(b"!!notbase64\r\n"), ["501 5.5.2 Cannot decode response"])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_loginPasswordFileRefusesCram(self) -> None:
        """
        mailplat's own checker cannot verify CRAM-MD5: refused.
        """
        self.open(passwordFile=True)
        self.assertEqual(self.send(b"AUTH CRAM-MD5\r\n"), ["504 5.5.4 Unrecognized authentication type"])

    def test_loginCancelled(self) -> None:
        self.assertEqual(self.send(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b64(ALICE.encode()) + b"\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication cancelled"])
        self.assertEqual(self.send(b"AUTH LOGIN " + b64(ALICE.encode()) + b"\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b64(SECRET) + b"\r\n"), ["235 2.7.0 Authentication successful"])
