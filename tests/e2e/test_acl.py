"""
End-to-end ACL (RFC 4314) and shared namespace tests: a real server on
loopback, alice and bob driven by Python's imaplib (in threads while the
reactor serves) and a raw-socket IDLE client; mail delivered by smtplib.
Run on Maildir, mbox, SQLite and (when MAILPLAT_TEST_POSTGRES is set)
PostgreSQL.
"""

import imaplib

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.e2e.server import IdleClient
from tests.e2e.test_clients import ALICE, BOB, PASSWORD, ClientTestsMixin, PostgresSchemaMixin

TEAM = '"shared/alice@example.test/Team"'
SHARED_INBOX = '"shared/alice@example.test/INBOX"'


class SharedIdleClient(IdleClient):
    """
    L{IdleClient} idling on a mailbox of the client's choosing.
    """

    def startIdleOn(self, mailbox: bytes) -> list:
        """
        Log in, SELECT C{mailbox} (its wire form) and start IDLE; the
        SELECT's lines.
        """
        self.readUntil(b"* OK")
        self.sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (self.user.encode(), self.password.encode()))
        self.readUntil(b"a ")
        self.sock.sendall(b"b SELECT " + mailbox + b"\r\n")
        selected = self.readUntil(b"b ")
        self.sock.sendall(b"c IDLE\r\n")
        self.readUntil(b"+ ")
        return selected


def ok(response: tuple) -> list:
    """
    The data of an imaplib response that must be OK.
    """
    typ, data = response
    if typ != "OK":
        raise AssertionError(f"expected OK, got {typ} {data!r}")
    return data


def refused(client: imaplib.IMAP4, code: bytes, *command: str) -> bytes:
    """
    Send a raw command that must be answered NO with the response code
    C{code}; the text of the NO.
    """
    typ, data = client._simple_command(*command)
    if typ != "NO" or not data[-1].startswith(b"[" + code + b"]"):
        raise AssertionError(f"expected NO [{code.decode()}], got {typ} {data!r}")
    return data[-1]


