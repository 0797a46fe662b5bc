"""
Tests for L{mailplat.imap.structure}: ENVELOPE, BODY/BODYSTRUCTURE,
sections, decoded headers and bodies, broken input.
"""

import datetime
import time

from twisted.trial import unittest

from mailplat.imap.structure import decodeHeaderText, parseMessage


def crlf(text: str) -> bytes:
    """
    C{text} with its LF line ends turned into CRLF, as UTF-8.
    """
    return text.replace("\n", "\r\n").encode("utf-8")


SIMPLE = crlf(
    "From: Alice <alice@example.com>\n"
    "To: bob@example.org\n"
    "Subject: Hello\n"
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\n"
    "Message-ID: <123@example.com>\n"
    "\n"
    "Hi Bob,\n"
    "How are you?\n"
)

ALTERNATIVE = crlf(
    "From: a@b.example\n"
    "Subject: alt\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="b1"\n'
    "\n"
    "--b1\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "caf=C3=A9\n"
    "line two\n"
    "--b1\n"
    "Content-Type: text/html; charset=utf-8\n"
    "\n"
    "<p>caf&eacute;</p>\n"
    "--b1--\n"
)

MIXED = crlf(
    "From: Sender <s@example.com>\n"
    "To: r@example.com\n"
    "Subject: mixed\n"
    "Content-Type: multipart/mixed; boundary=outer\n"
    "\n"
    "This is the preamble.\n"
    "--outer\n"
    "\n"
    "plain body\n"
    "--outer\n"
    "Content-Type: message/rfc822\n"
    "Content-Description: forwarded\n"
    "\n"
    "From: Inner <inner@example.net>\n"
    "Subject: inner subject\n"
    "Content-Type: multipart/alternative; boundary=inner\n"
    "\n"
    "--inner\n"
    "Content-Type: text/plain\n"
    "\n"
    "inner text\n"
    "--inner\n"
    "Content-Type: text/html\n"
    "\n"
    "<b>inner</b>\n"
    "--inner--\n"
    "\n"
    "--outer\n"
    "Content-Type: application/pdf; name=doc.pdf\n"
    "Content-Disposition: attachment; filename=\"doc.pdf\"\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-ID: <part3@example.com>\n"
    "Content-Language: en, fr\n"
    "Content-Location: http://example.com/doc.pdf\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "\n"
    "JVBERi0xLjQK\n"
    "--outer--\n"
    "epilogue\n"
)


