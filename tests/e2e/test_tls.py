"""
End-to-end TLS and authentication: a real server on loopback, driven by
Python's smtplib (STARTTLS, AUTH, SMTPS), poplib (STLS, POP3S) and imaplib
(IMAPS), each run in a thread while the reactor serves.  Clients verify the
server's self-signed certificate against the file the server made.
"""

import imaplib
import os
import poplib
import smtplib
import ssl

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from mailplat.tls import selfSignedPaths
from tests.e2e.server import LoopbackServer

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"
BOB = "bob@example.test"
HOSTNAME = "mail.example.test"


class TLSClientTests(TestCase):
    """
    A running server with two users and its self-signed certificate.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.dataDir = os.path.abspath(self.mktemp())
        self.server = LoopbackServer(self.dataDir, store="maildir").start()
        yield self.server.addUser(ALICE, PASSWORD)
        yield self.server.addUser(BOB, PASSWORD)
        self.addCleanup(lambda: self.server.stop())
        self.certPath = selfSignedPaths(self.dataDir, HOSTNAME)[0]

    def context(self) -> ssl.SSLContext:
        """
        A client context that trusts exactly the server's self-signed
        certificate (the host name is not checked: we connect to
        127.0.0.1).
        """
        context = ssl.create_default_context(cafile=self.certPath)
        context.check_hostname = False
        return context

    def port(self, name: str) -> int:
        return self.server.ports[name]

    def inbox(self, user: str = BOB) -> list:
        """
        Every message of C{user}, read with POP3 over STLS.
        """
        p = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=30)
        try:
            p.stls(self.context())
            p.user(user)
            p.pass_(PASSWORD)
            count = p.stat()[0]
            return [b"\r\n".join(p.retr(i + 1)[1]) for i in range(count)]
        finally:
            p.quit()

    @defer.inlineCallbacks
    def test_submissionStarttlsLogin(self):
        """
        On the submission port MAIL needs AUTH; after STARTTLS and AUTH the
        message is delivered, with a Received header saying ESMTPSA.
        """
        def go():
            with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=30) as s:
                s.ehlo("client.example.test")
                self.assertTrue(s.has_extn("starttls"))
                refused = s.mail(ALICE)
                self.assertEqual(refused[0], 530)
                self.assertIn(b"5.7.0 Authentication required", refused[1])
                s.rset()
                s.starttls(context=self.context())
                s.ehlo("client.example.test")
                self.assertFalse(s.has_extn("starttls"))
                self.assertIn("PLAIN", s.esmtp_features["auth"].split())
                s.login(ALICE, PASSWORD)
                try:
                    s.sendmail(BOB, [ALICE], b"Subject: forged\r\n\r\nx\r\n")
                    self.fail("another user's address was accepted")
                except smtplib.SMTPSenderRefused as e:
                    self.assertEqual(e.smtp_code, 553)
                s.sendmail(ALICE, [BOB], b"Subject: submitted\r\n\r\nHello Bob\r\n")
                return self.inbox()

        messages = yield threads.deferToThread(go)
        self.assertEqual(len(messages), 1)
        self.assertIn(b"with ESMTPSA", messages[0])
        self.assertIn(b"Subject: submitted", messages[0])

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password is 535 5.7.8.
        """
        def go():
            with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=30) as s:
                s.starttls(context=self.context())
                try:
                    s.login(ALICE, "not the password")
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code, e.smtp_error
                return None

        code, text = yield threads.deferToThread(go)
        self.assertEqual(code, 535)
        self.assertEqual(text, b"5.7.8 Authentication credentials invalid")

    @defer.inlineCallbacks
    def test_smtps(self):
        """
        SMTPS: implicit TLS with the server's certificate, AUTH offered at
        once, no STARTTLS.
        """
        def go():
            with smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), timeout=30, context=self.context()) as s:
                s.ehlo("client.example.test")
                self.assertFalse(s.has_extn("starttls"))
                der = s.sock.getpeercert(binary_form=True)
                s.login(ALICE, PASSWORD)
                s.sendmail(ALICE, [BOB], b"Subject: over smtps\r\n\r\nhi\r\n")
            return der, self.inbox()

        der, messages = yield threads.deferToThread(go)
        with open(self.certPath) as f:
            self.assertEqual(der, ssl.PEM_cert_to_DER_cert(f.read()))
        self.assertEqual(len(messages), 1)
        self.assertIn(b"Subject: over smtps", messages[0])

    @defer.inlineCallbacks
    def test_mxStarttls(self):
        """
        The MX port offers STARTTLS and takes mail for local users without
        AUTH, over TLS too.
        """
        def go():
            with smtplib.SMTP("127.0.0.1", self.port("smtp"), timeout=30) as s:
                s.starttls(context=self.context())
                s.sendmail("someone@far.test", [BOB], b"Subject: mx tls\r\n\r\nhi\r\n")
            return self.inbox()

        messages = yield threads.deferToThread(go)
        self.assertIn(b"with ESMTPS", messages[0])

    @defer.inlineCallbacks
    def test_pop3sAndStls(self):
        """
        POP3 over implicit TLS, and STLS on the plain port.
        """
        def go():
            p = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), timeout=30, context=self.context())
            try:
                self.assertNotIn("STLS", p.capa())
                p.user(ALICE)
                p.pass_(PASSWORD)
                first = p.stat()
            finally:
                p.quit()
            p = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=30)
            try:
                self.assertIn("STLS", p.capa())
                p.stls(self.context())
                self.assertNotIn("STLS", p.capa())
                p.user(ALICE)
                p.pass_(PASSWORD)
                second = p.stat()
            finally:
                p.quit()
            return first, second

        first, second = yield threads.deferToThread(go)
        self.assertEqual(first, (0, 0))
        self.assertEqual(second, (0, 0))

    @defer.inlineCallbacks
    def test_imaps(self):
        """
        IMAP over implicit TLS: passwords are accepted (no LOGINDISABLED).
        """
        def go():
            i = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), timeout=30, ssl_context=self.context())
            try:
                self.assertNotIn("LOGINDISABLED", i.capabilities)
                i.login(ALICE, PASSWORD)
                return i.select("INBOX")
            finally:
                i.logout()

        status, data = yield threads.deferToThread(go)
        self.assertEqual(status, "OK")
        self.assertEqual(data, [b"0"])

    @defer.inlineCallbacks
    def test_tls11Refused(self):
        """
        A client limited to TLS 1.1 cannot connect.
        """
        def go():
            context = self.context()
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            try:
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            except ssl.SSLError:
                pass
            try:
                smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), timeout=30, context=context).quit()
            except (ssl.SSLError, OSError):
                return True
            return False

        self.assertTrue((yield threads.deferToThread(go)))
