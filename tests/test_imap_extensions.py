"""
Tests for the IMAP extensions of L{mailplat.imap.server}: STARTTLS, MOVE,
CHILDREN, SPECIAL-USE, LIST-EXTENDED, LIST-STATUS, ENABLE, CONDSTORE,
ESEARCH, LITERAL+ and ID, each checked against the exact responses its RFC
describes, over a StringTransport with the in-memory store.
"""

from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailplat.imap.cache import MessageCache, baseSubject, summarize
from mailplat.imap.server import IMAPFactory
from mailplat.imap.structure import parseMessage
from tests.test_imap_server import Client, IMAPTestBase, message


class TLSStringTransport(StringTransport):
    """
    A StringTransport that records C{startTLS} (a TCP transport has it).

    @ivar tlsContexts: every context factory passed to C{startTLS}.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tlsContexts: List[object] = []

    def startTLS(self, contextFactory: object) -> None:
        self.tlsContexts.append(contextFactory)


class TLSClient(Client):
    """
    A L{Client} whose transport can start TLS.
    """

    def __init__(self, factory: IMAPFactory, host: str = "127.0.0.1") -> None:
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()


CONTEXT = object()


class StartTLSTests(IMAPTestBase):
    """
    STARTTLS (RFC 3501 6.2.1).
    """

    def tlsClient(self, host: str = "192.0.2.7", context: Optional[object] = CONTEXT) -> TLSClient:
        factory = IMAPFactory(self.portal, "mail.example.test", clock=self.clock, contextFactory=context)
        client = TLSClient(factory, host)
        self.addCleanup(self._close, client)
        return client

    def test_advertisedWithContext(self) -> None:
        client = self.tlsClient()
        self.assertIn(b" STARTTLS ", client.greeting)
        self.assertIn(b"LOGINDISABLED", client.greeting)
        out = client.command(b"a CAPABILITY")
        self.assertIn(b" STARTTLS ", out)

    def test_notAdvertisedWithoutContext(self) -> None:
        client = self.tlsClient(context=None)
        self.assertNotIn(b"STARTTLS", client.greeting)
        out = client.command(b"a STARTTLS")
        self.assertTagged(out, b"a", b"BAD")
        self.assertEqual(client.transport.tlsContexts, [])

    def test_starttls(self) -> None:
        """
        OK is sent in the clear, then TLS starts with the factory's context;
        afterwards STARTTLS is gone, LOGINDISABLED is lifted and LOGIN works.
        """
        client = self.tlsClient()
        out = client.command(b"a STARTTLS")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(client.transport.tlsContexts, [CONTEXT])
        out = client.command(b"b CAPABILITY")
        caps = out.split(b"\r\n")[0]
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        out = client.command(b"c LOGIN alice@example.test secret")
        self.assertTagged(out, b"c", b"OK")
        self.assertNotIn(b"STARTTLS", out)

    def test_pipelinedInputDiscarded(self) -> None:
        """
        Commands sent after STARTTLS in the same packet are plaintext that
        an attacker may have injected: they are thrown away, not run.
        """
        client = self.tlsClient(host="127.0.0.1")
        out = client.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\n")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(client.server.state, "not authenticated")
        self.assertEqual(client.command(b"c NOOP"), b"c OK NOOP completed\r\n")

    def test_twice(self) -> None:
        client = self.tlsClient()
        client.command(b"a STARTTLS")
        out = client.command(b"b STARTTLS")
        self.assertEqual(out, b"b BAD TLS is already active\r\n")
        self.assertEqual(len(client.transport.tlsContexts), 1)

    def test_notAfterLogin(self) -> None:
        client = self.tlsClient(host="127.0.0.1")
        self.assertIn(b"STARTTLS", client.greeting)
        out = client.command(b"a LOGIN alice@example.test secret")
        self.assertNotIn(b"STARTTLS", out)
        out = client.command(b"b STARTTLS")
        self.assertTagged(out, b"b", b"BAD")
        self.assertEqual(client.transport.tlsContexts, [])

    def test_arguments(self) -> None:
        client = self.tlsClient()
        self.assertTagged(client.command(b"a STARTTLS now"), b"a", b"BAD")
        self.assertEqual(client.transport.tlsContexts, [])


class MoveTests(IMAPTestBase):
    """
    MOVE and UID MOVE (RFC 6851).
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(1, 5):
            self.deliver(message(f"m{n}"))
        self.account_create = self.successResultOf(self.account.createMailbox("Dest"))

    def test_move(self) -> None:
        client = self.selected()
        dest = self.mailbox("Dest").uidValidity
        out = client.command(b"a MOVE 2:3 Dest")
        self.assertEqual(
            out.split(b"\r\n")[:-1],
            [
                b"* OK [COPYUID %d 2:3 1:2] Moved" % dest,
                b"* 2 EXPUNGE",
                b"* 2 EXPUNGE",
                b"a OK MOVE completed",
            ],
        )
        self.assertEqual([i.uid for i in self.successResultOf(self.mailbox().listMessages())], [1, 4])
        self.assertEqual(len(self.successResultOf(self.mailbox("Dest").listMessages())), 2)

    def test_uidMove(self) -> None:
        client = self.selected()
        dest = self.mailbox("Dest").uidValidity
        out = client.command(b"a UID MOVE 1,4,9 Dest")
        self.assertEqual(
            out.split(b"\r\n")[:-1],
            [
                b"* OK [COPYUID %d 1,4 1:2] Moved" % dest,
                b"* 1 EXPUNGE",
                b"* 3 EXPUNGE",
                b"a OK MOVE completed",
            ],
        )

    def test_moveKeepsFlags(self) -> None:
        client = self.selected()
        client.command(b"a STORE 1 +FLAGS (\\Flagged)")
        client.command(b"b MOVE 1 Dest")
        infos = self.successResultOf(self.mailbox("Dest").listMessages())
        self.assertIn("\\Flagged", infos[0].flags)

    def test_moveMissingMailbox(self) -> None:
        client = self.selected()
        out = client.command(b"a MOVE 1 Nowhere")
        self.assertEqual(out, b"a NO [TRYCREATE] Mailbox does not exist\r\n")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 4)

    def test_moveReadOnly(self) -> None:
        client = self.login()
        client.command(b"a EXAMINE INBOX")
        out = client.command(b"b MOVE 1 Dest")
        self.assertTagged(out, b"b", b"NO [READ-ONLY]")

    def test_moveOtherSessionSeesExpunge(self) -> None:
        client = self.selected()
        other = self.selected()
        client.command(b"a MOVE 1 Dest")
        out = other.command(b"b NOOP")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nb OK NOOP completed\r\n")

    def test_moveBadSequence(self) -> None:
        client = self.selected()
        self.assertTagged(client.command(b"a MOVE 9 Dest"), b"a", b"BAD")
        self.assertTagged(client.command(b"b MOVE"), b"b", b"BAD")

    def test_moveNotSelected(self) -> None:
        client = self.login()
        self.assertTagged(client.command(b"a MOVE 1 Dest"), b"a", b"BAD")