def _logout(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


class ACLTestsMixin(ClientTestsMixin):
    """
    Alice shares a folder with bob over IMAP; bob sees it, reads it, is
    told of new mail in it, and is refused what he has no right to.
    """

    def imap(self, user: str = ALICE, password: str = PASSWORD) -> imaplib.IMAP4:
        """
        A logged-in imaplib client (called in a thread), logged out after
        the test, in a thread too (the reactor serves it).
        """
        client = super().imap(user, password)
        self.addCleanup(threads.deferToThread, _logout, client)
        return client

    @defer.inlineCallbacks
    def test_shareAFolder(self):
        def alice() -> None:
            client = self.imap(ALICE)
            self.assertIn(b"ACL", ok(client.capability())[0])
            self.assertIn(b"RIGHTS=texk", ok(client.capability())[0])
            ok(client.create("Team"))
            ok(client.append("Team", "(\\Flagged)", None, b"Subject: plans\r\nFrom: alice@example.test\r\n\r\nThe plans.\r\n"))
            ok(client.setacl("Team", BOB, "lrs"))
            acl = ok(client.getacl("Team"))[0]
            self.assertEqual(acl, b'"Team" alice@example.test lrswipkxteacd bob@example.test lrs')

        yield threads.deferToThread(alice)

        def bob() -> None:
            client = self.imap(BOB)
            namespace = ok(client.namespace())[0]
            self.assertEqual(namespace, b'(("" "/")) (("shared/" "/")) NIL')
            listed = ok(client.list('""', "shared/*"))
            self.assertIn(b'(\\HasNoChildren) "/" "shared/alice@example.test/Team"', listed)
            self.assertNotIn(b"INBOX", b" ".join(listed))
            self.assertIn(b"lrs", ok(client.myrights(TEAM))[0])
            data = ok(client.select(TEAM))
            self.assertEqual(data, [b"1"])
            fetched = ok(client.fetch("1", "(FLAGS BODY[HEADER.FIELDS (SUBJECT)])"))
            self.assertIn(b"Subject: plans", fetched[0][1])
            self.assertIn(b"\\Flagged", fetched[0][0])
            # \Seen is bob's to change; \Deleted and EXPUNGE are not.
            stored = ok(client.store("1", "+FLAGS", "(\\Seen)"))
            self.assertIn(b"\\Seen", stored[0])
            refused(client, b"NOPERM", "STORE", "1", "+FLAGS", "(\\Deleted)")
            refused(client, b"NOPERM", "EXPUNGE")
            refused(client, b"NOPERM", "GETACL", TEAM)
            refused(client, b"NOPERM", "SETACL", TEAM, "anyone", "lr")
            refused(client, b"NOPERM", "DELETE", TEAM)
            refused(client, b"NOPERM", "CREATE", '"shared/alice@example.test/Team/Mine"')
            typ, data = client.append(TEAM, None, None, b"Subject: mine\r\n\r\nno\r\n")
            self.assertEqual(typ, "NO")
            self.assertTrue(data[0].startswith(b"[NOPERM]"), data)
            # Mailboxes alice did not share do not exist for bob.
            refused(client, b"NONEXISTENT", "SELECT", SHARED_INBOX)
            refused(client, b"NONEXISTENT", "STATUS", '"shared/alice@example.test/Sent"', "(MESSAGES)")
            refused(client, b"CANNOT", "SELECT", '"shared/alice@example.test/../bob@example.test/INBOX"')

        yield threads.deferToThread(bob)

        def aliceSees() -> None:
            client = self.imap(ALICE)
            ok(client.select("Team", readonly=True))
            flags = ok(client.fetch("1", "FLAGS"))[0]
            # Flags are shared: bob's \Seen is alice's too.
            self.assertIn(b"\\Seen", flags)
            self.assertIn(b"\\Flagged", flags)
            ok(client.deleteacl("Team", BOB))

        yield threads.deferToThread(aliceSees)

        def bobRevoked() -> None:
            client = self.imap(BOB)
            self.assertNotIn(b"Team", b" ".join(x for x in ok(client.list('""', "*")) if x))
            refused(client, b"NONEXISTENT", "SELECT", TEAM)

        yield threads.deferToThread(bobRevoked)

    @defer.inlineCallbacks
    def test_withdrawnWhileSelected(self):
        """
        Bob keeps alice's shared folder selected while she withdraws the
        share: his next command after the rights are looked up again (at
        once here) finds the mailbox closed, and he reads nothing more.
        """
        from mailplat.imap import server as imapServer

        self.patch(imapServer, "RIGHTS_RECHECK", 0.0)

        def share() -> None:
            client = self.imap(ALICE)
            ok(client.create("Team"))
            ok(client.append("Team", None, None, b"Subject: plans\r\n\r\nThe plans.\r\n"))
            ok(client.setacl("Team", BOB, "lr"))

        yield threads.deferToThread(share)
        bob = yield threads.deferToThread(self.imap, BOB)
        data = yield threads.deferToThread(lambda: ok(bob.select(TEAM, readonly=True)))
        self.assertEqual(data, [b"1"])
        yield threads.deferToThread(lambda: ok(self.imap(ALICE).deleteacl("Team", BOB)))

        def fetchAfter() -> None:
            # (imaplib raises for the BAD.)
            error = self.assertRaises(imaplib.IMAP4.error, bob._simple_command, "FETCH", "1", "(BODY[])")
            self.assertIn("BAD", str(error))
            closed = bob.untagged_responses.get("OK", [])
            self.assertTrue(any(line.startswith(b"[CLOSED]") for line in closed), closed)
            self.assertNotIn("FETCH", bob.untagged_responses)
            refused(bob, b"NONEXISTENT", "EXAMINE", TEAM)

        yield threads.deferToThread(fetchAfter)

    @defer.inlineCallbacks
    def test_withdrawnWhileIdle(self):
        """
        Bob idles in alice's shared INBOX; she withdraws the share, then
        mail comes: the change report finds the share gone (the rights
        are looked up again, at once here) and closes the mailbox instead
        of telling bob of the new message.
        """
        from mailplat.imap import server as imapServer

        self.patch(imapServer, "RIGHTS_RECHECK", 0.0)

        def share() -> None:
            ok(self.imap(ALICE).setacl("INBOX", BOB, "lr"))

        yield threads.deferToThread(share)
        client = SharedIdleClient(self.server.ports["imap"], BOB, PASSWORD)
        self.addCleanup(client.close)
        yield threads.deferToThread(client.startIdleOn, SHARED_INBOX.encode())
        yield threads.deferToThread(lambda: ok(self.imap(ALICE).deleteacl("INBOX", BOB)))
        yield self.send([ALICE], b"Subject: not for bob\r\n\r\nprivate\r\n")
        woken, done = yield threads.deferToThread(client.finishIdle, b"* OK [CLOSED]")
        self.assertNotIn(b"EXISTS", b"".join(woken))
        self.assertTrue(done[-1].startswith(b"c OK"), done)

    @defer.inlineCallbacks
    def test_idleOnSharedInbox(self):
        """
        Bob idling in alice's shared INBOX is told of mail delivered to
        alice by SMTP.
        """

        def share() -> None:
            ok(self.imap(ALICE).setacl("INBOX", BOB, "lr"))

        yield threads.deferToThread(share)
        client = SharedIdleClient(self.server.ports["imap"], BOB, PASSWORD)
        self.addCleanup(client.close)
        selected = yield threads.deferToThread(client.startIdleOn, SHARED_INBOX.encode())
        self.assertIn(b"* 0 EXISTS\r\n", selected)
        self.assertTrue(selected[-1].startswith(b"b OK [READ-ONLY]"), selected)
        yield self.send([ALICE], b"Subject: for alice\r\n\r\nnew mail\r\n")
        woken, done = yield threads.deferToThread(client.finishIdle, b"* 1 EXISTS")
        self.assertEqual(woken[-1], b"* 1 EXISTS\r\n")
        self.assertTrue(done[-1].startswith(b"c OK"), done)


class MaildirACLTests(ACLTestsMixin, TestCase):
    store = "maildir"


class MboxACLTests(ACLTestsMixin, TestCase):
    store = "mbox"


class SQLiteACLTests(ACLTestsMixin, TestCase):
    store = "sql"


class PostgresACLTests(PostgresSchemaMixin, ACLTestsMixin, TestCase):
    pass
