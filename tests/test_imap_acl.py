"""
Tests for L{mailplat.imap.acl} (rights, identifiers, the shared namespace)
and for the IMAP server's ACL commands and shared mailboxes (RFC 4314),
over a L{StringTransport} on the memory store.
"""

from io import BytesIO
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from mailplat.errors import InvalidMailboxName
from mailplat.imap import acl
from mailplat.imap.server import RIGHTS_RECHECK
from tests.test_imap_server import ALICE, Client, IMAPTestBase, message

BOB = "bob@example.test"
SHARED_INBOX = b'"shared/alice@example.test/INBOX"'


class RightsTests(SynchronousTestCase):
    """
    Rights strings, their modifications and their wire form.
    """

    def test_parseRights(self) -> None:
        """
        Rights come back canonical; C{c} is C{k} and C{x}, C{d} is C{e}
        and C{t} (RFC 4314 2.1.1); anything else is refused as BAD.
        """
        self.assertEqual(acl.parseRights("rl"), "lr")
        self.assertEqual(acl.parseRights("aetxkpiwsrl"), acl.ALL_RIGHTS)
        self.assertEqual(acl.parseRights("lc"), "lkx")
        self.assertEqual(acl.parseRights("d"), "te")
        self.assertEqual(acl.parseRights(""), "")
        for bad in ("lrz", "L", "l r", "0"):
            e = self.assertRaises(acl.RightsError, acl.parseRights, bad)
            self.assertTrue(e.bad)

    def test_modification(self) -> None:
        """
        C{+} adds, C{-} removes, a bare string replaces.
        """
        self.assertEqual(acl.parseModification("+rs"), ("+", "rs"))
        self.assertEqual(acl.parseModification("-c"), ("-", "kx"))
        self.assertEqual(acl.parseModification("lr"), ("=", "lr"))
        self.assertEqual(acl.modifyRights("lr", "+", "ws"), "lrsw")
        self.assertEqual(acl.modifyRights("lrkx", "-", "kx"), "lr")
        self.assertEqual(acl.modifyRights("lrkx", "=", "i"), "i")
        self.assertEqual(acl.modifyRights("", "-", "l"), "")

    def test_rightsWire(self) -> None:
        """
        Responses add C{c} for C{k} or C{x} and C{d} for C{t} or C{e}, as
        Dovecot does; no rights is C{""}.
        """
        self.assertEqual(acl.rightsWire("lr"), b"lr")
        self.assertEqual(acl.rightsWire("lrk"), b"lrkc")
        self.assertEqual(acl.rightsWire("lre"), b"lred")
        self.assertEqual(acl.rightsWire(acl.ALL_RIGHTS), b"lrswipkxteacd")
        self.assertEqual(acl.rightsWire(""), b'""')

    def test_identifiers(self) -> None:
        """
        C{anyone} in any case, or a login address (normalised); negative
        rights and non-addresses are refused with NO, not BAD.
        """
        self.assertEqual(acl.parseIdentifier("anyone"), "anyone")
        self.assertEqual(acl.parseIdentifier("ANYONE"), "anyone")
        self.assertEqual(acl.parseIdentifier(" Bob@Example.TEST "), BOB)
        for bad in ("-bob@example.test", "bob", "@example.test", "bob@", "b b@example.test", "a/b@example.test", "owner"):
            e = self.assertRaises(acl.RightsError, acl.parseIdentifier, bad)
            self.assertFalse(e.bad)

    def test_effectiveRights(self) -> None:
        """
        A user's rights are their entry and C{anyone}'s together.
        """
        entries = {BOB: "lr", "anyone": "li", "carol@example.test": "a"}
        self.assertEqual(acl.effectiveRights(entries, BOB), "lri")
        self.assertEqual(acl.effectiveRights(entries, "dave@example.test"), "li")
        self.assertEqual(acl.effectiveRights({}, BOB), "")

    def test_commandTable(self) -> None:
        """
        The rights of RFC 4314 section 4 for the commands that check one.
        """
        expected = {
            "LIST": "l", "SELECT": "r", "EXAMINE": "r", "STATUS": "r", "APPEND": "i", "COPY": "i",
            "EXPUNGE": "e", "CREATE": "k", "DELETE": "x", "RENAME": "x", "SETACL": "a", "GETACL": "a",
            "DELETEACL": "a", "LISTRIGHTS": "a", "MOVE-SOURCE": "te",
        }
        for command, rights in expected.items():
            self.assertEqual(acl.COMMAND_RIGHTS[command], rights, command)

    def test_flagRights(self) -> None:
        """
        C{\\Seen} needs C{s}, C{\\Deleted} C{t}, every other flag C{w}.
        """
        self.assertEqual(acl.flagRight("\\SEEN"), "s")
        self.assertEqual(acl.flagRight("\\Deleted"), "t")
        self.assertEqual(acl.flagRight("\\Flagged"), "w")
        self.assertEqual(acl.flagRight("$Label"), "w")
        self.assertEqual(acl.allowedFlags("s", ["\\Seen", "\\Flagged", "\\Deleted"]), ["\\Seen"])
        self.assertEqual(acl.permanentFlags("s"), b"(\\Seen)")
        self.assertEqual(acl.permanentFlags("st"), b"(\\Deleted \\Seen)")
        self.assertEqual(acl.permanentFlags("w"), b"(\\Answered \\Flagged \\Draft \\*)")

    def test_storedFlags(self) -> None:
        """
        A STORE keeps the state of the flags the user may not change.
        """
        current = frozenset({"\\Deleted", "$Label", "\\Flagged"})
        self.assertEqual(
            acl.storedFlags("s", current, ["\\Seen"], "set"), frozenset({"\\Deleted", "$Label", "\\Flagged", "\\Seen"})
        )
        self.assertEqual(acl.storedFlags("s", current | {"\\Seen"}, [], "set"), current)
        self.assertEqual(acl.storedFlags("w", current, ["\\Deleted", "\\Flagged"], "remove"), frozenset({"\\Deleted", "$Label"}))
        self.assertEqual(acl.storedFlags("w", current, ["$Other"], "set"), frozenset({"\\Deleted", "$Other"}))
        self.assertEqual(acl.storedFlags("t", current, ["\\Seen"], "add"), current)
        self.assertEqual(acl.storedFlags("swt", current, ["\\Seen"], "set"), frozenset({"\\Seen"}))