class ListExtendedTests(IMAPTestBase):
    """
    CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154), LIST-EXTENDED (RFC 5258)
    and LIST-STATUS (RFC 5819).  The store's default mailboxes are INBOX,
    Archive, Drafts, Junk, Sent and Trash.
    """

    def setUp(self) -> None:
        super().setUp()
        for name in ("Fruit/Apple", "Fruit/Banana", "Vegetable"):
            self.successResultOf(self.account.createMailbox(name))
        for name in self.successResultOf(self.account.listSubscriptions()):
            self.successResultOf(self.account.unsubscribe(name))
        for name in ("Fruit/Banana", "Vegetable", "Gone"):
            self.successResultOf(self.account.subscribe(name))
        self.client = self.login()

    def lines(self, command: bytes) -> List[bytes]:
        out = self.client.command(command)
        lines = out.split(b"\r\n")[:-1]
        self.assertTrue(lines[-1].split(b" ", 2)[1] in (b"OK", b"NO", b"BAD"), lines)
        return lines

    def test_capabilities(self) -> None:
        out = self.client.command(b"a CAPABILITY")
        for cap in (b"CHILDREN", b"SPECIAL-USE", b"CREATE-SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS"):
            self.assertIn(b" " + cap, out)

    def test_plainListHasChildrenAndSpecialUse(self) -> None:
        self.assertEqual(
            self.lines(b'a LIST "" "*"'),
            [
                b'* LIST (\\HasNoChildren) "/" "INBOX"',
                b'* LIST (\\Archive \\HasNoChildren) "/" "Archive"',
                b'* LIST (\\Drafts \\HasNoChildren) "/" "Drafts"',
                b'* LIST (\\HasChildren) "/" "Fruit"',
                b'* LIST (\\HasNoChildren) "/" "Fruit/Apple"',
                b'* LIST (\\HasNoChildren) "/" "Fruit/Banana"',
                b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
                b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
                b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
                b'* LIST (\\HasNoChildren) "/" "Vegetable"',
                b"a OK LIST completed",
            ],
        )

    def test_specialUseSelection(self) -> None:
        self.assertEqual(
            self.lines(b'a LIST (SPECIAL-USE) "" "*"'),
            [
                b'* LIST (\\Archive \\HasNoChildren) "/" "Archive"',
                b'* LIST (\\Drafts \\HasNoChildren) "/" "Drafts"',
                b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
                b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
                b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
                b"a OK LIST completed",
            ],
        )

    def test_specialUseReturn(self) -> None:
        self.assertEqual(
            self.lines(b'a LIST "" "S%" RETURN (SPECIAL-USE)'),
            [b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"', b"a OK LIST completed"],
        )

    def test_createWithUse(self) -> None:
        self.assertEqual(self.lines(b"a CREATE MySent (USE (\\Sent))"), [b"a OK CREATE completed"])
        self.assertEqual(
            self.lines(b'b LIST "" MySent'),
            [b'* LIST (\\HasNoChildren \\Sent) "/" "MySent"', b"b OK LIST completed"],
        )

    def test_createWithBadUse(self) -> None:
        out = self.lines(b"a CREATE Odd (USE (\\Important))")
        self.assertEqual(out, [b"a NO [USEATTR] Unsupported special-use attribute"])
        out = self.lines(b"b CREATE Odd (USE (\\Sent \\Trash))")
        self.assertEqual(out, [b"b NO [USEATTR] A mailbox takes one special-use attribute here"])
        self.assertTagged(self.client.command(b"c CREATE Odd (COLOR red)"), b"c", b"BAD")
        self.assertEqual(self.lines(b'd LIST "" Odd'), [b"d OK LIST completed"])

    def test_subscribedSelection(self) -> None:
        """
        RFC 5258 selection SUBSCRIBED: subscribed names, \\Subscribed, and
        \\NonExistent for a name that does not exist.
        """
        self.assertEqual(
            self.lines(b'a LIST (SUBSCRIBED) "" "*"'),
            [
                b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Banana"',
                b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"',
                b'* LIST (\\HasNoChildren \\Subscribed) "/" "Vegetable"',
                b"a OK LIST completed",
            ],
        )

    def test_recursiveMatch(self) -> None:
        """
        RFC 5258 example: "Fruit" is not subscribed but a child is, so it
        is listed with CHILDINFO and without \\Subscribed.
        """
        self.assertEqual(
            self.lines(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'),
            [
                b'* LIST (\\HasChildren) "/" "Fruit" ("CHILDINFO" ("SUBSCRIBED"))',
                b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"',
                b'* LIST (\\HasNoChildren \\Subscribed) "/" "Vegetable"',
                b"a OK LIST completed",
            ],
        )

    def test_recursiveMatchAlone(self) -> None:
        out = self.lines(b'a LIST (RECURSIVEMATCH) "" "%"')
        self.assertEqual(out, [b"a BAD RECURSIVEMATCH needs another selection option"])
        out = self.lines(b'b LIST (REMOTE RECURSIVEMATCH) "" "%"')
        self.assertEqual(out, [b"b BAD RECURSIVEMATCH needs another selection option"])

    def test_remoteIsPlain(self) -> None:
        self.assertEqual(self.lines(b'a LIST (REMOTE) "" "*"'), self.lines(b'a LIST "" "*"'))

    def test_returnSubscribed(self) -> None:
        self.assertEqual(
            self.lines(b'a LIST "" "Fruit/*" RETURN (SUBSCRIBED CHILDREN)'),
            [
                b'* LIST (\\HasNoChildren) "/" "Fruit/Apple"',
                b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Banana"',
                b"a OK LIST completed",
            ],
        )

    def test_multiplePatterns(self) -> None:
        self.assertEqual(
            self.lines(b'a LIST "" ("INBOX" "Veg*" "*table")'),
            [
                b'* LIST (\\HasNoChildren) "/" "INBOX"',
                b'* LIST (\\HasNoChildren) "/" "Vegetable"',
                b"a OK LIST completed",
            ],
        )

    def test_badOptions(self) -> None:
        self.assertEqual(self.lines(b'a LIST (FANCY) "" "*"'), [b"a BAD Unknown LIST selection option"])
        self.assertEqual(self.lines(b'b LIST "" "*" RETURN (FANCY)'), [b"b BAD Unknown LIST return option"])
        self.assertEqual(self.lines(b'c LIST "" "*" FANCY (CHILDREN)'), [b"c BAD Expected RETURN"])
        self.assertEqual(self.lines(b'd LIST "" ()'), [b"d BAD Empty list of mailbox patterns"])
        self.assertTagged(self.client.command(b'e LIST "" "*" RETURN (STATUS (BOGUS))'), b"e", b"BAD")

    def test_listStatus(self) -> None:
        """
        RFC 5819: a STATUS response after each selectable mailbox listed.
        """
        self.deliver(message("one"), name="Vegetable")
        self.deliver(message("two"), ("\\Seen",), name="Vegetable")
        self.assertEqual(
            self.lines(b'a LIST "" ("Vegetable" "Fruit" "Gone") RETURN (STATUS (MESSAGES UNSEEN))'),
            [
                b'* LIST (\\HasChildren) "/" "Fruit"',
                b'* STATUS "Fruit" (MESSAGES 0 UNSEEN 0)',
                b'* LIST (\\HasNoChildren) "/" "Vegetable"',
                b'* STATUS "Vegetable" (MESSAGES 2 UNSEEN 1)',
                b"a OK LIST completed",
            ],
        )

    def test_listStatusSkipsNoselect(self) -> None:
        self.successResultOf(self.account.createMailbox("Tree/Leaf"))
        self.successResultOf(self.account.deleteMailbox("Tree"))
        self.assertEqual(
            self.lines(b'a LIST "" "Tree" RETURN (STATUS (MESSAGES))'),
            [b'* LIST (\\HasChildren \\Noselect) "/" "Tree"', b"a OK LIST completed"],
        )


class EnableCondstoreTests(IMAPTestBase):
    """
    ENABLE (RFC 5161) and CONDSTORE (RFC 7162).
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(1, 4):
            self.deliver(message(f"m{n}"))
        # modseqs: message n has modseq n + 1; highest 4.

    def test_enable(self) -> None:
        client = self.login()
        out = client.command(b"a ENABLE CONDSTORE X-UNKNOWN")
        self.assertEqual(out, b"* ENABLED CONDSTORE\r\na OK ENABLE completed\r\n")
        out = client.command(b"b ENABLE CONDSTORE")
        self.assertEqual(out, b"* ENABLED\r\nb OK ENABLE completed\r\n")

    def test_enableErrors(self) -> None:
        client = self.connect()
        self.assertTagged(client.command(b"a ENABLE CONDSTORE"), b"a", b"BAD")
        client = self.selected()
        self.assertTagged(client.command(b"b ENABLE CONDSTORE"), b"b", b"BAD")
        client = self.login()
        self.assertTagged(client.command(b"c ENABLE"), b"c", b"BAD")
        self.assertTagged(client.command(b'd ENABLE "CONDSTORE"'), b"d", b"BAD")

    def test_selectHighestModseq(self) -> None:
        client = self.login()
        out = client.command(b"a SELECT INBOX (CONDSTORE)")
        self.assertIn(b"* OK [HIGHESTMODSEQ 4] Highest modseq\r\n", out)
        self.assertTagged(out, b"a", b"OK [READ-WRITE]")
        self.assertTrue(client.server.condstore)
        self.assertTagged(client.command(b"b SELECT INBOX (BOGUS)"), b"b", b"BAD")

    def test_statusHighestModseq(self) -> None:
        client = self.login()
        out = client.command(b"a STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        self.assertEqual(out, b'* STATUS "INBOX" (MESSAGES 3 HIGHESTMODSEQ 4)\r\na OK STATUS completed\r\n')

    def test_fetchModseq(self) -> None:
        client = self.selected()
        out = client.command(b"a FETCH 1:* (MODSEQ)")
        self.assertEqual(
            out,
            b"* 1 FETCH (MODSEQ (2))\r\n* 2 FETCH (MODSEQ (3))\r\n* 3 FETCH (MODSEQ (4))\r\n"
            b"a OK FETCH completed\r\n",
        )

    def test_changedSince(self) -> None:
        client = self.selected()
        out = client.command(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 2)")
        self.assertEqual(
            out,
            b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (3))\r\n* 3 FETCH (FLAGS (\\Recent) MODSEQ (4))\r\n"
            b"a OK FETCH completed\r\n",
        )
        out = client.command(b"b UID FETCH 1:* (FLAGS) (CHANGEDSINCE 3)")
        self.assertEqual(out, b"* 3 FETCH (UID 3 FLAGS (\\Recent) MODSEQ (4))\r\nb OK FETCH completed\r\n")
        self.assertTagged(client.command(b"c FETCH 1 FLAGS (CHANGEDSINCE x)"), b"c", b"BAD")
        self.assertTagged(client.command(b"d FETCH 1 FLAGS (VANISHED)"), b"d", b"BAD")

    def test_storeUnchangedSince(self) -> None:
        """
        RFC 7162 3.1.3: messages changed since the given modseq are left
        alone and named in MODIFIED; the others are stored, with MODSEQ.
        """
        client = self.selected()
        client.command(b"a STORE 2 +FLAGS.SILENT (\\Seen)")  # message 2 now has modseq 5
        out = client.command(b"b STORE 1:3 (UNCHANGEDSINCE 4) +FLAGS (\\Flagged)")
        self.assertEqual(
            out,
            b"* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (6))\r\n"
            b"* 3 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (7))\r\n"
            b"b OK [MODIFIED 2] Conditional STORE failed\r\n",
        )
        infos = self.successResultOf(self.mailbox().listMessages())
        self.assertNotIn("\\Flagged", infos[1].flags)

    def test_uidStoreUnchangedSinceSilent(self) -> None:
        client = self.selected()
        out = client.command(b"a UID STORE 1:3 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Seen)")
        self.assertEqual(
            out,
            b"* 1 FETCH (UID 1 MODSEQ (5))\r\n* 2 FETCH (UID 2 MODSEQ (6))\r\n"
            b"a OK [MODIFIED 3] Conditional STORE failed\r\n",
        )
        out = client.command(b"b STORE 1 (UNCHANGEDSINCE 0) -FLAGS (\\Seen)")
        self.assertEqual(out, b"b OK [MODIFIED 1] Conditional STORE failed\r\n")
        self.assertTagged(client.command(b"c STORE 1 (BOGUS 1) +FLAGS (\\Seen)"), b"c", b"BAD")

    def test_unsolicitedFetchHasModseq(self) -> None:
        client = self.selected()
        client.command(b"a ENABLE CONDSTORE")  # not valid when selected
        client.command(b"b FETCH 1 (MODSEQ)")  # enables CONDSTORE
        other = self.selected()
        other.command(b"c STORE 1 +FLAGS (\\Flagged)")
        out = client.command(b"d NOOP")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (5))\r\nd OK NOOP completed\r\n")

    def test_searchModseq(self) -> None:
        client = self.selected()
        out = client.command(b"a SEARCH MODSEQ 3")
        self.assertEqual(out, b"* SEARCH 2 3 (MODSEQ 4)\r\na OK SEARCH completed\r\n")
        out = client.command(b'b UID SEARCH MODSEQ "/flags/\\\\draft" all 4')
        self.assertEqual(out, b"* SEARCH 3 (MODSEQ 4)\r\nb OK SEARCH completed\r\n")
        out = client.command(b"c SEARCH MODSEQ 99")
        self.assertEqual(out, b"* SEARCH\r\nc OK SEARCH completed\r\n")
        self.assertTagged(client.command(b"d SEARCH MODSEQ x"), b"d", b"BAD")


class ESearchTests(IMAPTestBase):
    """
    ESEARCH (RFC 4731).
    """

    def setUp(self) -> None:
        super().setUp()
        for n in range(1, 7):
            self.deliver(message(f"m{n}"), ("\\Seen",) if n in (1, 4) else ())
        self.client = self.selected()

    def test_minMaxCount(self) -> None:
        out = self.client.command(b"A282 SEARCH RETURN (MIN COUNT) UNSEEN")
        self.assertEqual(out, b'* ESEARCH (TAG "A282") MIN 2 COUNT 4\r\nA282 OK SEARCH completed\r\n')

    def test_all(self) -> None:
        out = self.client.command(b"A283 SEARCH RETURN () UNSEEN")
        self.assertEqual(out, b'* ESEARCH (TAG "A283") ALL 2:3,5:6\r\nA283 OK SEARCH completed\r\n')

    def test_uid(self) -> None:
        out = self.client.command(b"A285 UID SEARCH RETURN (MIN MAX) 1:5")
        self.assertEqual(out, b'* ESEARCH (TAG "A285") UID MIN 1 MAX 5\r\nA285 OK SEARCH completed\r\n')

    def test_noMatch(self) -> None:
        out = self.client.command(b"A286 SEARCH RETURN (MIN MAX COUNT ALL) DELETED")
        self.assertEqual(out, b'* ESEARCH (TAG "A286") COUNT 0\r\nA286 OK SEARCH completed\r\n')

    def test_withCharsetAndModseq(self) -> None:
        out = self.client.command(b"a SEARCH RETURN (COUNT) CHARSET UTF-8 MODSEQ 5")
        self.assertEqual(out, b'* ESEARCH (TAG "a") COUNT 3 MODSEQ 7\r\na OK SEARCH completed\r\n')

    def test_badOption(self) -> None:
        out = self.client.command(b"a SEARCH RETURN (SAVE) ALL")
        self.assertEqual(out, b"a BAD Unknown SEARCH return option\r\n")


class LiteralPlusTests(IMAPTestBase):
    """
    LITERAL+ (RFC 7888).
    """

    def test_advertised(self) -> None:
        self.assertIn(b" LITERAL+ ", self.connect().greeting)

    def test_appendNonSync(self) -> None:
        client = self.login()
        body = message("plus")
        out = client.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(body), body))
        self.assertNotIn(b"+ ", out)
        self.assertTagged(out, b"a", b"OK [APPENDUID")
        stored = self.successResultOf(self.mailbox().listMessages())
        self.assertEqual(stored[0].size, len(body))

    def test_loginNonSync(self) -> None:
        client = self.connect()
        out = client.send(b"a LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n")
        self.assertTagged(out, b"a", b"OK")
        self.assertNotIn(b"+ Ready", out)

    def test_tooLargeNonSyncSkipped(self) -> None:
        """
        A non-synchronising literal over the command limit is read and
        thrown away; its command answers BAD and the stream stays in step.
        """
        client = self.login()
        size = client.server.maxLineLength + 10
        out = client.send(b"a LOGIN {%d+}\r\n" % size + b"x" * size + b" y\r\nb NOOP\r\n")
        self.assertEqual(out, b"a BAD Literal too large\r\nb OK NOOP completed\r\n")

    def test_mixed(self) -> None:
        client = self.login()
        out = client.send(b'a CREATE {3+}\r\nFoo\r\nb LIST "" {3}\r\n')
        self.assertEqual(out, b"a OK CREATE completed\r\n+ Ready for literal data\r\n")
        out = client.send(b"Foo\r\n")
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "/" "Foo"\r\nb OK LIST completed\r\n')


class IDTests(IMAPTestBase):
    """
    ID (RFC 2971).
    """

    def test_nil(self) -> None:
        client = self.connect()
        out = client.command(b"a ID NIL")
        self.assertEqual(out, b'* ID ("name" "mailplat" "vendor" "mailplat")\r\na OK ID completed\r\n')

    def test_params(self) -> None:
        client = self.selected()
        out = client.command(b'a ID ("name" "sodr" "version" "19.34" "os" NIL)')
        self.assertEqual(out, b'* ID ("name" "mailplat" "vendor" "mailplat")\r\na OK ID completed\r\n')

    def test_errors(self) -> None:
        client = self.connect()
        for n, args in enumerate([b"", b"()", b'("name")', b"(name x)", b"FOO", b'("a" "1" "a" "2")',
                                  b'("' + b"f" * 31 + b'" "1")', b'("name" "' + b"v" * 1025 + b'")']):
            tag = b"t%d" % n
            self.assertTagged(client.command(tag + b" ID " + args), tag, b"BAD")
        out = client.command(b"z ID (" + b" ".join(b'"f%d" "v"' % i for i in range(31)) + b")")
        self.assertTagged(out, b"z", b"BAD")


def mail(subject: str, sender: str, date: str, to: str = "x@example.test", cc: Optional[str] = None,
         msgid: Optional[str] = None, refs: Optional[str] = None, body: bytes = b"b\r\n") -> bytes:
    """
    A small message with the headers SORT and THREAD read.
    """
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}"]
    if cc:
        lines.append(f"Cc: {cc}")
    if msgid:
        lines.append(f"Message-ID: <{msgid}>")
    if refs:
        lines.append(f"References: {refs}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class SortThreadTests(IMAPTestBase):
    """
    SORT and THREAD (RFC 5256).
    """

    def setUp(self) -> None:
        super().setUp()
        d = "Mon, 1 Jan 2024 %02d:00:00 +0000"
        self.deliver(mail("Re: Lunch", "carol@example.test", d % 5, msgid="c@x", refs="<a@x>",
                          cc="zed@example.test", body=b"xxxxxxxxxx\r\n"), date=300.0)
        self.deliver(mail("Lunch", "alice@example.test", d % 1, msgid="a@x", cc="amy@example.test"), date=100.0)
        self.deliver(mail("[list] Fwd: Budget (fwd)", "bob@example.test", d % 3, msgid="b@x"), date=200.0)
        self.deliver(mail("Re: Re: lunch", "dave@example.test", d % 7, msgid="d@x", refs="<a@x> <c@x>"), date=50.0)
        self.client = self.selected()

    def test_advertised(self) -> None:
        out = self.client.command(b"a CAPABILITY")
        for cap in (b" SORT", b" THREAD=ORDEREDSUBJECT", b" THREAD=REFERENCES"):
            self.assertIn(cap, out)

    def test_sortKeys(self) -> None:
        cases = {
            b"(ARRIVAL)": b"4 2 3 1",
            b"(DATE)": b"2 3 1 4",
            b"(REVERSE DATE)": b"4 1 3 2",
            b"(FROM)": b"2 3 1 4",
            b"(SIZE DATE)": b"3 2 4 1",
            b"(SUBJECT DATE)": b"3 2 1 4",
            b"(SUBJECT REVERSE ARRIVAL)": b"3 1 2 4",
            b"(CC FROM)": b"3 4 2 1",
            b"(TO REVERSE FROM)": b"4 1 3 2",
        }
        for criteria, expected in cases.items():
            out = self.client.command(b"s SORT " + criteria + b" UTF-8 ALL")
            self.assertEqual(out, b"* SORT " + expected + b"\r\ns OK SORT completed\r\n", criteria)

    def test_sortWithSearch(self) -> None:
        out = self.client.command(b"a SORT (DATE) US-ASCII SUBJECT lunch")
        self.assertEqual(out, b"* SORT 2 1 4\r\na OK SORT completed\r\n")
        out = self.client.command(b"b UID SORT (REVERSE SUBJECT) UTF-8 NOT FROM carol")
        self.assertEqual(out, b"* SORT 2 4 3\r\nb OK SORT completed\r\n")
        out = self.client.command(b"c SORT (DATE) UTF-8 DELETED")
        self.assertEqual(out, b"* SORT\r\nc OK SORT completed\r\n")

    def test_sortErrors(self) -> None:
        for n, args in enumerate([b"DATE UTF-8 ALL", b"() UTF-8 ALL", b"(COLOR) UTF-8 ALL",
                                  b"(REVERSE) UTF-8 ALL", b"(DATE) UTF-8", b"(DATE) UTF-8 BOGUS"]):
            tag = b"t%d" % n
            self.assertTagged(self.client.command(tag + b" SORT " + args), tag, b"BAD")
        out = self.client.command(b"z SORT (DATE) X-NOPE ALL")
        self.assertEqual(out, b"z NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")

    def test_orderedSubject(self) -> None:
        out = self.client.command(b"a THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(out, b"* THREAD (2 (1)(4))(3)\r\na OK THREAD completed\r\n")
        out = self.client.command(b"b UID THREAD ORDEREDSUBJECT UTF-8 NOT FROM dave")
        self.assertEqual(out, b"* THREAD (2 1)(3)\r\nb OK THREAD completed\r\n")

    def test_references(self) -> None:
        out = self.client.command(b"a THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(out, b"* THREAD (2 1 4)(3)\r\na OK THREAD completed\r\n")

    def test_referencesMissingParent(self) -> None:
        """
        Two replies to a message that is not in the mailbox hang under a
        dummy root: C{((x)(y))}.
        """
        d = "Mon, 1 Jan 2024 %02d:00:00 +0000"
        self.deliver(mail("Re: Gone", "e@example.test", d % 9, msgid="e@x", refs="<gone@x>"))
        self.deliver(mail("Re: Gone", "f@example.test", d % 10, msgid="f@x", refs="<gone@x>"))
        self.client.command(b"n NOOP")
        out = self.client.command(b"a THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(out, b"* THREAD (2 1 4)(3)((5)(6))\r\na OK THREAD completed\r\n")

    def test_referencesSubjectGathering(self) -> None:
        """
        Roots without references that share a base subject are gathered
        (RFC 5256 step 5): both are replies/forwards, so they become
        siblings under a dummy.
        """
        self.deliver(mail("Re: Budget", "g@example.test", "Mon, 1 Jan 2024 11:00:00 +0000", msgid="g@x"))
        self.client.command(b"n NOOP")
        out = self.client.command(b"a THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(out, b"* THREAD (2 1 4)((3)(5))\r\na OK THREAD completed\r\n")

    def test_threadErrors(self) -> None:
        self.assertTagged(self.client.command(b"a THREAD FANCY UTF-8 ALL"), b"a", b"BAD")
        self.assertTagged(self.client.command(b"b THREAD REFERENCES UTF-8"), b"b", b"BAD")
        out = self.client.command(b"c THREAD REFERENCES UTF-8 DELETED")
        self.assertEqual(out, b"* THREAD\r\nc OK THREAD completed\r\n")


class BaseSubjectTests(SynchronousTestCase):
    """
    L{baseSubject} against RFC 5256 2.1.
    """

    def test_cases(self) -> None:
        cases = {
            "Hello": ("hello", False),
            "Re: Hello": ("hello", True),
            "RE:  re: Fwd: Hello": ("hello", True),
            "Re[2]: Hello": ("hello", True),
            "[list] Re: Hello": ("hello", True),
            "Hello (fwd)": ("hello", True),
            "[Fwd: Re: Hello]": ("hello", True),
            "[list]": ("[list]", False),
            "Hello\t  world  ": ("hello world", False),
            "": ("", False),
        }
        for subject, expected in cases.items():
            self.assertEqual(baseSubject(subject), expected, subject)


class CacheTests(IMAPTestBase):
    """
    ENVELOPE, BODYSTRUCTURE and BODY come from the shared cache once a
    message was parsed, without opening it again.
    """

    def test_fetchUsesCache(self) -> None:
        self.deliver(message("cached"))
        client = self.selected()
        first = client.command(b"a FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")
        self.assertEqual(len(self.factory.cache), 1)
        opened = []
        mailbox = self.mailbox()
        original = mailbox.openMessage

        def counting(uid: int) -> Any:
            opened.append(uid)
            return original(uid)

        mailbox.openMessage = counting  # type: ignore[method-assign]
        second = client.command(b"b FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")
        self.assertEqual(first.replace(b"a OK", b"b OK"), second)
        self.assertEqual(opened, [])
        other = self.selected()
        other.command(b"c FETCH 1 ENVELOPE")
        self.assertEqual(opened, [])
        client.command(b"d FETCH 1 BODY.PEEK[HEADER]")
        self.assertEqual(opened, [1])

    def test_lru(self) -> None:
        cache = MessageCache(2)
        summary = summarize(parseMessage(message("x")))
        for uid in (1, 2, 3):
            cache.put(("a", "INBOX", 1, uid), summary)
        self.assertIsNone(cache.get(("a", "INBOX", 1, 1)))
        self.assertIs(cache.get(("a", "INBOX", 1, 3)), summary)
        cache.get(("a", "INBOX", 1, 2))
        cache.put(("a", "INBOX", 1, 4), summary)
        self.assertIsNone(cache.get(("a", "INBOX", 1, 3)))
        self.assertEqual((cache.hits, cache.misses), (2, 2))
