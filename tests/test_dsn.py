"""
Tests for L{mailplat.delivery.dsn}: RFC 3464 delivery status notifications.
"""

import email
import email.policy
import io

from twisted.trial.unittest import SynchronousTestCase

from mailplat.delivery.dsn import DELAYED, FAILED, RecipientReport, makeDSN, readHeaders, statusFromReply

ORIGINAL = b"From: alice@example.test\r\nTo: bob@far.test\r\nSubject: report\r\n\r\nBody line\r\n"


class DSNTests(SynchronousTestCase):
    """
    L{makeDSN} builds a well-formed multipart/report.
    """

    def parse(self, data: bytes) -> email.message.EmailMessage:
        return email.message_from_bytes(data, policy=email.policy.default)

    def failed(self, **kw: object) -> bytes:
        report = RecipientReport(
            address="bob@far.test",
            action=FAILED,
            status="5.1.1",
            diagnostic="550 5.1.1 <bob@far.test>: User unknown",
            remoteMTA="mx.far.test",
            lastAttempt=1_700_000_000,
            orcpt="Bob@Far.test",
        )
        return makeDSN("mail.example.test", "alice@example.test", [report], io.BytesIO(ORIGINAL), 1_700_000_100, **kw)

    def test_structure(self) -> None:
        data = self.failed(envid="ENV1", arrivalDate=1_699_999_000)
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        msg = self.parse(data)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@example.test")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertIn("MAILER-DAEMON@mail.example.test", msg["From"])
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts], ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn("User unknown", parts[0].get_content())

    def test_statusFields(self) -> None:
        data = self.failed(envid="ENV1", arrivalDate=1_699_999_000)
        report = data.split(b"message/delivery-status\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0].decode()
        perMessage, perRecipient = report.strip("\r\n").split("\r\n\r\n")
        self.assertIn("Reporting-MTA: dns; mail.example.test", perMessage)
        self.assertIn("Original-Envelope-Id: ENV1", perMessage)
        self.assertIn("Arrival-Date: ", perMessage)
        fields = dict(line.split(": ", 1) for line in perRecipient.split("\r\n"))
        self.assertEqual(fields["Final-Recipient"], "rfc822; bob@far.test")
        self.assertEqual(fields["Original-Recipient"], "rfc822; Bob@Far.test")
        self.assertEqual(fields["Action"], "failed")
        self.assertEqual(fields["Status"], "5.1.1")
        self.assertEqual(fields["Remote-MTA"], "dns; mx.far.test")
        self.assertEqual(fields["Diagnostic-Code"], "smtp; 550 5.1.1 <bob@far.test>: User unknown")
        self.assertIn("Last-Attempt-Date", fields)

    def test_headersOnly(self) -> None:
        data = self.failed()
        self.assertIn(b"Subject: report\r\n", data)
        self.assertNotIn(b"Body line", data)

    def test_full(self) -> None:
        msg = self.parse(self.failed(ret="FULL"))
        returned = list(msg.iter_parts())[2]
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn(b"Body line", self.failed(ret="FULL"))

    def test_delayed(self) -> None:
        report = RecipientReport("bob@far.test", DELAYED, "4.4.1", "451 4.4.1 no answer", willRetryUntil=1_700_400_000)
        data = makeDSN("mail.example.test", "alice@example.test", [report], io.BytesIO(ORIGINAL), 1_700_000_100)
        self.assertIn(b"Subject: Delayed Mail (still being retried)\r\n", data)
        self.assertIn(b"Action: delayed\r\n", data)
        self.assertIn(b"Will-Retry-Until: ", data)
        self.assertIn(b"THIS IS A WARNING ONLY", data)

    def test_noHeaderInjection(self) -> None:
        """
        Control characters in a remote reply never start a new field.
        """
        report = RecipientReport("bob@far.test", FAILED, "5.0.0", "550 bad\r\nAction: delivered")
        data = makeDSN("mail.example.test", "alice@example.test", [report], io.BytesIO(ORIGINAL), 0)
        self.assertNotIn(b"\r\nAction: delivered", data)

    def test_statusFromReply(self) -> None:
        self.assertEqual(statusFromReply("550 5.7.1 Relay denied", True), "5.7.1")
        self.assertEqual(statusFromReply("550 No such user", True), "5.0.0")
        self.assertEqual(statusFromReply("451 4.3.0 later", False), "4.3.0")
        self.assertEqual(statusFromReply("550 4.3.0 inconsistent", True), "5.0.0")
        self.assertEqual(statusFromReply(None, False), "4.0.0")

    def test_readHeaders(self) -> None:
        self.assertEqual(readHeaders(io.BytesIO(ORIGINAL)), b"From: alice@example.test\r\nTo: bob@far.test\r\nSubject: report\r\n")
        self.assertEqual(readHeaders(io.BytesIO(b"Subject: x")), b"Subject: x\r\n")


class SuccessDSNTests(SynchronousTestCase):
    """
    "delivered" and "relayed" DSNs (RFC 3461 6.2).
    """

    def test_delivered(self) -> None:
        from mailplat.delivery.dsn import DELIVERED, RELAYED

        original = io.BytesIO(b"Subject: hi\r\n\r\nbody\r\n")
        for action in (DELIVERED, RELAYED):
            dsn = makeDSN(
                "mx.example.test", "a@example.test",
                [RecipientReport("b@example.test", action, "2.0.0", orcpt="rfc822;B@Example.test")],
                original, 0.0, envid="X",
            )
            message = email.message_from_bytes(dsn, policy=email.policy.default)
            self.assertEqual(message["Subject"], "Successful Mail Delivery Report")
            self.assertIn(f"Action: {action}\r\n".encode(), dsn)
            self.assertIn(b"Original-Recipient: rfc822; B@Example.test\r\n", dsn)
            self.assertIn(b"Original-Envelope-Id: X\r\n", dsn)
            self.assertNotIn(b"body", dsn.split(b"text/rfc822-headers")[1])

    def test_bareOrcpt(self) -> None:
        dsn = makeDSN("mx.test", "a@x.test", [RecipientReport("b@y.test", FAILED, "5.1.1", orcpt="B@y.test")], io.BytesIO(b"\r\n"), 0.0)
        self.assertIn(b"Original-Recipient: rfc822; B@y.test\r\n", dsn)