class EnvelopeTests(unittest.TestCase):
    """
    ENVELOPE (RFC 3501 7.4.2).
    """

    def test_simple(self) -> None:
        alice = b'(("Alice" NIL "alice" "example.com"))'
        self.assertEqual(
            parseMessage(SIMPLE).envelope(),
            b'("Mon, 7 Feb 1994 21:52:25 -0800" "Hello" '
            + alice + b" " + alice + b" " + alice
            + b' ((NIL NIL "bob" "example.org")) NIL NIL NIL "<123@example.com>")',
        )

    def test_allHeaders(self) -> None:
        msg = crlf(
            "Date: Tue, 1 Mar 2022 10:00:00 +0000\n"
            "Subject: all\n"
            "From: f@example.com\n"
            "Sender: Secretary <sec@example.com>\n"
            "Reply-To: \"List\" <list@example.com>\n"
            "To: t1@example.com, T Two <t2@example.com>\n"
            "Cc: c@example.com\n"
            "Bcc: b@example.com\n"
            "In-Reply-To: <parent@example.com>\n"
            "Message-ID: <id@example.com>\n"
            "\n"
        )
        self.assertEqual(
            parseMessage(msg).envelope(),
            b'("Tue, 1 Mar 2022 10:00:00 +0000" "all" ((NIL NIL "f" "example.com"))'
            b' (("Secretary" NIL "sec" "example.com")) (("List" NIL "list" "example.com"))'
            b' ((NIL NIL "t1" "example.com")("T Two" NIL "t2" "example.com"))'
            b' ((NIL NIL "c" "example.com")) ((NIL NIL "b" "example.com"))'
            b' "<parent@example.com>" "<id@example.com>")',
        )

    def test_missingHeaders(self) -> None:
        """
        Absent fields are NIL; a message without any header is all NIL.
        """
        self.assertEqual(
            parseMessage(b"\r\nbody\r\n").envelope(),
            b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
        )
        self.assertEqual(
            parseMessage(b"Subject: only\r\n\r\n").envelope(),
            b'(NIL "only" NIL NIL NIL NIL NIL NIL NIL NIL)',
        )

    def test_emptySenderDefaultsToFrom(self) -> None:
        msg = b"From: a@example.com\r\nSender:\r\nReply-To: \r\n\r\n"
        a = b'((NIL NIL "a" "example.com"))'
        self.assertEqual(
            parseMessage(msg).envelope(),
            b"(NIL NIL " + a + b" " + a + b" " + a + b" NIL NIL NIL NIL NIL)",
        )

    def test_groups(self) -> None:
        msg = crlf(
            "To: Friends: a@example.com, \"B, Person\" <b@example.com>;, c@example.com\n"
            "Cc: undisclosed-recipients:;\n"
            "\n"
        )
        self.assertEqual(
            parseMessage(msg).envelope(),
            b"(NIL NIL NIL NIL NIL"
            b' ((NIL NIL "Friends" NIL)(NIL NIL "a" "example.com")'
            b'("B, Person" NIL "b" "example.com")(NIL NIL NIL NIL)'
            b'(NIL NIL "c" "example.com"))'
            b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
            b" NIL NIL NIL)",
        )

    def test_rfc2047KeptEncoded(self) -> None:
        """
        Subjects and names stay as RFC 2047 text, unfolded.
        """
        msg = crlf(
            "Subject: =?koi8-r?B?8NLJ18XU?=\n"
            " =?utf-8?Q?caf=C3=A9?=\n"
            "From: =?iso-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\n"
            "\n"
        )
        env = parseMessage(msg).envelope()
        self.assertEqual(
            env,
            b'(NIL "=?koi8-r?B?8NLJ18XU?= =?utf-8?Q?caf=C3=A9?="'
            + b' (("=?iso-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))' * 3
            + b" NIL NIL NIL NIL NIL)",
        )

    def test_addressForms(self) -> None:
        """
        Comments as names, routes, quoted local parts, missing domains and
        domain literals.
        """
        msg = crlf(
            "To: joe@example.com (Joe Q. Public), <@r1.example,@r2.example:x@y.example>,"
            ' "john doe"@example.com, nodomain, Mary Smith <mary@[192.0.2.1]>\n'
            "\n"
        )
        self.assertEqual(
            parseMessage(msg).envelope(),
            b"(NIL NIL NIL NIL NIL"
            b' (("Joe Q. Public" NIL "joe" "example.com")'
            b'(NIL "@r1.example,@r2.example" "x" "y.example")'
            b'(NIL NIL "john doe" "example.com")'
            b'(NIL NIL "nodomain" "MISSING_DOMAIN")'
            b'("Mary Smith" NIL "mary" "[192.0.2.1]"))'
            b" NIL NIL NIL NIL)",
        )

    def test_quoting(self) -> None:
        """
        Quotes and backslashes are escaped; 8-bit values become literals.
        """
        msg = b'Subject: say "hi" \\o/\r\nFrom: \xc3\xa9t\xc3\xa9 <e@example.com>\r\n\r\n'
        env = parseMessage(msg).envelope()
        self.assertTrue(env.startswith(b'(NIL "say \\"hi\\" \\\\o/" (({5}\r\n\xc3\xa9t\xc3\xa9 NIL "e" "example.com"))'))


