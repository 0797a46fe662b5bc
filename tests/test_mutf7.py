"""
Tests for L{mailplat.mutf7}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailplat.mutf7 import MUTF7Error, decode, encode


class RoundTripTests(SynchronousTestCase):
    """
    Encoding then decoding gives the name back, with the RFC 3501 forms.
    """

    cases = [
        ("INBOX", b"INBOX"),
        ("", b""),
        ("&", b"&-"),
        ("a&b&&c", b"a&-b&-&-c"),
        ("Entw\u00fcrfe", b"Entw&APw-rfe"),
        ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("\u65e5\u672c\u8a9e", b"&ZeVnLIqe-"),
        ("\U0001f600x", b"&2D3eAA-x"),
        ("Sent Items", b"Sent Items"),
        ("\u00e4&\u00f6", b"&AOQ-&-&APY-"),
    ]

    def test_encode(self) -> None:
        for text, wire in self.cases:
            self.assertEqual(encode(text), wire, text)

    def test_decode(self) -> None:
        for text, wire in self.cases:
            self.assertEqual(decode(wire), text, wire)

    def test_roundTripMany(self) -> None:
        for text in ["a\u00e9b", "\u00e9", "x/\u00e9/y", "&\u00e9&", "\u20ac\u20ac\u20ac\u20ac", "\x7e\x20"]:
            self.assertEqual(decode(encode(text)), text)

    def test_controlCharactersEncoded(self) -> None:
        """
        Characters outside printable ASCII (a TAB) are base64-encoded.
        """
        self.assertEqual(encode("a\tb"), b"a&AAk-b")
        self.assertEqual(decode(b"a&AAk-b"), "a\tb")


class InvalidTests(SynchronousTestCase):
    """
    Every malformed or non-canonical form is refused.
    """

    def assertInvalid(self, wire: bytes) -> None:
        self.assertRaises(MUTF7Error, decode, wire)

    def test_unterminated(self) -> None:
        self.assertInvalid(b"&")
        self.assertInvalid(b"abc&U,BTFw")

    def test_eightBit(self) -> None:
        self.assertInvalid("Entw\u00fcrfe".encode("utf-8"))

    def test_control(self) -> None:
        self.assertInvalid(b"a\x01b")

    def test_badBase64(self) -> None:
        self.assertInvalid(b"&!!-")
        self.assertInvalid(b"&A-")
        self.assertInvalid(b"&U/BTFw-")

    def test_encodedPrintable(self) -> None:
        self.assertInvalid(b"&AGE-")

    def test_adjacentSections(self) -> None:
        self.assertInvalid(b"&U,A-&U,A-")

    def test_nonZeroPadding(self) -> None:
        self.assertInvalid(b"&APx-")  # canonical is &APw-

    def test_oddOctets(self) -> None:
        self.assertInvalid(b"&AAAA-")

    def test_loneSurrogate(self) -> None:
        self.assertInvalid(b"&2D3-")

    def test_str(self) -> None:
        self.assertEqual(decode("INBOX"), "INBOX")  # type: ignore[arg-type]
        self.assertInvalid("\u00e4")  # type: ignore[arg-type]