class NamespaceNameTests(SynchronousTestCase):
    """
    Names of the shared namespace are parsed strictly.
    """

    def test_personal(self) -> None:
        """
        Names outside C{shared/} are personal.
        """
        for name in ("INBOX", "Work/shared", "sharedX", "Shared/x"):
            self.assertIsNone(acl.parseShared(name))
            self.assertFalse(acl.isShared(name))

    def test_levels(self) -> None:
        """
        The root, an owner's level and an owner's mailbox.
        """
        self.assertEqual(acl.parseShared("shared"), acl.SharedName(None, None))
        self.assertEqual(acl.parseShared("shared/alice@example.test"), acl.SharedName(ALICE, None))
        self.assertEqual(acl.parseShared("shared/alice@example.test/Team/Sub"), acl.SharedName(ALICE, "Team/Sub"))
        self.assertEqual(acl.parseShared("shared/alice@example.test/inbox"), acl.SharedName(ALICE, "INBOX"))
        self.assertEqual(acl.sharedName(ALICE, "Team/Sub"), "shared/alice@example.test/Team/Sub")

    def test_refused(self) -> None:
        """
        Names that are not an owner's address and a valid mailbox name
        never resolve: no escape through C{..}, empty levels or other
        spellings of the owner.
        """
        for name in (
            "shared/", "shared//INBOX", "shared/../x", "shared/..", "shared/alice/INBOX", "shared/@example.test/x",
            "shared/Alice@example.test/INBOX", "shared/alice@example.test/../bob@example.test/INBOX",
            "shared/alice@example.test/Team//Sub", "shared/alice@example.test/", "shared/alice@example.test/a\x00b",
            "shared/alice@example.test/.",
        ):
            self.assertRaises(InvalidMailboxName, acl.parseShared, name)

    def test_patterns(self) -> None:
        """
        Only patterns that can reach C{shared} make LIST ask the store.
        """
        for pattern in ("*", "%", "shared", "shared/*", "sh%", "shared/alice@example.test/%", "%/%"):
            self.assertTrue(acl.patternMayReachShared(pattern), pattern)
        for pattern in ("INBOX", "Work/*", "Sent", "x%"):
            self.assertFalse(acl.patternMayReachShared(pattern), pattern)