class BodyStructureTests(unittest.TestCase):
    """
    BODY and BODYSTRUCTURE (RFC 3501 7.4.2).
    """

    def test_simple(self) -> None:
        parsed = parseMessage(SIMPLE)
        self.assertEqual(
            parsed.bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 23 2)',
        )
        self.assertEqual(
            parsed.bodyStructure(True),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 23 2 NIL NIL NIL NIL)',
        )

    def test_alternative(self) -> None:
        parsed = parseMessage(ALTERNATIVE)
        self.assertEqual(
            parsed.bodyStructure(False),
            b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 19 1)'
            b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 18 0) "ALTERNATIVE")',
        )
        self.assertEqual(
            parsed.bodyStructure(True),
            b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 19 1 NIL NIL NIL NIL)'
            b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 18 0 NIL NIL NIL NIL)'
            b' "ALTERNATIVE" ("BOUNDARY" "b1") NIL NIL NIL)',
        )

    def test_mixedWithMessage(self) -> None:
        parsed = parseMessage(MIXED)
        innerEnvelope = (
            b'(NIL "inner subject" (("Inner" NIL "inner" "example.net"))'
            b' (("Inner" NIL "inner" "example.net")) (("Inner" NIL "inner" "example.net"))'
            b" NIL NIL NIL NIL NIL)"
        )
        # The encapsulated message: header 112 octets + body 110 octets.
        self.assertEqual(
            parsed.bodyStructure(True),
            b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
            b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" 222 ' + innerEnvelope
            + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
            b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 0 NIL NIL NIL NIL)'
            b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL) 13 NIL NIL NIL NIL)'
            b'("APPLICATION" "PDF" ("NAME" "doc.pdf") "<part3@example.com>" NIL "BASE64" 12'
            b' "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("FILENAME" "doc.pdf")) ("en" "fr")'
            b' "http://example.com/doc.pdf")'
            b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)',
        )
        self.assertEqual(
            parsed.bodyStructure(False),
            b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0)'
            b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" 222 ' + innerEnvelope
            + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0)'
            b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 0) "ALTERNATIVE") 13)'
            b'("APPLICATION" "PDF" ("NAME" "doc.pdf") "<part3@example.com>" NIL "BASE64" 12)'
            b' "MIXED")',
        )

    def test_sizesMatchSections(self) -> None:
        """
        Every size in BODYSTRUCTURE is the length of the part's body section.
        """
        parsed = parseMessage(MIXED)
        self.assertEqual(len(parsed.section((1,), "")), 10)
        self.assertEqual(len(parsed.section((2,), "")), 222)
        self.assertEqual(len(parsed.section((2, 1), "")), 10)
        self.assertEqual(len(parsed.section((2, 2), "")), 12)
        self.assertEqual(len(parsed.section((3,), "")), 12)

    def test_parameters(self) -> None:
        """
        Parameters keep their values; RFC 2231 continuations are merged;
        comments are ignored; a text part without charset gets us-ascii.
        """
        msg = crlf(
            "Content-Type: text/plain (comment); format=flowed;\n"
            "  title*0=\"Part\"; title*1=\" One\"; name*=utf-8''caf%C3%A9\n"
            "\n"
            "x\n"
        )
        self.assertEqual(
            parseMessage(msg).bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii" "FORMAT" "flowed" "TITLE" "Part One"'
            b' "NAME*" "utf-8\'\'caf%C3%A9") NIL NIL "7BIT" 3 1)',
        )

    def test_nonTextWithoutParameters(self) -> None:
        msg = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBO\r\n"
        self.assertEqual(
            parseMessage(msg).bodyStructure(True),
            b'("IMAGE" "PNG" NIL NIL NIL "BASE64" 6 NIL NIL NIL NIL)',
        )

    def test_digestDefault(self) -> None:
        """
        Parts of a multipart/digest default to message/rfc822.
        """
        msg = crlf(
            "Content-Type: multipart/digest; boundary=d\n"
            "\n"
            "--d\n"
            "\n"
            "Subject: one\n"
            "\n"
            "first\n"
            "--d--\n"
        )
        self.assertEqual(
            parseMessage(msg).bodyStructure(False),
            b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)'
            b' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 0) 2) "DIGEST")',
        )

    def test_topLevelMessageRFC822(self) -> None:
        msg = crlf("Content-Type: message/rfc822\n\nSubject: in\n\nbody\n")
        parsed = parseMessage(msg)
        self.assertEqual(
            parsed.bodyStructure(False),
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL)'
            b' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 6 1) 3)',
        )
        self.assertEqual(parsed.section((1,), "HEADER"), b"Subject: in\r\n\r\n")
        self.assertEqual(parsed.section((1, 1), ""), b"body\r\n")

    def test_lfOnly(self) -> None:
        """
        Bare LF line ends are counted as they are.
        """
        msg = b"Subject: x\n\na\nb\n"
        self.assertEqual(
            parseMessage(msg).bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 2)',
        )


