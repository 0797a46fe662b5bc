"""
Tests for L{mailplat.quota} and the IMAP QUOTA extension (RFC 9208).
"""

from mailplat.imap.server import IMAPFactory
from mailplat.quota import OverQuota, checkQuota, quotaUsage
from tests.test_imap_server import IMAPTestBase, message


class QuotaUsageTests(IMAPTestBase):
    def test_usage(self) -> None:
        """
        Usage sums octets and messages over every mailbox.
        """
        self.successResultOf(self.account.createMailbox("Work"))
        a, b = message("one"), message("two", b"x" * 100 + b"\r\n")
        self.deliver(a)
        self.deliver(b, name="Work")
        self.assertEqual(self.successResultOf(quotaUsage(self.account)), (len(a) + len(b), 2))

    def test_check(self) -> None:
        data = message("one")
        self.deliver(data)
        self.assertEqual(self.successResultOf(checkQuota(self.account, 0, 10**9)), (0, 0))
        self.assertEqual(self.successResultOf(checkQuota(self.account, len(data) + 10, 10)), (len(data), 1))
        failure = self.failureResultOf(checkQuota(self.account, len(data) + 10, 11), OverQuota)
        self.assertEqual((failure.value.used, failure.value.limit), (len(data), len(data) + 10))
        self.failureResultOf(checkQuota(self.account, 0, 1, messageLimit=1), OverQuota)


class IMAPQuotaTests(IMAPTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, quotaBytes=4096)

    def test_advertisedAfterLogin(self) -> None:
        client = self.connect()
        self.assertNotIn(b"QUOTA", client.greeting)
        out = client.command(b"L1 LOGIN alice@example.test secret")
        self.assertIn(b" QUOTA QUOTA=RES-STORAGE", out)
        self.assertNotIn(b"RES-MESSAGE", out)

    def test_notAdvertisedWithoutLimit(self) -> None:
        self.factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock)
        client = self.login()
        out = client.command(b"a CAPABILITY")
        self.assertNotIn(b"QUOTA", out)
        out = client.command(b'b GETQUOTA ""')
        self.assertTagged(out, b"b", b"NO [NONEXISTENT]")
        out = client.command(b"c GETQUOTAROOT INBOX")
        self.assertEqual(out, b'* QUOTAROOT "INBOX"\r\nc OK GETQUOTAROOT completed\r\n')

    def test_getQuotaRoot(self) -> None:
        self.deliver(message("one", b"y" * 1500 + b"\r\n"))
        client = self.login()
        out = client.command(b"a GETQUOTAROOT INBOX")
        used = -(-len(message("one", b"y" * 1500 + b"\r\n")) // 1024)
        self.assertEqual(
            out, b'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE %d 4)\r\na OK GETQUOTAROOT completed\r\n' % (used,)
        )
        out = client.command(b'b GETQUOTA ""')
        self.assertIn(b'* QUOTA "" (STORAGE 2 4)\r\n', out)
        self.assertTagged(client.command(b"c GETQUOTA other"), b"c", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"d GETQUOTAROOT Nope"), b"d", b"NO [NONEXISTENT]")

    def test_messageResource(self) -> None:
        self.factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, quotaBytes=4096, quotaMessages=1)
        self.deliver(message("one"))
        client = self.login()
        out = client.command(b'a GETQUOTA ""')
        self.assertIn(b'* QUOTA "" (STORAGE 1 4 MESSAGE 1 1)\r\n', out)
        data = message("two")
        out = client.command(b"b APPEND INBOX {%d+}\r\n" % len(data) + data)
        self.assertTagged(out, b"b", b"NO [OVERQUOTA]")

    def test_setQuotaRefused(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b'a SETQUOTA "" (STORAGE 512)'), b"a", b"NO [NOPERM]")
        self.assertTagged(client.command(b'b SETQUOTA "" (STORAGE x)'), b"b", b"BAD")
        self.assertTagged(client.command(b'c SETQUOTA ""'), b"c", b"BAD")

    def test_appendOverQuota(self) -> None:
        client = self.login()
        small = message("fits")
        out = client.command(b"a APPEND INBOX {%d+}\r\n" % len(small) + small)
        self.assertTagged(out, b"a", b"OK")
        big = message("big", b"z" * 4100 + b"\r\n")
        out = client.command(b"b APPEND INBOX {%d+}\r\n" % len(big) + big)
        self.assertTagged(out, b"b", b"NO [OVERQUOTA]")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 1)

    def test_copyOverQuota(self) -> None:
        self.successResultOf(self.account.createMailbox("Copy"))
        self.deliver(message("big", b"z" * 2500 + b"\r\n"))
        client = self.selected()
        self.assertTagged(client.command(b"a COPY 1 Copy"), b"a", b"NO [OVERQUOTA]")

    def test_statusDeleted(self) -> None:
        self.deliver(message("one"), ("\\Deleted",))
        self.deliver(message("two"))
        client = self.login()
        out = client.command(b"a STATUS INBOX (MESSAGES DELETED DELETED-STORAGE)")
        self.assertIn(b'* STATUS "INBOX" (MESSAGES 2 DELETED 1 DELETED-STORAGE 1)', out)
