"""
Tests for COMPRESS=DEFLATE (RFC 4978) in L{mailplat.imap.server}: over a
StringTransport, and over a real loopback socket with a client that wraps
its stream in raw deflate.
"""

import socket
import zlib

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailplat.imap.server import IMAPFactory
from tests.test_imap_server import IMAPTestBase, message


class Deflate:
    """
    The client's side of a COMPRESS DEFLATE stream.
    """

    def __init__(self) -> None:
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.into = zlib.decompressobj(-15)

    def pack(self, data: bytes) -> bytes:
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def unpack(self, data: bytes) -> bytes:
        return self.into.decompress(data)


class CompressTests(IMAPTestBase):
    def test_advertisedAfterLogin(self) -> None:
        client = self.connect()
        self.assertNotIn(b"COMPRESS", client.greeting)
        out = client.command(b"L1 LOGIN alice@example.test secret")
        self.assertIn(b"COMPRESS=DEFLATE", out)

    def test_compress(self) -> None:
        """
        The tagged OK is sent in the clear, then both directions are raw
        deflate; a second COMPRESS is refused with COMPRESSIONACTIVE and
        the capability is no longer listed.
        """
        self.deliver(message("hello"))
        client = self.login()
        out = client.command(b"a COMPRESS DEFLATE")
        self.assertEqual(out, b"a OK DEFLATE active\r\n")
        z = Deflate()
        out = z.unpack(client.send(z.pack(b"b SELECT INBOX\r\n")))
        self.assertIn(b"* 1 EXISTS\r\n", out)
        self.assertIn(b"b OK [READ-WRITE]", out)
        out = z.unpack(client.send(z.pack(b"c FETCH 1 (BODY.PEEK[])\r\n")))
        self.assertIn(message("hello"), out)
        out = z.unpack(client.send(z.pack(b"d COMPRESS DEFLATE\r\ne CAPABILITY\r\n")))
        self.assertIn(b"d NO [COMPRESSIONACTIVE]", out)
        self.assertNotIn(b"COMPRESS=DEFLATE", out)
        self.assertIn(b"e OK", out)

    def test_pipelinedAfterCompress(self) -> None:
        """
        Compressed input that arrives with the COMPRESS command is inflated
        once compression starts.
        """
        client = self.login()
        z = Deflate()
        raw = client.send(b"a COMPRESS DEFLATE\r\n" + z.pack(b"b NOOP\r\n"))
        head, _, rest = raw.partition(b"a OK DEFLATE active\r\n")
        self.assertEqual(head, b"")
        self.assertIn(b"b OK NOOP completed", z.unpack(rest))

    def test_badMechanismAndState(self) -> None:
        client = self.connect()
        self.assertTagged(client.command(b"a COMPRESS DEFLATE"), b"a", b"BAD")
        self.login(client)
        self.assertTagged(client.command(b"b COMPRESS LZW"), b"b", b"BAD")
        self.assertTagged(client.command(b"c COMPRESS"), b"c", b"BAD")

    def test_corruptInput(self) -> None:
        client = self.login()
        client.command(b"a COMPRESS DEFLATE")
        client.send(b"\xff\xff\xff\xff garbage")
        self.assertTrue(client.transport.disconnecting)


class LoopbackCompressTests(TestCase):
    """
    COMPRESS over a real TCP connection on loopback, the client in a
    thread with a blocking socket.
    """

    def setUp(self) -> None:
        base = IMAPTestBase("setUp")
        base.setUp()
        factory = IMAPFactory(base.portal, "mail.example.test")
        self.base = base
        base.deliver(message("over the wire", b"x" * 300000 + b"\r\n"))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_realSocket(self) -> defer.Generator:
        port = self.port.getHost().port

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"a LOGIN alice@example.test secret\r\na COMPRESS DEFLATE\r\n")
                while not f.readline().startswith(b"a OK DEFLATE"):
                    pass
                z = Deflate()
                s.sendall(z.pack(b"b SELECT INBOX\r\nc FETCH 1 (BODY.PEEK[])\r\nd LOGOUT\r\n"))
                data = b""
                pending = f.read1(65536) if hasattr(f, "read1") else b""
                while pending:
                    data += z.unpack(pending)
                    pending = f.read1(65536)
                return data

        data = yield threads.deferToThread(client)
        self.assertIn(b"b OK [READ-WRITE]", data)
        self.assertIn(b"x" * 300000, data)
        self.assertIn(b"c OK FETCH completed", data)
        self.assertIn(b"d OK LOGOUT completed", data)