class SectionTests(unittest.TestCase):
    """
    BODY[section] octets (RFC 3501 6.4.5).
    """

    def test_wholeMessage(self) -> None:
        parsed = parseMessage(SIMPLE)
        self.assertEqual(parsed.section((), ""), SIMPLE)
        header, body = SIMPLE.split(b"\r\n\r\n", 1)
        self.assertEqual(parsed.section((), "HEADER"), header + b"\r\n\r\n")
        self.assertEqual(parsed.section((), "TEXT"), body)
        self.assertEqual(parsed.section((), "MIME"), b"")

    def test_nonMultipartPartOne(self) -> None:
        """
        Part 1 of a non-multipart message is its body; 1.MIME its header.
        """
        parsed = parseMessage(SIMPLE)
        self.assertEqual(parsed.section((1,), ""), b"Hi Bob,\r\nHow are you?\r\n")
        self.assertEqual(parsed.section((1,), "MIME"), parsed.section((), "HEADER"))
        self.assertEqual(parsed.section((2,), ""), b"")
        # The implicit part 1 of a non-multipart message has no parts of
        # its own (what Dovecot answers too).
        self.assertEqual(parsed.section((1, 1), ""), b"")
        self.assertEqual(parsed.section((1,), "TEXT"), b"")

    def test_headerFields(self) -> None:
        parsed = parseMessage(SIMPLE)
        self.assertEqual(
            parsed.section((), "HEADER.FIELDS", ("SUBJECT", "to", "X-Missing")),
            b"To: bob@example.org\r\nSubject: Hello\r\n\r\n",
        )
        self.assertEqual(parsed.section((), "header.fields", ("X-Missing",)), b"\r\n")
        self.assertEqual(
            parsed.section((), "HEADER.FIELDS.NOT", ("From", "Date", "Message-ID")),
            b"To: bob@example.org\r\nSubject: Hello\r\n\r\n",
        )

    def test_headerFieldsKeepFolding(self) -> None:
        msg = b"Subject: a\r\n b\r\nX: 1\r\nsubject: again\r\n\r\n"
        self.assertEqual(
            parseMessage(msg).section((), "HEADER.FIELDS", ("Subject",)),
            b"Subject: a\r\n b\r\nsubject: again\r\n\r\n",
        )

    def test_multipartSections(self) -> None:
        parsed = parseMessage(ALTERNATIVE)
        self.assertEqual(parsed.section((1,), ""), b"caf=C3=A9\r\nline two")
        # A part of a multipart that is not itself multipart "only has a
        # part 1", itself (RFC 3501 6.4.5; Dovecot answers the same).
        self.assertEqual(parsed.section((1, 1), ""), parsed.section((1,), ""))
        self.assertEqual(parsed.section((1, 2), ""), b"")
        self.assertEqual(
            parsed.section((1,), "MIME"),
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        )
        self.assertEqual(parsed.section((2,), ""), b"<p>caf&eacute;</p>")
        self.assertEqual(parsed.section((3,), ""), b"")
        self.assertEqual(parsed.section((0,), ""), b"")
        self.assertEqual(parsed.section((1,), "HEADER"), b"")

    def test_nestedMessageSections(self) -> None:
        parsed = parseMessage(MIXED)
        self.assertEqual(parsed.section((1,), ""), b"plain body")
        self.assertEqual(parsed.section((1,), "MIME"), b"\r\n")
        self.assertEqual(
            parsed.section((2,), "MIME"),
            b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n",
        )
        inner = parsed.section((2,), "")
        self.assertTrue(inner.startswith(b"From: Inner"))
        self.assertTrue(inner.endswith(b"--inner--\r\n"))
        self.assertEqual(
            parsed.section((2,), "HEADER"),
            b"From: Inner <inner@example.net>\r\nSubject: inner subject\r\n"
            b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n",
        )
        self.assertEqual(
            parsed.section((2,), "HEADER.FIELDS", ("subject",)),
            b"Subject: inner subject\r\n\r\n",
        )
        self.assertEqual(
            parsed.section((2,), "HEADER.FIELDS.NOT", ("subject", "content-type")),
            b"From: Inner <inner@example.net>\r\n\r\n",
        )
        self.assertEqual(parsed.section((2,), "TEXT"), inner.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(parsed.section((2, 1), ""), b"inner text")
        self.assertEqual(parsed.section((2, 1), "MIME"), b"Content-Type: text/plain\r\n\r\n")
        self.assertEqual(parsed.section((2, 2), ""), b"<b>inner</b>")
        self.assertEqual(parsed.section((2, 3), ""), b"")
        # 2.1 is a text part inside a multipart: its part 1 is itself.
        self.assertEqual(parsed.section((2, 1, 1), ""), b"inner text")
        self.assertEqual(parsed.section((2, 1, 2), ""), b"")
        self.assertEqual(parsed.section((3,), ""), b"JVBERi0xLjQK")
        self.assertEqual(parsed.section((3,), "HEADER"), b"")
        self.assertEqual(parsed.section((4,), "MIME"), b"")

    def test_messageInsideNonMultipartMessage(self) -> None:
        """
        N.1 of an encapsulated non-multipart message is its body.
        """
        msg = crlf(
            "Content-Type: multipart/mixed; boundary=z\n"
            "\n"
            "--z\n"
            "Content-Type: message/rfc822\n"
            "\n"
            "Subject: inner\n"
            "\n"
            "inner body\n"
            "--z--\n"
        )
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((1, 1), ""), b"inner body")
        self.assertEqual(parsed.section((1, 1), "MIME"), b"Subject: inner\r\n\r\n")
        self.assertEqual(parsed.section((1,), "TEXT"), b"inner body")

    def test_emptyParts(self) -> None:
        """
        Adjacent delimiters give an empty part.
        """
        msg = crlf("Content-Type: multipart/mixed; boundary=q\n\n--q\n--q\n\nsecond\n--q--\n")
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((1,), ""), b"")
        self.assertEqual(parsed.section((1,), "MIME"), b"")
        self.assertEqual(parsed.section((2,), ""), b"second")
        self.assertEqual(
            parsed.bodyStructure(False),
            b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0)'
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 6 0) "MIXED")',
        )


