"""
Tests for L{mailplat.imap.parser}: framing, tokens and typed arguments.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailplat.imap.parser import (
    Arguments,
    Atom,
    BodySection,
    CommandFramer,
    CommandReady,
    FetchAttribute,
    LineTooLong,
    Literal,
    LiteralAnnounced,
    LiteralFile,
    LiteralSkipped,
    ParseError,
    QuotedString,
    flagsFromTokens,
    formatDateTime,
    isValidTag,
    parseDateTime,
    parseFetchAttributes,
    tokenize,
)


def tokens(line: bytes) -> list:
    return tokenize([line])


class TokenizeTests(SynchronousTestCase):
    """
    L{tokenize}.
    """

    def test_atoms(self) -> None:
        result = tokens(b"a1 NOOP")
        self.assertEqual(result, [b"a1", b"NOOP"])
        self.assertIsInstance(result[0], Atom)

    def test_quotedEscapes(self) -> None:
        result = tokens(b'a LOGIN "al\\"ice" "p\\\\w d"')
        self.assertEqual(result[2:], [b'al"ice', b"p\\w d"])
        self.assertIsInstance(result[2], QuotedString)

    def test_quotedEmpty(self) -> None:
        self.assertEqual(tokens(b'a LIST "" ""')[2:], [b"", b""])

    def test_quotedBadEscape(self) -> None:
        self.assertRaises(ParseError, tokens, b'a LOGIN "a\\b" x')

    def test_quotedUnterminated(self) -> None:
        self.assertRaises(ParseError, tokens, b'a LOGIN "abc')

    def test_nestedLists(self) -> None:
        result = tokens(b"a SEARCH (OR (SEEN) (FLAGGED UNSEEN)) ALL")
        self.assertEqual(result[2:], [[b"OR", [b"SEEN"], [b"FLAGGED", b"UNSEEN"]], b"ALL"])

    def test_emptyList(self) -> None:
        self.assertEqual(tokens(b"a X ()")[2:], [[]])

    def test_unbalanced(self) -> None:
        self.assertRaises(ParseError, tokens, b"a X (a (b)")
        self.assertRaises(ParseError, tokens, b"a X a)")

    def test_bodySectionAtom(self) -> None:
        result = tokens(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> FLAGS)")
        self.assertEqual(result[3], [b"BODY.PEEK[HEADER.FIELDS (From To)]<0.100>", b"FLAGS"])

    def test_flagsAndWildcards(self) -> None:
        self.assertEqual(tokens(b"a STORE 1:* +FLAGS (\\Seen $Junk)")[2:], [b"1:*", b"+FLAGS", [b"\\Seen", b"$Junk"]])
        self.assertEqual(tokens(b"a LIST \"\" %/*")[3], b"%/*")

    def test_literals(self) -> None:
        result = tokenize([b"a LOGIN ", Literal(b"al ice"), b" ", Literal(b"pw\r\n"), b""])
        self.assertEqual(result, [b"a", b"LOGIN", b"al ice", b"pw\r\n"])
        self.assertIsInstance(result[2], Literal)

    def test_literalInList(self) -> None:
        result = tokenize([b"a SEARCH (SUBJECT ", Literal(b"x y"), b")"])
        self.assertEqual(result[2], [b"SUBJECT", b"x y"])

    def test_literalFile(self) -> None:
        from io import BytesIO

        lf = LiteralFile(BytesIO(b"abc"), 3)
        result = tokenize([b"a APPEND INBOX ", lf, b""])
        self.assertIs(result[3], lf)

    def test_badCharacter(self) -> None:
        self.assertRaises(ParseError, tokens, b"a X {5")


class FramerTests(SynchronousTestCase):
    """
    L{CommandFramer}.
    """

    def test_simpleCommand(self) -> None:
        f = CommandFramer()
        f.feed(b"a1 NOOP\r\na2 CAPA")
        self.assertEqual(f.next(), CommandReady([b"a1 NOOP"]))
        self.assertIsNone(f.next())
        f.feed(b"BILITY\n")
        self.assertEqual(f.next(), CommandReady([b"a2 CAPABILITY"]))

    def test_literal(self) -> None:
        f = CommandFramer()
        f.feed(b"a LOGIN {5}\r\n")
        event = f.next()
        self.assertEqual(event, LiteralAnnounced(b"a", b"LOGIN", 5, False))
        f.acceptLiteral()
        self.assertIsNone(f.next())
        f.feed(b"al")
        self.assertIsNone(f.next())
        f.feed(b"ice {4}\r\n")
        self.assertEqual(f.next(), LiteralAnnounced(b"a", b"LOGIN", 4, False))
        f.acceptLiteral()
        f.feed(b"p\r\nx\r\n")
        event = f.next()
        self.assertEqual(event.parts, [b"a LOGIN ", b"alice", b" ", b"p\r\nx", b""])
        self.assertEqual(tokenize(event.parts), [b"a", b"LOGIN", b"alice", b"p\r\nx"])

    def test_literalToFile(self) -> None:
        f = CommandFramer(spoolMemory=10)
        f.feed(b"a APPEND INBOX {30}\r\n")
        event = f.next()
        self.assertEqual(event.command, b"APPEND")
        f.acceptLiteral(toFile=True)
        f.feed(b"x" * 20)
        self.assertIsNone(f.next())
        f.feed(b"y" * 10 + b"\r\n")
        event = f.next()
        lf = event.parts[1]
        self.assertIsInstance(lf, LiteralFile)
        self.assertEqual(lf.size, 30)
        self.assertEqual(lf.file.read(), b"x" * 20 + b"y" * 10)
        lf.close()

    def test_rejectedLiteral(self) -> None:
        """
        A refused synchronising literal ends the command: the next line is
        a fresh command.
        """
        f = CommandFramer()
        f.feed(b"a APPEND INBOX {999999}\r\nb NOOP\r\n")
        self.assertIsInstance(f.next(), LiteralAnnounced)
        f.rejectLiteral()
        self.assertEqual(f.next(), CommandReady([b"b NOOP"]))

    def test_rejectedNonSyncLiteral(self) -> None:
        """
        A refused LITERAL+ literal is read and dropped with the rest of its
        command, including further non-synchronising literals.
        """
        f = CommandFramer()
        f.feed(b"a APPEND INBOX {5+}\r\nhello {3+}\r\nabc\r\nb NOOP\r\n")
        event = f.next()
        self.assertTrue(event.nonSync)
        f.rejectLiteral()
        self.assertEqual(f.next(), LiteralSkipped(b"a"))
        self.assertEqual(f.next(), CommandReady([b"b NOOP"]))

    def test_lineTooLong(self) -> None:
        f = CommandFramer(maxLineLength=20)
        f.feed(b"tag1 LOGIN " + b"x" * 30)
        self.assertEqual(f.next(), LineTooLong(b"tag1"))
        f.feed(b"y" * 100)
        self.assertIsNone(f.next())
        self.assertEqual(f.buffered, 0)
        f.feed(b"zz\r\nb NOOP\r\n")
        self.assertEqual(f.next(), CommandReady([b"b NOOP"]))

    def test_lineTooLongWithinBuffer(self) -> None:
        """
        A long line that arrives whole with its end is refused too.
        """
        f = CommandFramer(maxLineLength=20)
        f.feed(b"t LOGIN " + b"x" * 30 + b"\r\nb NOOP\r\n")
        self.assertEqual(f.next(), LineTooLong(b"t"))
        self.assertEqual(f.next(), CommandReady([b"b NOOP"]))

    def test_lineTooLongNoTag(self) -> None:
        f = CommandFramer(maxLineLength=10)
        f.feed(b"x" * 30)
        self.assertEqual(f.next(), LineTooLong(None))

    def test_commandSizeLimit(self) -> None:
        f = CommandFramer(maxLineLength=20, maxCommandSize=30)
        self.assertTrue(f.fitsInMemory(30))
        f.feed(b"a LOGIN {10}\r\n")
        f.next()
        self.assertFalse(f.fitsInMemory(25))
        f.acceptLiteral()
        f.feed(b"0123456789 {10}\r\n")
        f.next()
        self.assertFalse(f.fitsInMemory(10))

    def test_nextLine(self) -> None:
        f = CommandFramer(maxLineLength=10)
        f.feed(b"DONE\r\n")
        self.assertEqual(f.nextLine(), b"DONE")
        self.assertIsNone(f.nextLine())
        f.feed(b"x" * 20)
        self.assertIsInstance(f.nextLine(), LineTooLong)
        f.feed(b"\r\nDONE\n")
        self.assertEqual(f.nextLine(), b"DONE")

    def test_bareLF(self) -> None:
        f = CommandFramer()
        f.feed(b"a NOOP\n")
        self.assertEqual(f.next(), CommandReady([b"a NOOP"]))


class ArgumentTests(SynchronousTestCase):
    """
    L{Arguments} and the helpers for typed arguments.
    """

    def test_astring(self) -> None:
        args = Arguments(tokens(b'INBOX "a b"'))
        self.assertEqual(args.astring(), b"INBOX")
        self.assertEqual(args.astring(), b"a b")
        args.end()
        self.assertRaises(ParseError, args.astring)

    def test_astringRejectsList(self) -> None:
        self.assertRaises(ParseError, Arguments(tokens(b"(a)")).astring)

    def test_end(self) -> None:
        self.assertRaises(ParseError, Arguments(tokens(b"x")).end)

    def test_sequenceSet(self) -> None:
        s = Arguments(tokens(b"1:3,5,7:*")).sequenceSet()
        self.assertEqual(list(s.numbers(8)), [1, 2, 3, 5, 7, 8])
        self.assertRaises(ParseError, Arguments(tokens(b"0:3")).sequenceSet)
        self.assertRaises(ParseError, Arguments(tokens(b"a")).sequenceSet)

    def test_flagList(self) -> None:
        self.assertEqual(Arguments(tokens(b"(\\Seen \\DELETED $Label1)")).flagList(), ["\\Seen", "\\DELETED", "$Label1"])
        self.assertRaises(ParseError, Arguments(tokens(b"(\\Recent)")).flagList)
        self.assertRaises(ParseError, Arguments(tokens(b"(\\Bogus)")).flagList)
        self.assertRaises(ParseError, Arguments(tokens(b'("x")')).flagList)
        self.assertEqual(flagsFromTokens([]), [])

    def test_dateTime(self) -> None:
        self.assertEqual(parseDateTime(b"17-Jul-1996 02:44:25 -0700"), 837596665.0)
        self.assertEqual(parseDateTime(b" 1-Jan-2000 00:00:00 +0000"), 946684800.0)
        for bad in [b"32-Jan-2000 00:00:00 +0000", b"1-Foo-2000 00:00:00 +0000", b"1-Jan-2000 25:00:00 +0000", b"yesterday"]:
            self.assertRaises(ParseError, parseDateTime, bad)

    def test_formatDateTime(self) -> None:
        self.assertEqual(formatDateTime(837596665.0), b'"17-Jul-1996 09:44:25 +0000"')

    def test_tags(self) -> None:
        self.assertTrue(isValidTag(b"a001"))
        self.assertFalse(isValidTag(b"a+1"))
        self.assertFalse(isValidTag(b"*"))
        self.assertFalse(isValidTag(b""))


class FetchAttributeTests(SynchronousTestCase):
    """
    L{parseFetchAttributes}.
    """

    def parse(self, text: bytes) -> list:
        return parseFetchAttributes(tokens(text))

    def test_macros(self) -> None:
        self.assertEqual([a.name for a in self.parse(b"FAST")], ["FLAGS", "INTERNALDATE", "RFC822.SIZE"])
        self.assertEqual([a.name for a in self.parse(b"all")], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"])
        self.assertEqual([a.name for a in self.parse(b"FULL")][-1], "BODY")

    def test_simple(self) -> None:
        self.assertEqual(self.parse(b"(UID flags BODYSTRUCTURE)"), [FetchAttribute("UID"), FetchAttribute("FLAGS"), FetchAttribute("BODYSTRUCTURE")])

    def test_body(self) -> None:
        [att] = self.parse(b"BODY[]")
        self.assertEqual(att, BodySection(False, (), "", (), None, b"BODY[]"))

    def test_peekPartial(self) -> None:
        [att] = self.parse(b"BODY.PEEK[1.2.TEXT]<10.20>")
        self.assertEqual(att, BodySection(True, (1, 2), "TEXT", (), (10, 20), b"BODY[1.2.TEXT]<10>"))

    def test_headerFields(self) -> None:
        [att] = self.parse(b"BODY[HEADER.FIELDS.NOT (From \"To\")]")
        self.assertEqual(att.kind, "HEADER.FIELDS.NOT")
        self.assertEqual(att.fields, ("From", "To"))
        self.assertEqual(att.responseName, b"BODY[HEADER.FIELDS.NOT (From To)]")

    def test_mime(self) -> None:
        [att] = self.parse(b"BODY[2.MIME]")
        self.assertEqual((att.part, att.kind), ((2,), "MIME"))
        self.assertRaises(ParseError, self.parse, b"BODY[MIME]")

    def test_rfc822(self) -> None:
        atts = self.parse(b"(RFC822 RFC822.HEADER RFC822.TEXT)")
        self.assertEqual([(a.peek, a.kind, a.responseName) for a in atts],
                         [(False, "", b"RFC822"), (True, "HEADER", b"RFC822.HEADER"), (False, "TEXT", b"RFC822.TEXT")])

    def test_invalid(self) -> None:
        for bad in [b"BOGUS", b"BODY[0]", b"BODY[1.0]", b"BODY[TEXT]<1.0>", b"BODY[HEADER.FIELDS]", b"()", b"(FLAGS (UID))", b"BODY[FOO]"]:
            self.assertRaises(ParseError, self.parse, bad)
        self.assertRaises(ParseError, parseFetchAttributes, tokens(b"FLAGS UID"))
