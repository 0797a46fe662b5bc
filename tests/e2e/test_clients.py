"""
End-to-end tests: a real server on loopback, driven by Python's own
smtplib, poplib and imaplib (run in threads while the reactor serves), and
by raw sockets where a client library would hide what is tested.
"""

import imaplib
import json
import os
import poplib
import re
import smtplib
import socket
import sqlite3
import time

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.e2e.server import IdleClient, LoopbackServer

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"
BOB = "bob@example.test"


def rawSession(port: int, chunks: list, timeout: float = 10.0) -> bytes:
    """
    Connect, send each chunk, half-close, and return everything the
    server said until it closed the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for chunk in chunks:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            more = s.recv(65536)
            if not more:
                return data
            data += more


class ClientTestsMixin:
    """
    A running server with two users, for each test.
    """

    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.dataDir = os.path.abspath(self.mktemp())
        self.server = LoopbackServer(self.dataDir, store=self.store).start()
        yield self.server.addUser(ALICE, PASSWORD)
        yield self.server.addUser(BOB, PASSWORD)
        self.addCleanup(lambda: self.server.stop())

    def send(self, recipients, body: bytes, sender: str = "sender@far.test") -> defer.Deferred:
        def go():
            with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
                return s.sendmail(sender, recipients, body)

        return threads.deferToThread(go)

    def pop3(self, user: str = ALICE, password: str = PASSWORD) -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        p.user(user)
        p.pass_(password)
        return p

    def imap(self, user: str = ALICE, password: str = PASSWORD) -> imaplib.IMAP4:
        i = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        i.login(user, password)
        return i


class SMTPToPOPAndIMAPTests(ClientTestsMixin, TestCase):
    """
    Mail sent with smtplib is read back, unchanged, with poplib and imaplib.
    """

    @defer.inlineCallbacks
    def test_roundTrip(self):
        body = b"From: Sender <sender@far.test>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHello Alice\r\n.leading dot\r\n"
        refused = yield self.send([ALICE], body)
        self.assertEqual(refused, {})

        def viaPOP():
            p = self.pop3()
            try:
                count, size = p.stat()
                response, lines, octets = p.retr(1)
                uidl = p.uidl()
                return count, lines, uidl
            finally:
                p.quit()

        count, lines, uidl = yield threads.deferToThread(viaPOP)
        self.assertEqual(count, 1)
        message = b"\r\n".join(lines) + b"\r\n"
        self.assertTrue(message.startswith(b"Return-Path: <sender@far.test>\r\nReceived: from "))
        self.assertTrue(message.endswith(body), message)
        self.assertIn(b"by mail.example.test", message)

        def viaIMAP():
            i = self.imap()
            try:
                typ, data = i.select("INBOX")
                exists = int(data[0])
                typ, fetched = i.fetch("1", "(BODY.PEEK[] FLAGS)")
                typ, envelope = i.fetch("1", "(ENVELOPE)")
                return exists, fetched, envelope
            finally:
                i.logout()

        exists, fetched, envelope = yield threads.deferToThread(viaIMAP)
        self.assertEqual(exists, 1)
        self.assertEqual(fetched[0][1], message)
        self.assertIn(b'"hello"', envelope[0])

    @defer.inlineCallbacks
    def test_unknownUser(self):
        error = yield self.assertFailure(self.send(["carol@example.test"], b"Subject: x\r\n\r\nx\r\n"), smtplib.SMTPRecipientsRefused)
        code, text = error.recipients["carol@example.test"]
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.1.1"), text)

    @defer.inlineCallbacks
    def test_relayRefused(self):
        error = yield self.assertFailure(self.send(["someone@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n"), smtplib.SMTPRecipientsRefused)
        code, text = error.recipients["someone@elsewhere.test"]
        self.assertEqual(code, 554)
        self.assertTrue(text.startswith(b"5.7.1"), text)

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        yield self.assertFailure(threads.deferToThread(self.pop3, ALICE, "wrong"), poplib.error_proto)
        yield self.assertFailure(threads.deferToThread(self.imap, ALICE, "wrong"), imaplib.IMAP4.error)
        yield self.assertFailure(threads.deferToThread(self.imap, "nobody@example.test", PASSWORD), imaplib.IMAP4.error)

    @defer.inlineCallbacks
    def test_smuggling(self):
        """
        A bare-LF "end of data" followed by a second transaction is all body
        text of one message: nothing is delivered to the smuggled recipient.
        """
        port = self.server.ports["smtp"]
        smuggled = (
            b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<evil@far.test>\r\nRCPT TO:<bob@example.test>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        transcript = yield threads.deferToThread(
            rawSession, port,
            [b"EHLO client.test\r\nMAIL FROM:<a@far.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n", smuggled, b"QUIT\r\n"],
        )
        codes = re.findall(rb"^(\d{3})[ ]", transcript, re.M)
        # 220, EHLO 250, MAIL 250, RCPT 250, DATA 354, end of data (refused:
        # bare LF), QUIT 221: exactly one end of data, never a second 354.
        self.assertEqual(codes.count(b"354"), 1, transcript)
        self.assertEqual(codes[-1], b"221", transcript)
        bob = yield self.server.server.store.getAccount(BOB)
        inbox = yield bob.getMailbox("INBOX")
        self.assertEqual((yield inbox.listMessages()), [])


class POP3Tests(ClientTestsMixin, TestCase):
    """
    POP3 deletion semantics through poplib.
    """

    @defer.inlineCallbacks
    def deliverThree(self):
        for n in range(3):
            yield self.send([ALICE], b"Subject: %d\r\n\r\nmessage %d\r\n" % (n, n))

    @defer.inlineCallbacks
    def test_deleRset(self):
        yield self.deliverThree()

        def session():
            p = self.pop3()
            p.dele(1)
            p.dele(2)
            p.rset()
            p.quit()
            p = self.pop3()
            try:
                return p.stat()[0]
            finally:
                p.quit()

        self.assertEqual((yield threads.deferToThread(session)), 3)

    @defer.inlineCallbacks
    def test_deleQuit(self):
        yield self.deliverThree()

        def session():
            p = self.pop3()
            before = p.uidl()[1]
            p.dele(2)
            p.quit()
            p = self.pop3()
            try:
                return before, p.stat()[0], p.uidl()[1], b"\r\n".join(p.retr(2)[1])
            finally:
                p.quit()

        before, count, after, second = yield threads.deferToThread(session)
        self.assertEqual(count, 2)
        ids = [line.split()[1] for line in before]
        self.assertEqual([line.split()[1] for line in after], [ids[0], ids[2]])
        self.assertIn(b"message 2", second)

    @defer.inlineCallbacks
    def test_inUse(self):
        yield self.deliverThree()

        def session():
            first = self.pop3()
            try:
                with self.assertRaises(poplib.error_proto) as caught:
                    self.pop3()
                return caught.exception.args[0]
            finally:
                first.quit()

        error = yield threads.deferToThread(session)
        self.assertIn(b"[IN-USE]", error)


class IMAPTests(ClientTestsMixin, TestCase):
    """
    IMAP behaviour that needs a real server: persistence and concurrency.
    """

    @defer.inlineCallbacks
    def test_flagsSurviveRestart(self):
        yield self.send([ALICE], b"Subject: keep\r\n\r\nflags\r\n")

        def store():
            i = self.imap()
            try:
                i.select("INBOX")
                i.store("1", "+FLAGS", r"(\Flagged \Answered $Important)")
                typ, data = i.status("INBOX", "(UIDVALIDITY UIDNEXT)")
                return data[0]
            finally:
                i.logout()

        before = yield threads.deferToThread(store)
        yield self.server.stop()
        self.server = LoopbackServer(self.dataDir, store=self.store).start()

        def check():
            i = self.imap()
            try:
                i.select("INBOX")
                typ, flags = i.fetch("1", "(FLAGS UID)")
                typ, data = i.status("INBOX", "(UIDVALIDITY UIDNEXT)")
                return flags[0], data[0]
            finally:
                i.logout()

        flags, after = yield threads.deferToThread(check)
        for flag in [rb"\Flagged", rb"\Answered", b"$Important"]:
            self.assertIn(flag, flags)
        self.assertEqual(before, after)

    @defer.inlineCallbacks
    def test_twoSessions(self):
        """
        One session's APPEND, STORE and EXPUNGE reach another selected on
        the same mailbox.
        """
        yield self.send([ALICE], b"Subject: one\r\n\r\n1\r\n")

        def scenario():
            a, b = self.imap(), self.imap()
            try:
                a.select("INBOX")
                b.select("INBOX")
                b.append("INBOX", None, None, b"Subject: two\r\n\r\n2\r\n")
                typ, data = a.noop()
                seenExists = [r for r in a.untagged_responses.get("EXISTS", [])]
                b.store("1", "+FLAGS", r"(\Deleted)")
                b.expunge()
                a.noop()
                expunged = a.untagged_responses.get("EXPUNGE", [])
                return seenExists, expunged
            finally:
                a.logout()
                b.logout()

        exists, expunged = yield threads.deferToThread(scenario)
        self.assertIn(b"2", exists)
        self.assertEqual(expunged, [b"1"])


class LargeMessageTests(ClientTestsMixin, TestCase):
    """
    A 20 MB message through SMTP, POP3 RETR and IMAP FETCH, byte for byte.
    """

    @defer.inlineCallbacks
    def test_twentyMegabytes(self):
        line = b"0123456789" * 7 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
        yield self.send([ALICE], body)

        def retrieve():
            p = self.pop3()
            try:
                popped = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
            finally:
                p.quit()
            i = self.imap()
            try:
                i.select("INBOX")
                typ, data = i.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
                return popped, data[0]
            finally:
                i.logout()

        popped, fetched = yield threads.deferToThread(retrieve)
        self.assertTrue(popped.endswith(body))
        self.assertEqual(fetched[1], popped)
        self.assertIn(b"RFC822.SIZE %d" % len(popped), fetched[0])


class IdleTests(ClientTestsMixin, TestCase):
    """
    IDLE (RFC 2177) over a raw socket: a message delivered by SMTP wakes a
    session idling on the INBOX.
    """

    @defer.inlineCallbacks
    def test_deliveryWakesIdle(self):
        client = IdleClient(self.server.ports["imap"], ALICE, PASSWORD)
        self.addCleanup(client.close)
        selected = yield threads.deferToThread(client.startIdle)
        self.assertIn(b"* 0 EXISTS\r\n", selected)
        yield self.send([ALICE], b"Subject: wake up\r\n\r\nnew mail\r\n")
        woken, done = yield threads.deferToThread(client.finishIdle, b"* 1 EXISTS")
        self.assertEqual(woken[-1], b"* 1 EXISTS\r\n")
        self.assertTrue(done[-1].startswith(b"c OK"), done)


# The same end-to-end tests on the other stores: one protocol layer, every
# store.  PostgreSQL runs where MAILPLAT_TEST_POSTGRES names a database, in
# a schema of its own per test.

class PostgresSchemaMixin:
    """
    Gives each test a fresh PostgreSQL schema, dropped afterwards.
    """

    @property
    def store(self) -> str:
        return self._store

    def setUp(self):
        dsn = os.environ.get("MAILPLAT_TEST_POSTGRES")
        if not dsn:
            raise self.skipTest("MAILPLAT_TEST_POSTGRES is not set (a DSN such as postgresql://postgres@127.0.0.1:5432/test)")
        import uuid

        import psycopg
        from psycopg import sql

        schema = "mp_e2e_" + uuid.uuid4().hex[:12]
        separator = "&" if "?" in dsn else "?"
        self._store = f"sql:{dsn}{separator}schema={schema}"

        def drop():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

        self.addCleanup(drop)
        return super().setUp()


class SQLiteRoundTripTests(SMTPToPOPAndIMAPTests):
    store = "sql"


class SQLitePOP3Tests(POP3Tests):
    store = "sql"


class SQLiteIMAPTests(IMAPTests):
    store = "sql"


class SQLiteIdleTests(IdleTests):
    store = "sql"


class PostgresRoundTripTests(PostgresSchemaMixin, SMTPToPOPAndIMAPTests):
    pass


class PostgresPOP3Tests(PostgresSchemaMixin, POP3Tests):
    pass


class PostgresIMAPTests(PostgresSchemaMixin, IMAPTests):
    pass


class PostgresIdleTests(PostgresSchemaMixin, IdleTests):
    pass


class GreylistTests(TestCase):
    """
    Greylisting on a running server decides at RCPT, per recipient.
    """

    @defer.inlineCallbacks
    def test_refusedAtRcpt(self):
        """
        A recipient whose triplet is new gets C{451 4.7.1} at RCPT, so the
        message is sent only for the one whose triplet passed before (here
        from the JSON state of an older version, which is taken in).
        """
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        now = time.time()
        with open(os.path.join(dataDir, "greylist.json"), "w") as f:
            json.dump({f"127.0.0.0/24 sender@far.test {BOB}": {"first": now - 600, "last": now, "passed": True}}, f)
        # (Loopback stands in for a remote client here, and no check
        # that asks the DNS is on.)
        server = LoopbackServer(dataDir, greylist=True, policyTrustLoopback=False, policySpf="off",
                                policyDmarc="off", policyDkimVerify=False).start()
        self.addCleanup(server.stop)
        yield server.addUser(ALICE, PASSWORD)
        yield server.addUser(BOB, PASSWORD)

        def go():
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
                return s.sendmail("sender@far.test", [ALICE, BOB], b"Subject: grey\r\n\r\nhello\r\n")

        refused = yield threads.deferToThread(go)
        self.assertEqual(list(refused), [ALICE])
        code, text = refused[ALICE]
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.7.1 Greylisted"), text)
        counts = {}
        for address in (ALICE, BOB):
            account = yield server.server.store.getAccount(address)
            inbox = yield account.getMailbox("INBOX")
            counts[address] = len((yield inbox.listMessages()))
        self.assertEqual(counts, {ALICE: 0, BOB: 1})
        # (The state is in SQLite; the older JSON file was taken in.)
        self.assertFalse(os.path.exists(os.path.join(dataDir, "greylist.json")))
        with sqlite3.connect(os.path.join(dataDir, "greylist.sqlite")) as db:
            keys = {key for (key,) in db.execute("SELECT key FROM triplets")}
        self.assertEqual(keys, {f"127.0.0.0/24 sender@far.test {ALICE}", f"127.0.0.0/24 sender@far.test {BOB}"})