class BrokenMessageTests(unittest.TestCase):
    """
    Broken input is answered, never raised on.
    """

    def test_noBlankLine(self) -> None:
        """
        A line that is not a header field starts the body.
        """
        msg = b"Subject: x\r\nThis is body text\r\nmore\r\n"
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((), "HEADER"), b"Subject: x\r\n")
        self.assertEqual(parsed.section((), "TEXT"), b"This is body text\r\nmore\r\n")
        self.assertEqual(
            parsed.bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 25 2)',
        )

    def test_headerOnly(self) -> None:
        for msg in [b"Subject: x\r\n", b"Subject: x", b"Subject: x\r\n\r\n"]:
            parsed = parseMessage(msg)
            self.assertEqual(parsed.section((), "TEXT"), b"")
            self.assertEqual(
                parsed.bodyStructure(False),
                b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0)',
            )
            self.assertEqual(parsed.envelope(), b'(NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)')
            self.assertEqual(parsed.section((), "HEADER.FIELDS", ("subject",)), b"Subject: x\r\n\r\n")

    def test_empty(self) -> None:
        parsed = parseMessage(b"")
        self.assertEqual(parsed.section((), ""), b"")
        self.assertEqual(parsed.envelope(), b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
        self.assertEqual(
            parsed.bodyStructure(True),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)',
        )

    def test_noBoundaryFound(self) -> None:
        """
        A multipart whose delimiters never appear shows one empty part.
        """
        msg = crlf("Content-Type: multipart/mixed; boundary=nothere\n\nno parts at all\n")
        parsed = parseMessage(msg)
        self.assertEqual(
            parsed.bodyStructure(False),
            b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0) "MIXED")',
        )
        self.assertEqual(parsed.section((1,), ""), b"")
        self.assertEqual(parsed.section((), "TEXT"), b"no parts at all\r\n")

    def test_noBoundaryParameter(self) -> None:
        msg = crlf("Content-Type: multipart/mixed\n\n--x\n\nbody\n--x--\n")
        self.assertEqual(
            parseMessage(msg).bodyStructure(True),
            b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
            b' "MIXED" NIL NIL NIL NIL)',
        )

    def test_missingCloseDelimiter(self) -> None:
        msg = crlf("Content-Type: multipart/mixed; boundary=m\n\n--m\n\nfirst\n--m\n\nlast\nline\n")
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((1,), ""), b"first")
        self.assertEqual(parsed.section((2,), ""), b"last\r\nline\r\n")

    def test_nestedMissingClose(self) -> None:
        """
        An inner multipart without its close delimiter ends at the outer
        delimiter.
        """
        msg = crlf(
            "Content-Type: multipart/mixed; boundary=outer\n"
            "\n"
            "--outer\n"
            "Content-Type: multipart/alternative; boundary=inner\n"
            "\n"
            "--inner\n"
            "\n"
            "a\n"
            "--outer\n"
            "\n"
            "b\n"
            "--outer--\n"
        )
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((1, 1), ""), b"a")
        self.assertEqual(parsed.section((2,), ""), b"b")

    def test_boundaryWithTrailingGarbage(self) -> None:
        """
        Only white space may follow a delimiter; transport padding is fine.
        """
        msg = crlf("Content-Type: multipart/mixed; boundary=g\n\n--g  \n\none\n--gx\n--g--\n")
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((1,), ""), b"one\r\n--gx")

    def test_eightBitHeaders(self) -> None:
        msg = b"Subject: caf\xe9 \xff\xfe\r\nFrom: \xe9 <a@b.example>\r\nX-\xe9: bad name\r\n\r\nbody\r\n"
        parsed = parseMessage(msg)
        self.assertEqual(parsed.headerValues("subject"), ["caf\ufffd \ufffd\ufffd"])
        self.assertIn(b"{7}\r\ncaf\xe9 \xff\xfe", parsed.envelope())
        parsed.bodyStructure(True)
        # "X-\xe9" is not a field name: the body starts there.
        self.assertEqual(parsed.section((), "TEXT"), b"X-\xe9: bad name\r\n\r\nbody\r\n")

    def test_hugeSingleLine(self) -> None:
        body = b"a" * (20 * 1024 * 1024)
        msg = b"Subject: big\r\n\r\n" + body
        start = time.monotonic()
        parsed = parseMessage(msg)
        self.assertEqual(
            parsed.bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" %d 0)' % (len(body),),
        )
        self.assertEqual(len(parsed.section((), "TEXT")), len(body))
        self.assertTrue(parsed.bodyContains("aaa"))
        self.assertLess(time.monotonic() - start, 10)

    def test_hugeHeaderLine(self) -> None:
        msg = b"Subject: " + b"x" * 100000 + b"\r\n\r\nbody"
        parsed = parseMessage(msg)
        self.assertEqual(parsed.section((), "TEXT"), b"body")
        self.assertTrue(parsed.envelope().startswith(b"(NIL {100000}\r\n"))

    def test_deepNesting(self) -> None:
        depth = 300
        parts = []
        for level in range(depth):
            parts.append(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level))
        msg = b"".join(parts) + b"\r\nleaf\r\n"
        parsed = parseMessage(msg)
        self.assertTrue(parsed.bodyStructure(True).startswith(b"(((("))
        self.assertEqual(parsed.section((1,) * 5, "MIME"), b"Content-Type: multipart/mixed; boundary=b5\r\n\r\n")

    def test_manyParts(self) -> None:
        msg = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + b"--p\r\n\r\nx\r\n" * 20000 + b"--p--\r\n"
        parsed = parseMessage(msg)
        structure = parsed.bodyStructure(False)
        self.assertEqual(structure.count(b'"TEXT" "PLAIN"'), 10000)

    def test_badContentType(self) -> None:
        msg = b'Content-Type: garbage\r\nContent-Transfer-Encoding:\r\n\r\nx'
        self.assertEqual(
            parseMessage(msg).bodyStructure(False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 1 0)',
        )


