"""
End-to-end tests of POP3's UPDATE state over real sockets: mail sent with
smtplib, read with poplib, its flags looked at with imaplib, on every
store.  RETR changes nothing; QUIT flags \\Seen what was retrieved and
removes what was deleted; a connection dropped without QUIT does neither.
"""

import imaplib
import poplib
import re
import socket
import ssl

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from mailplat.tls import selfSignedPaths
from tests.e2e.test_clients import ALICE, PASSWORD, ClientTestsMixin, PostgresSchemaMixin

#: Bigger than L{mailplat.pop3.server.SMALL_MESSAGE}: streamed, not read whole.
BIG = b"Subject: big\r\n\r\n" + b"".join(b".line %d of a big message\r\n" % (i,) for i in range(4000))


class POP3UpdateTests(ClientTestsMixin, TestCase):
    """
    \\Seen and deletions happen at QUIT, through poplib, on the Maildir store.
    """

    @defer.inlineCallbacks
    def deliver(self):
        """
        Three messages: two small ones around a big one.
        """
        for body in (b"Subject: one\r\n\r\nfirst\r\n", BIG, b"Subject: three\r\n\r\n.third\r\n"):
            yield self.send([ALICE], body)

    def imapFlags(self) -> list:
        """
        Each message's flags, as an IMAP client sees them (read-only).
        """
        i = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        try:
            i.login(ALICE, PASSWORD)
            i.select("INBOX", readonly=True)
            typ, data = i.fetch("1:*", "(FLAGS)")
            return [set(re.search(rb"FLAGS \(([^)]*)\)", d).group(1).split()) for d in data if d]
        finally:
            i.logout()

    @defer.inlineCallbacks
    def loginWhenFree(self):
        """
        A POP3 login, once the server has seen the previous session go and
        released the maildrop (a bounded number of tries, paced by the reactor).
        """
        def attempt():
            p = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
            try:
                p.user(ALICE)
                p.pass_(PASSWORD)
            except poplib.error_proto as e:
                p.close()
                if b"[IN-USE]" not in e.args[0]:
                    raise
                return None
            return p

        for _ in range(500):
            p = yield threads.deferToThread(attempt)
            if p is not None:
                return p
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("the maildrop stayed locked after the client went")

    @defer.inlineCallbacks
    def test_seenAtQuit(self):
        """
        RETR sends each message exactly (the big one streamed); nothing is
        flagged until QUIT, which flags \\Seen the retrieved messages that
        were not deleted.
        """
        yield self.deliver()

        def session():
            p = self.pop3()
            try:
                first = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
                big = b"\r\n".join(p.retr(2)[1]) + b"\r\n"
                p.retr(3)
                p.dele(3)
                before = self.imapFlags()
            except BaseException:
                p.close()
                raise
            bye = p.quit()
            return first, big, before, bye, self.imapFlags()

        first, big, before, bye, after = yield threads.deferToThread(session)
        self.assertTrue(first.endswith(b"\r\n\r\nfirst\r\n"), first)
        self.assertTrue(big.endswith(BIG[len(b"Subject: big\r\n"):]))
        self.assertEqual([(b"\\Seen" in f) for f in before], [False, False, False])
        self.assertEqual(bye, b"+OK mailplat signing off (2 messages left)")
        self.assertEqual([(b"\\Seen" in f) for f in after], [True, True])

    @defer.inlineCallbacks
    def test_droppedWithoutQuit(self):
        """
        A client that goes without QUIT leaves every message unseen and
        undeleted.
        """
        yield self.deliver()

        def retrieveAndDrop():
            p = self.pop3()
            p.retr(1)
            p.retr(2)
            p.dele(3)
            p.sock.shutdown(socket.SHUT_RDWR)
            p.close()

        yield threads.deferToThread(retrieveAndDrop)
        p = yield self.loginWhenFree()
        count = yield threads.deferToThread(lambda: p.stat()[0])
        yield threads.deferToThread(p.quit)
        self.assertEqual(count, 3)
        flags = yield threads.deferToThread(self.imapFlags)
        self.assertEqual([(b"\\Seen" in f) for f in flags], [False, False, False])


    @defer.inlineCallbacks
    def test_overTLS(self):
        """
        Over implicit TLS (POP3S) and after STLS, the small messages and
        the streamed big one arrive exactly: the session, the transport's
        producer, is passed on to the TLS layer.
        """
        yield self.deliver()
        context = ssl.create_default_context(cafile=selfSignedPaths(self.dataDir, "mail.example.test")[0])
        context.check_hostname = False

        def session(p):
            try:
                p.user(ALICE)
                p.pass_(PASSWORD)
                return [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in (1, 2, 3)]
            finally:
                p.quit()

        def both():
            implicit = session(poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], timeout=30, context=context))
            p = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
            p.stls(context)
            return implicit, session(p)

        implicit, stls = yield threads.deferToThread(both)
        for texts in (implicit, stls):
            self.assertTrue(texts[0].endswith(b"\r\n\r\nfirst\r\n"))
            self.assertTrue(texts[1].endswith(BIG[len(b"Subject: big\r\n"):]))
            self.assertTrue(texts[2].endswith(b"\r\n\r\n.third\r\n"))
        self.assertEqual(implicit, stls)


class MboxPOP3UpdateTests(POP3UpdateTests):
    store = "mbox"


class SQLitePOP3UpdateTests(POP3UpdateTests):
    store = "sql"


class PostgresPOP3UpdateTests(PostgresSchemaMixin, POP3UpdateTests):
    pass