class ACLServerTests(IMAPTestBase):
    """
    The ACL commands and shared mailboxes through the IMAP server.
    """

    def setUp(self) -> None:
        super().setUp()
        self.bobAccount = self.successResultOf(self.store.getAccount(BOB, create=True))

    def bob(self) -> Client:
        client = self.connect()
        self.assertIn(b"B1 OK", client.command(b"B1 LOGIN bob@example.test hunter2"))
        return client

    def grant(self, name: str, rights: str, identifier: str = BOB) -> None:
        self.successResultOf(self.account.setACL(name, identifier, rights))

    def deliver(self, subject: str, name: str = "INBOX", flags: List[str] = ()) -> int:
        mailbox = self.mailbox(name)
        return self.successResultOf(mailbox.append(BytesIO(message(subject)), list(flags)))

    def test_capability(self) -> None:
        """
        ACL and RIGHTS=texk are advertised once logged in.
        """
        client = self.connect()
        self.assertNotIn(b"ACL", client.command(b"a CAPABILITY"))
        self.login(client)
        out = client.command(b"b CAPABILITY")
        self.assertIn(b" ACL ", out)
        self.assertIn(b" RIGHTS=texk", out)

    def test_owner(self) -> None:
        """
        The owner has every right on its mailboxes; GETACL names it first.
        """
        client = self.login()
        out = client.command(b"a GETACL INBOX")
        self.assertIn(b'* ACL "INBOX" alice@example.test lrswipkxteacd\r\n', out)
        self.assertTagged(out, b"a", b"OK")
        self.assertIn(b'* MYRIGHTS "INBOX" lrswipkxteacd', client.command(b"b MYRIGHTS INBOX"))
        out = client.command(b"c LISTRIGHTS INBOX bob@example.test")
        self.assertIn(b'* LISTRIGHTS "INBOX" bob@example.test "" l r s w i p k x t e a c d', out)
        out = client.command(b"d LISTRIGHTS INBOX alice@example.test")
        self.assertIn(b'* LISTRIGHTS "INBOX" alice@example.test lrswipkxteacd\r\n', out)
        self.assertTagged(client.command(b"e MYRIGHTS Nowhere"), b"e", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"f LISTRIGHTS Nowhere anyone"), b"f", b"NO [NONEXISTENT]")

    def test_setACL(self) -> None:
        """
        SETACL replaces, adds with C{+}, removes with C{-}, maps C{c} and
        C{d}; DELETEACL removes the entry; the store keeps the result.
        """
        client = self.login()
        self.assertTagged(client.command(b"a SETACL INBOX bob@example.test lr"), b"a", b"OK")
        self.assertTagged(client.command(b"b SETACL INBOX Bob@Example.Test +wc"), b"b", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("INBOX")), {BOB: "lrwkx"})
        self.assertTagged(client.command(b"c SETACL INBOX bob@example.test -r"), b"c", b"OK")
        self.assertTagged(client.command(b'd SETACL INBOX anyone "l"'), b"d", b"OK")
        out = client.command(b"e GETACL INBOX")
        self.assertIn(b'* ACL "INBOX" alice@example.test lrswipkxteacd anyone l bob@example.test lwkxc\r\n', out)
        self.assertTagged(client.command(b"f DELETEACL INBOX bob@example.test"), b"f", b"OK")
        self.assertTagged(client.command(b"g SETACL INBOX anyone -l"), b"g", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("INBOX")), {})
        self.assertTagged(client.command(b"h DELETEACL INBOX carol@example.test"), b"h", b"OK")

    def test_setACLRefused(self) -> None:
        """
        Unknown rights are BAD; the owner, negative rights, non-addresses
        and missing mailboxes are refused with NO.
        """
        client = self.login()
        self.assertTagged(client.command(b"a SETACL INBOX bob@example.test lrz"), b"a", b"BAD")
        self.assertTagged(client.command(b"b SETACL INBOX alice@example.test l"), b"b", b"NO [CANNOT]")
        self.assertTagged(client.command(b"c SETACL INBOX -bob@example.test l"), b"c", b"NO [CANNOT]")
        self.assertTagged(client.command(b"d SETACL INBOX bob l"), b"d", b"NO [CANNOT]")
        self.assertTagged(client.command(b"e SETACL Nowhere bob@example.test l"), b"e", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"f DELETEACL INBOX alice@example.test"), b"f", b"NO [CANNOT]")
        self.assertTagged(client.command(b"g SETACL INBOX bob@example.test"), b"g", b"BAD")
        self.assertEqual(self.successResultOf(self.account.getACL("INBOX")), {})

    def test_namespaceAndList(self) -> None:
        """
        Bob sees alice's shared mailboxes under C{shared/<alice>/}, with
        the levels above them as \\Noselect, only those he has C{l} on.
        """
        self.successResultOf(self.account.createMailbox("Team/Sub"))
        self.successResultOf(self.account.createMailbox("Hidden"))
        self.grant("INBOX", "lr")
        self.grant("Team/Sub", "lrs")
        self.grant("Hidden", "r")
        client = self.bob()
        self.assertIn(b'* NAMESPACE (("" "/")) (("shared/" "/")) NIL', client.command(b"n NAMESPACE"))
        out = client.command(b'a LIST "" "shared/*"')
        lines = [line for line in out.split(b"\r\n") if line.startswith(b"* LIST")]
        self.assertEqual(
            lines,
            [
                b'* LIST (\\HasChildren \\Noselect) "/" "shared/alice@example.test"',
                b'* LIST (\\HasNoChildren) "/" "shared/alice@example.test/INBOX"',
                b'* LIST (\\HasChildren \\Noselect) "/" "shared/alice@example.test/Team"',
                b'* LIST (\\HasNoChildren) "/" "shared/alice@example.test/Team/Sub"',
            ],
        )
        out = client.command(b'b LIST "" "%"')
        self.assertIn(b'* LIST (\\HasChildren \\Noselect) "/" "shared"\r\n', out)
        self.assertNotIn(b"alice", out)
        out = client.command(b'c LIST "" INBOX')
        self.assertNotIn(b"shared", out)
        out = client.command(b'd LIST "shared/alice@example.test/" "%"')
        self.assertIn(b'"shared/alice@example.test/INBOX"', out)
        self.assertIn(b'"shared/alice@example.test/Team"', out)
        self.assertNotIn(b"Sub", out)
        self.assertNotIn(b"Hidden", client.command(b'e LIST "" "*"'))
        # Alice sees none of her own mailboxes twice.
        alice = self.login()
        self.assertNotIn(b"shared/", alice.command(b'f LIST "" "*"'))

    def test_selectAndFetch(self) -> None:
        """
        With C{lr} bob reads alice's INBOX read-only: FETCH BODY[] does
        not set \\Seen, STORE and EXPUNGE are refused.
        """
        self.deliver("first")
        self.grant("INBOX", "lr")
        client = self.bob()
        out = client.command(b"a SELECT " + SHARED_INBOX)
        self.assertIn(b"* 1 EXISTS", out)
        self.assertIn(b"* OK [PERMANENTFLAGS ()]", out)
        self.assertTagged(out, b"a", b"OK [READ-ONLY]")
        out = client.command(b"b FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)] BODY[])")
        self.assertIn(b"Subject: first", out)
        self.assertTagged(out, b"b", b"OK")
        self.assertEqual(self.successResultOf(self.mailbox().listMessages())[0].flags, frozenset())
        self.assertTagged(client.command(b"c STORE 1 +FLAGS (\\Seen)"), b"c", b"NO [READ-ONLY]")
        self.assertTagged(client.command(b"d EXPUNGE"), b"d", b"NO [READ-ONLY]")
        self.assertIn(b"* SEARCH 1", client.command(b"e SEARCH SUBJECT first"))
        out = client.command(b"f STATUS " + SHARED_INBOX + b" (MESSAGES UNSEEN)")
        self.assertIn(b'* STATUS "shared/alice@example.test/INBOX" (MESSAGES 1 UNSEEN 1)', out)
        self.assertIn(b"* MYRIGHTS " + SHARED_INBOX + b" lr\r\n", client.command(b"g MYRIGHTS " + SHARED_INBOX))
        self.assertTagged(client.command(b"h GETACL " + SHARED_INBOX), b"h", b"NO [NOPERM]")
        self.assertTagged(client.command(b"i SETACL " + SHARED_INBOX + b" anyone lr"), b"i", b"NO [NOPERM]")

    def test_hiddenWithoutLookupOrRead(self) -> None:
        """
        Without C{l} or C{r} a mailbox is answered as nonexistent, however
        it is named; with C{l} alone, reading is NOPERM.
        """
        self.grant("INBOX", "w")
        client = self.bob()
        for command in (b"SELECT ", b"EXAMINE ", b"MYRIGHTS ", b"GETACL ", b"DELETE "):
            out = client.command(b"a " + command + SHARED_INBOX)
            self.assertTagged(out, b"a", b"NO [NONEXISTENT]")
        missing = b'"shared/alice@example.test/Nope"'
        self.assertTagged(client.command(b"b SELECT " + missing), b"b", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b'c SELECT "shared/nobody@example.test/INBOX"'), b"c", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b"d STATUS " + SHARED_INBOX + b" (MESSAGES)"), b"d", b"NO [NONEXISTENT]")
        self.grant("INBOX", "l")
        self.assertTagged(client.command(b"e SELECT " + SHARED_INBOX), b"e", b"NO [NOPERM]")
        self.assertTagged(client.command(b"f STATUS " + SHARED_INBOX + b" (MESSAGES)"), b"f", b"NO [NOPERM]")
        self.assertIn(b"* MYRIGHTS " + SHARED_INBOX + b" l\r\n", client.command(b"g MYRIGHTS " + SHARED_INBOX))
        self.grant("INBOX", "i")
        self.assertIn(b"* MYRIGHTS " + SHARED_INBOX + b" i\r\n", client.command(b"h MYRIGHTS " + SHARED_INBOX))

    def test_strictNames(self) -> None:
        """
        Shared names cannot escape: bad ones are refused, one's own
        mailboxes are not in the shared namespace, and the namespace
        cannot be used for personal mailboxes.
        """
        self.grant("INBOX", "lr")
        client = self.bob()
        for name in (b'"shared/../alice@example.test/INBOX"', b'"shared/alice@example.test/../x"',
                     b'"shared/Alice@example.test/INBOX"', b'"shared//INBOX"', b'"shared/alice/INBOX"'):
            self.assertTagged(client.command(b"a SELECT " + name), b"a", b"NO [CANNOT]")
        self.assertTagged(client.command(b'b SELECT "shared/bob@example.test/INBOX"'), b"b", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b'c SELECT "shared"'), b"c", b"NO [NONEXISTENT]")
        self.assertTagged(client.command(b'd CREATE "shared/Mine"'), b"d", b"NO [CANNOT]")
        self.assertTagged(client.command(b'e CREATE "shared"'), b"e", b"NO [CANNOT]")
        self.assertTagged(client.command(b'f CREATE "shared/bob@example.test/X"'), b"f", b"NO [CANNOT]")
        self.assertTagged(client.command(b'g RENAME Sent "shared/alice@example.test/Sent2"'), b"g", b"NO")
        self.assertNotIn("shared", str(self.successResultOf(self.bobAccount.listMailboxes())))

    def test_storeWithRights(self) -> None:
        """
        With C{lrs} bob may change \\Seen only: other flags keep their
        state, and a STORE of only forbidden flags is NOPERM.
        """
        self.deliver("one", flags=["\\Flagged"])
        self.grant("INBOX", "lrs")
        client = self.bob()
        out = client.command(b"a SELECT " + SHARED_INBOX)
        self.assertIn(b"* OK [PERMANENTFLAGS (\\Seen)]", out)
        self.assertTagged(out, b"a", b"OK [READ-WRITE]")
        out = client.command(b"b STORE 1 +FLAGS (\\Seen \\Deleted)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", out)
        self.assertTagged(out, b"b", b"OK")
        self.assertTagged(client.command(b"c STORE 1 +FLAGS (\\Deleted)"), b"c", b"NO [NOPERM]")
        out = client.command(b"d STORE 1 FLAGS ()")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", out)
        self.assertEqual(self.successResultOf(self.mailbox().listMessages())[0].flags, frozenset({"\\Flagged"}))
        self.assertTagged(client.command(b"e EXPUNGE"), b"e", b"NO [NOPERM]")
        self.assertTagged(client.command(b"f UID EXPUNGE 1"), b"f", b"NO [NOPERM]")
        self.assertTagged(client.command(b"g STORE 1 (UNCHANGEDSINCE 100) FLAGS (\\Seen)"), b"g", b"NO [NOPERM]")
        out = client.command(b"h FETCH 1 BODY[]")
        self.assertIn(b"FLAGS (\\Flagged \\Seen \\Recent)", out)
        self.assertTagged(out, b"h", b"OK")

    def test_fetchWithoutSeenRight(self) -> None:
        """
        Without C{s}, FETCH BODY[] in a read-write shared mailbox leaves
        \\Seen alone.
        """
        self.deliver("one")
        self.grant("INBOX", "lrw")
        client = self.bob()
        out = client.command(b"a SELECT " + SHARED_INBOX)
        self.assertIn(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Draft \\*)]", out)
        self.assertTagged(out, b"a", b"OK [READ-WRITE]")
        self.assertTagged(client.command(b"b FETCH 1 BODY[]"), b"b", b"OK")
        self.assertEqual(self.successResultOf(self.mailbox().listMessages())[0].flags, frozenset())

    def test_expungeAndClose(self) -> None:
        """
        With C{t} and C{e} bob deletes; CLOSE without C{e} expunges nothing.
        """
        self.deliver("one")
        self.deliver("two")
        self.grant("INBOX", "lrst")
        client = self.bob()
        client.command(b"a SELECT " + SHARED_INBOX)
        self.assertTagged(client.command(b"b STORE 1 +FLAGS.SILENT (\\Deleted)"), b"b", b"OK")
        self.assertTagged(client.command(b"c CLOSE"), b"c", b"OK")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 2)
        self.grant("INBOX", "lrste")
        client.command(b"d SELECT " + SHARED_INBOX)
        out = client.command(b"e EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE", out)
        self.assertTagged(out, b"e", b"OK")
        self.assertEqual(len(self.successResultOf(self.mailbox().listMessages())), 1)

    def test_appendDropBox(self) -> None:
        """
        With C{i} alone bob may APPEND (a drop box) but not see the
        mailbox; flags he has no right to are dropped.  With C{l} alone
        APPEND is NOPERM.
        """
        self.grant("INBOX", "i")
        client = self.bob()
        data = message("dropped")
        out = client.send(b"a APPEND " + SHARED_INBOX + b" (\\Seen \\Flagged) {%d}\r\n" % len(data))
        self.assertIn(b"+ ", out)
        out = client.send(data + b"\r\n")
        self.assertTagged(out, b"a", b"OK [APPENDUID")
        infos = self.successResultOf(self.mailbox().listMessages())
        self.assertEqual([i.flags for i in infos], [frozenset()])
        self.assertTagged(client.command(b"b SELECT " + SHARED_INBOX), b"b", b"NO [NONEXISTENT]")
        self.grant("INBOX", "l")
        out = client.send(b"c APPEND " + SHARED_INBOX + b" {%d+}\r\n" % len(data) + data + b"\r\n")
        self.assertTagged(out, b"c", b"NO [NOPERM]")
        self.grant("INBOX", "")
        out = client.send(b"d APPEND " + SHARED_INBOX + b" {%d+}\r\n" % len(data) + data + b"\r\n")
        self.assertTagged(out, b"d", b"NO [TRYCREATE]")

    def test_copyAndMove(self) -> None:
        """
        COPY into a shared mailbox needs C{i} (flags without rights are
        dropped); MOVE out of one needs C{t} and C{e}.
        """
        self.grant("INBOX", "lri")
        bobInbox = self.successResultOf(self.bobAccount.getMailbox("INBOX"))
        self.successResultOf(bobInbox.append(BytesIO(message("bob's")), ["\\Seen", "$Work"]))
        client = self.bob()
        client.command(b"a SELECT INBOX")
        out = client.command(b"b COPY 1 " + SHARED_INBOX)
        self.assertTagged(out, b"b", b"OK [COPYUID")
        infos = self.successResultOf(self.mailbox().listMessages())
        self.assertEqual([i.flags for i in infos], [frozenset()])
        self.grant("INBOX", "lr")
        self.assertTagged(client.command(b"c COPY 1 " + SHARED_INBOX), b"c", b"NO [NOPERM]")
        self.assertTagged(client.command(b"d MOVE 1 " + SHARED_INBOX), b"d", b"NO [NOPERM]")
        self.grant("INBOX", "lrs")
        client.command(b"e SELECT " + SHARED_INBOX)
        self.assertTagged(client.command(b"f MOVE 1 INBOX"), b"f", b"NO [NOPERM]")
        self.assertTagged(client.command(b"g COPY 1 INBOX"), b"g", b"OK [COPYUID")
        self.grant("INBOX", "lrste")
        client.command(b"h SELECT " + SHARED_INBOX)
        out = client.command(b"i MOVE 1 INBOX")
        self.assertTagged(out, b"i", b"OK")
        self.assertEqual(self.successResultOf(self.mailbox().listMessages()), [])

    def test_createDeleteRename(self) -> None:
        """
        CREATE needs C{k} on the parent (the new mailbox inherits its
        ACL), DELETE and RENAME need C{x}; nothing is made at the top of
        another user's mailboxes.
        """
        self.successResultOf(self.account.createMailbox("Team"))
        self.grant("Team", "lr")
        client = self.bob()
        team = b'"shared/alice@example.test/Team'
        self.assertTagged(client.command(b"a CREATE " + team + b'/Sub"'), b"a", b"NO [NOPERM]")
        self.grant("Team", "lrk")
        self.assertTagged(client.command(b"b CREATE " + team + b'/Sub"'), b"b", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("Team/Sub")), {BOB: "lrk"})
        self.assertTagged(client.command(b'c CREATE "shared/alice@example.test/Top"'), b"c", b"NO [NOPERM]")
        self.assertTagged(client.command(b"d DELETE " + team + b'/Sub"'), b"d", b"NO [NOPERM]")
        self.successResultOf(self.account.setACL("Team/Sub", BOB, "lrkx"))
        self.assertTagged(client.command(b"e RENAME " + team + b'/Sub" ' + team + b'/Renamed"'), b"e", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("Team/Renamed")), {BOB: "lrkx"})
        self.assertTagged(client.command(b"f RENAME " + team + b'/Renamed" Mine'), b"f", b"NO [CANNOT]")
        self.assertTagged(client.command(b"g DELETE " + team + b'/Renamed"'), b"g", b"OK")
        names = [e.name for e in self.successResultOf(self.account.listMailboxes())]
        self.assertIn("Team", names)
        self.assertNotIn("Team/Renamed", names)
        self.assertNotIn("Team/Sub", names)

    def test_ownerCreateInherits(self) -> None:
        """
        A mailbox the owner makes in a shared folder is shared as the
        folder is (as Dovecot does).
        """
        self.successResultOf(self.account.createMailbox("Team"))
        self.grant("Team", "lr")
        client = self.login()
        self.assertTagged(client.command(b"a CREATE Team/Child"), b"a", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("Team/Child")), {BOB: "lr"})
        self.assertTagged(client.command(b"b CREATE Other"), b"b", b"OK")
        self.assertEqual(self.successResultOf(self.account.getACL("Other")), {})

    def test_subscribe(self) -> None:
        """
        SUBSCRIBE to a shared mailbox needs C{l}; LSUB and LIST
        (SUBSCRIBED) show it.
        """
        self.grant("INBOX", "w")
        client = self.bob()
        self.assertTagged(client.command(b"a SUBSCRIBE " + SHARED_INBOX), b"a", b"NO [NONEXISTENT]")
        self.grant("INBOX", "r")
        self.assertTagged(client.command(b"a SUBSCRIBE " + SHARED_INBOX), b"a", b"NO [NOPERM]")
        self.grant("INBOX", "lr")
        self.assertTagged(client.command(b"b SUBSCRIBE " + SHARED_INBOX), b"b", b"OK")
        self.assertIn(b'* LSUB () "/" ' + SHARED_INBOX, client.command(b'c LSUB "" "shared/*"'))
        out = client.command(b'd LIST (SUBSCRIBED) "" "*"')
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" ' + SHARED_INBOX, out)
        self.assertTagged(client.command(b"e UNSUBSCRIBE " + SHARED_INBOX), b"e", b"OK")

    def test_listStatus(self) -> None:
        """
        LIST-STATUS answers STATUS for shared mailboxes bob may read.
        """
        self.deliver("one")
        self.successResultOf(self.account.createMailbox("Seen"))
        self.grant("INBOX", "lr")
        self.grant("Seen", "l")
        client = self.bob()
        out = client.command(b'a LIST "" "shared/*" RETURN (STATUS (MESSAGES))')
        self.assertIn(b"* STATUS " + SHARED_INBOX + b" (MESSAGES 1)", out)
        self.assertIn(b'"shared/alice@example.test/Seen"', out)
        self.assertNotIn(b'* STATUS "shared/alice@example.test/Seen"', out)
        self.assertTagged(out, b"a", b"OK")

    def test_idleWokenByDelivery(self) -> None:
        """
        Bob IDLE in alice's shared INBOX hears of a delivery to it.
        """
        self.grant("INBOX", "lr")
        client = self.bob()
        out = client.command(b"a SELECT " + SHARED_INBOX)
        self.assertIn(b"* 0 EXISTS", out)
        self.assertIn(b"+ idling", client.command(b"b IDLE"))
        self.deliver("while idle")
        self.assertIn(b"* 1 EXISTS", client.take())
        self.assertTagged(client.command(b"DONE"), b"b", b"OK")

    def test_withdrawnShareClosesTheMailbox(self) -> None:
        """
        A share withdrawn while bob has the mailbox selected stops his
        reading it once the rights are looked up again (after
        L{RIGHTS_RECHECK} seconds): the mailbox is closed with
        C{* OK [CLOSED]} and what needs it is refused; before that, and
        for a share left alone, nothing changes.
        """
        self.deliver("one")
        self.grant("INBOX", "lrs")
        client = self.bob()
        self.assertTagged(client.command(b"a SELECT " + SHARED_INBOX), b"a", b"OK")
        self.successResultOf(self.account.setACL("INBOX", BOB, None))
        self.assertIn(b"* 1 FETCH", client.command(b"b FETCH 1 FLAGS"))
        self.clock.advance(RIGHTS_RECHECK)
        out = client.command(b"c FETCH 1 BODY[]")
        self.assertIn(b"* OK [CLOSED]", out)
        self.assertNotIn(b"one", out.split(b"* OK [CLOSED]")[1])
        self.assertTagged(out, b"c", b"BAD")
        self.assertTagged(client.command(b"d SELECT " + SHARED_INBOX), b"d", b"NO [NONEXISTENT]")

    def test_narrowedShareRefusesWrites(self) -> None:
        """
        Rights taken away (but C{r} kept) are refused from the next look
        on, while the mailbox stays selected; a share kept as it was is
        looked up again without a trace.
        """
        self.deliver("one")
        self.grant("INBOX", "lrsw")
        client = self.bob()
        client.command(b"a SELECT " + SHARED_INBOX)
        self.assertTagged(client.command(b"b STORE 1 +FLAGS (\\Flagged)"), b"b", b"OK")
        self.clock.advance(RIGHTS_RECHECK)
        out = client.command(b"c NOOP")
        self.assertEqual(out, b"c OK NOOP completed\r\n")
        self.grant("INBOX", "lr")
        self.clock.advance(RIGHTS_RECHECK)
        self.assertTagged(client.command(b"d STORE 1 -FLAGS (\\Flagged)"), b"d", b"NO [NOPERM]")
        self.assertIn(b"* 1 FETCH", client.command(b"e FETCH 1 FLAGS"))

    def test_flagsShared(self) -> None:
        """
        Flags are one set for everyone: bob's \\Seen is alice's too.
        """
        self.deliver("one")
        self.grant("INBOX", "lrs")
        client = self.bob()
        client.command(b"a SELECT " + SHARED_INBOX)
        client.command(b"b FETCH 1 BODY[]")
        alice = self.login()
        out = alice.command(b"c FETCH 1 FLAGS")
        self.assertTagged(out, b"c", b"BAD")
        alice.command(b"d EXAMINE INBOX")
        self.assertIn(b"FLAGS (\\Seen)", alice.command(b"e FETCH 1 FLAGS"))