class DecodedTextTests(unittest.TestCase):
    """
    headerValues, sentDate, bodyContains, textContains.
    """

    def test_decodeHeaderText(self) -> None:
        self.assertEqual(decodeHeaderText("=?koi8-r?B?8NLJ18XU?="), "Привет")
        self.assertEqual(decodeHeaderText("=?utf-8?Q?caf=C3=A9_au_lait?="), "café au lait")
        self.assertEqual(decodeHeaderText("=?utf-8?q?a?= =?utf-8?q?b?= c"), "ab c")
        # A character split across two words.
        self.assertEqual(decodeHeaderText("=?utf-8?Q?caf=C3?= =?utf-8?Q?=A9?="), "café")
        self.assertEqual(decodeHeaderText("=?x-unknown?Q?abc?="), "=?x-unknown?Q?abc?=")
        self.assertEqual(decodeHeaderText("=?utf-8*en?Q?hi?="), "hi")
        self.assertEqual(decodeHeaderText("=?utf-8?B?w6k?="), "é")

    def test_headerValues(self) -> None:
        msg = crlf(
            "Subject: =?windows-1251?B?z/Do4uXy?=\n"
            "  folded\n"
            "X-Many: one\n"
            "x-many: two\n"
            "\n"
        )
        parsed = parseMessage(msg)
        self.assertEqual(parsed.headerValues("SUBJECT"), ["Привет  folded"])
        self.assertEqual(parsed.headerValues("x-many"), ["one", "two"])
        self.assertEqual(parsed.headerValues("missing"), [])

    def test_sentDate(self) -> None:
        def sent(value: str) -> "datetime.date | None":
            return parseMessage(("Date: " + value + "\r\n\r\n").encode()).sentDate()

        self.assertEqual(sent("Mon, 7 Feb 1994 21:52:25 -0800"), datetime.date(1994, 2, 7))
        self.assertEqual(sent("7 Feb 1994 23:59:59 +1400"), datetime.date(1994, 2, 7))
        self.assertEqual(sent("Tue, 1 Mar 22 10:00:00 GMT"), datetime.date(2022, 3, 1))
        self.assertIsNone(sent("not a date"))
        self.assertIsNone(sent("31 Feb 2020 10:00:00 +0000"))
        self.assertIsNone(parseMessage(b"Subject: x\r\n\r\n").sentDate())

    def test_bodyContains(self) -> None:
        parsed = parseMessage(ALTERNATIVE)
        self.assertTrue(parsed.bodyContains("CAFÉ"))
        self.assertTrue(parsed.bodyContains("eacute"))
        self.assertFalse(parsed.bodyContains("=C3"))
        self.assertFalse(parsed.bodyContains("alt"))

    def test_bodyBase64Charset(self) -> None:
        import base64

        text = "Здравствуйте, мир".encode("windows-1251")
        msg = (
            b"Content-Type: text/plain; charset=windows-1251\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(text).replace(b"\n", b"\r\n")
        )
        parsed = parseMessage(msg)
        self.assertTrue(parsed.bodyContains("мир"))
        self.assertFalse(parsed.bodyContains("Hello"))

    def test_nonTextSkipped(self) -> None:
        parsed = parseMessage(MIXED)
        self.assertTrue(parsed.bodyContains("plain body"))
        self.assertTrue(parsed.bodyContains("INNER TEXT"))
        self.assertFalse(parsed.bodyContains("JVBER"))
        self.assertFalse(parsed.bodyContains("preamble"))

    def test_textContains(self) -> None:
        parsed = parseMessage(MIXED)
        self.assertTrue(parsed.textContains("mixed"))
        self.assertTrue(parsed.textContains("s@example.com"))
        self.assertTrue(parsed.textContains("plain BODY"))
        self.assertFalse(parsed.textContains("nowhere"))


class HeaderOnlyTests(unittest.TestCase):
    """
    L{headerEnd} and L{fieldValues} read a header as L{parseMessage}
    does, from the header block alone.
    """

    PIECES = [
        b"From: a@b\r\n", b"from : x\r\n", b"Subject: =?utf-8?q?caf=C3=A9?=\r\n", b" continued\r\n", b"\tmore\r\n",
        b"\r\n", b"\n", b"X-Bad line\r\n", b"To:\r\n", b"Subject:a\nb\n", b"body text\r\n", b"\r", b":x\r\n",
        b"Cc: a, b\r\n", b"SUBJECT:  Two  \r\n", b"x" * 1001 + b": y\r\n", b"y" * 999 + b": z\r\n",
        b"z" * 998 + b"  : w\n", b"From:\xff\xfe\r\n", b"Received: from x\r\n by y\r\n", b" leading\r\n",
        b"Subject\t: tab\r\n", b"Sub ject: no\r\n", b"From: q", b"\x00x: y\n",
    ]
    NAMES = ["from", "subject", "to", "cc", "received", "x-bad", "", "sub ject", "x" * 1001, "y" * 999, "caf\xe9"]

    def test_sameAsWholeParse(self) -> None:
        """
        On messages made of well- and ill-formed header lines, the values
        of every field from the header block are those of the whole
        parse, and a prefix of the message gives either "read more" (-1)
        or the same end.
        """
        import random

        from mailplat.imap.structure import fieldValues, headerEnd

        rng = random.Random(7)
        for trial in range(1500):
            data = b"".join(rng.choice(self.PIECES) for _ in range(rng.randint(0, 8)))
            parsed = parseMessage(data)
            end = headerEnd(data, True)
            for name in self.NAMES:
                self.assertEqual(fieldValues(data[:end], name), parsed.headerValues(name), (data, name))
            for cut in range(len(data) + 1):
                self.assertIn(headerEnd(data[:cut], False), (-1, end), (data, cut))

    def test_headerEnd(self) -> None:
        """
        The header ends before the blank line, or before the first line
        that is not part of a field; without the rest of the message a
        header that may go on asks for more.
        """
        from mailplat.imap.structure import headerEnd

        self.assertEqual(headerEnd(SIMPLE, False), SIMPLE.index(b"\r\n\r\n") + 2)
        self.assertEqual(headerEnd(b"A: b\r\nnot a field\r\nC: d\r\n\r\n", False), 6)
        self.assertEqual(headerEnd(b"A: b\r\n", False), -1)
        self.assertEqual(headerEnd(b"A: b\r\n", True), 6)
        self.assertEqual(headerEnd(b"A: b\r\nC", False), -1)

    def test_fieldLineLimits(self) -> None:
        """
        A field's colon must be within the first 1,001 octets of its line
        (blanks before it allowed), its name printable without a colon; a
        line that is not a field ends the header, and its body starts
        there.
        """
        def header(data: bytes) -> bytes:
            return parseMessage(data).section((), "HEADER")

        ok = b"y" * 999 + b": z\r\n"
        self.assertEqual(parseMessage(ok + b"\r\nb").headerValues("y" * 999), ["z"])
        blanks = b"z" * 998 + b"  : w\r\n"
        self.assertEqual(parseMessage(blanks).headerValues("z" * 998), ["w"])
        tooFar = b"z" * 998 + b"   : w\r\n"
        self.assertEqual(header(b"A: b\r\n" + tooFar + b"C: d\r\n"), b"A: b\r\n")
        self.assertEqual(header(b" leading\r\nA: b\r\n\r\nx"), b"")
        self.assertEqual(header(b"A: b\r\n cont\r\n\r\nx"), b"A: b\r\n cont\r\n\r\n")
        self.assertEqual(parseMessage(b"A: b\r\n cont\r\n\r\nx").headerValues("a"), ["b cont"])
        self.assertEqual(header(b"A: b\r\nB c: d\r\n\r\n"), b"A: b\r\n")
        self.assertEqual(header(b"A : b\r\n\n"), b"A : b\r\n\n")
