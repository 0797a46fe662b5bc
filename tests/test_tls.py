"""
Tests for L{mailplat.tls}: the server TLS context source, self-signed
certificates, bad files, reloading, SNI and the protocol floor; and for the
C{mailplat cert selfsigned} admin command.
"""

import datetime
import io
import os
import shutil
from typing import List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailplat import tls
from mailplat.config import Config
from mailplat.errors import ConfigError
from mailplat.service import TLSReloadService


def names(certificate: x509.Certificate) -> List[str]:
    """
    The DNS names a certificate is for.
    """
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def makePair(directory: str, hostname: str) -> Tuple[str, str]:
    """
    A self-signed certificate and key for C{hostname} under C{directory}.
    """
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, hostname + ".crt")
    key = os.path.join(directory, hostname + ".key")
    tls.makeSelfSigned(hostname, cert, key)
    return cert, key


def handshake(server: SSL.Connection, serverName: Optional[bytes] = None,
              maxVersion: Optional[int] = None) -> SSL.Connection:
    """
    Run a TLS handshake between C{server} and a fresh client in memory.

    @return: the client connection, handshake done.
    @raise SSL.Error: the handshake failed.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if maxVersion is not None:
        context.set_min_proto_version(maxVersion)
        context.set_max_proto_version(maxVersion)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    client = SSL.Connection(context, None)
    if serverName is not None:
        client.set_tlsext_host_name(serverName)
    client.set_connect_state()
    server.set_accept_state()
    done = {"client": False, "server": False}
    for _ in range(50):
        for name, conn in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
        for source, sink in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                sink.bio_write(data)
        if all(done.values()):
            return client
    raise AssertionError("handshake did not finish")


def peerCertificate(client: SSL.Connection) -> x509.Certificate:
    cert = client.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    return cert


class SelfSignedTests(SynchronousTestCase):
    """
    The certificate made when none is configured.
    """

    def setUp(self) -> None:
        self.dataDir = self.mktemp()
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_createdOnceThenReused(self) -> None:
        """
        The first start makes a certificate and key for the host name in
        C{<dataDir>/tls/}, says so in the log, and keeps the key private;
        later starts reuse them untouched and say nothing.
        """
        cert, key = tls.selfSignedFiles(self.dataDir, "mail.example.test")
        self.assertEqual(os.path.dirname(cert), os.path.join(self.dataDir, "tls"))
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        certificate = tls.loadCertificates("c", cert)[0]
        self.assertEqual(names(certificate), ["mail.example.test"])
        made = [e for e in self.events if "self-signed" in e.get("log_format", "")]
        self.assertEqual(len(made), 1)
        self.assertEqual(made[0]["hostname"], "mail.example.test")
        with open(cert, "rb") as f:
            before = f.read()
        self.assertEqual(tls.selfSignedFiles(self.dataDir, "mail.example.test"), (cert, key))
        with open(cert, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(len([e for e in self.events if "self-signed" in e.get("log_format", "")]), 1)

    def test_otherHostname(self) -> None:
        """
        Another host name gets its own certificate.
        """
        cert1, _ = tls.selfSignedFiles(self.dataDir, "a.example.test")
        cert2, _ = tls.selfSignedFiles(self.dataDir, "b.example.test")
        self.assertNotEqual(cert1, cert2)
        self.assertEqual(names(tls.loadCertificates("c", cert2)[0]), ["b.example.test"])

    def test_brokenIsRemade(self) -> None:
        """
        A damaged or expiring self-signed pair is made again.
        """
        cert, key = tls.selfSignedFiles(self.dataDir, "mail.example.test")
        with open(key, "wb") as f:
            f.write(b"garbage")
        tls.selfSignedFiles(self.dataDir, "mail.example.test")
        tls.makeContext(cert, key)
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=tls.SELF_SIGNED_DAYS - 1)
        tls.makeSelfSigned("mail.example.test", cert, key, now=old)
        tls.selfSignedFiles(self.dataDir, "mail.example.test")
        certificate = tls.loadCertificates("c", cert)[0]
        self.assertGreater(certificate.not_valid_after_utc, datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=100))

    def test_forced(self) -> None:
        """
        C{force} makes a new one even when the old one is fine.
        """
        cert, _ = tls.selfSignedFiles(self.dataDir, "mail.example.test")
        first = tls.loadCertificates("c", cert)[0].serial_number
        tls.selfSignedFiles(self.dataDir, "mail.example.test", force=True)
        self.assertNotEqual(tls.loadCertificates("c", cert)[0].serial_number, first)

    def test_contextForConfig(self) -> None:
        """
        With no files configured the server serves the self-signed
        certificate.
        """
        source = tls.contextForConfig(self.dataDir, "mail.example.test", None, None)
        verifyObject(IOpenSSLServerConnectionCreator, source)
        client = handshake(source.serverConnectionForTLS(None))
        self.assertEqual(names(peerCertificate(client)), ["mail.example.test"])

    def test_unwritable(self) -> None:
        """
        A data directory that cannot hold the files is a ConfigError.
        """
        with open(self.dataDir, "w") as f:
            f.write("a file, not a directory")
        error = self.assertRaises(ConfigError, tls.selfSignedFiles, self.dataDir, "mail.example.test")
        self.assertIn("self-signed", str(error))


class BadFileTests(SynchronousTestCase):
    """
    Every problem with a configured file is one L{ConfigError} naming the
    file and what is wrong.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.cert, self.key = makePair(self.dir, "mail.example.test")

    def check(self, cert: str, key: str, *fragments: str) -> None:
        error = self.assertRaises(ConfigError, tls.ServerTLSContext, cert, key)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_missingCert(self) -> None:
        missing = os.path.join(self.dir, "nope.crt")
        self.check(missing, self.key, "tls.cert", missing, "not found")

    def test_missingKey(self) -> None:
        missing = os.path.join(self.dir, "nope.key")
        self.check(self.cert, missing, "tls.key", missing, "not found")

    def test_directory(self) -> None:
        self.check(self.dir, self.key, "tls.cert", "directory")

    def test_unreadable(self) -> None:
        if os.getuid() == 0:
            raise self.skipTest("root reads every file")
        os.chmod(self.key, 0)
        self.check(self.cert, self.key, "tls.key", "cannot read")

    def test_notPem(self) -> None:
        self.check(self.write("x.crt", b"hello"), self.key, "tls.cert", "no PEM certificate")
        self.check(self.cert, self.write("x.key", b"hello"), "tls.key", "no usable PEM private key")

    def test_keyInsteadOfCert(self) -> None:
        self.check(self.key, self.key, "tls.cert", "no PEM certificate")

    def test_mismatched(self) -> None:
        _, otherKey = makePair(os.path.join(self.dir, "other"), "other.example.test")
        self.check(self.cert, otherKey, "tls.key", otherKey, "does not match", self.cert)

    def test_encryptedKey(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.check(self.cert, self.write("enc.key", data), "tls.key", "encrypted")

    def test_sniFileNamed(self) -> None:
        """
        A bad SNI file is named with its host.
        """
        missing = os.path.join(self.dir, "nope.crt")
        error = self.assertRaises(
            ConfigError, tls.ServerTLSContext, self.cert, self.key, {"other.example.test": (missing, self.key)}
        )
        self.assertIn("tls.sni.other.example.test.cert", str(error))


class ContextTests(SynchronousTestCase):
    """
    The policy, SNI and reloading of L{tls.ServerTLSContext}.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.cert, self.key = makePair(self.dir, "mail.example.test")
        self.otherCert, self.otherKey = makePair(self.dir, "other.example.test")
        self.wildCert, self.wildKey = makePair(self.dir, "wild.example.test")
        self.source = tls.ServerTLSContext(
            self.cert, self.key,
            {"Other.Example.Test.": (self.otherCert, self.otherKey), "*.example.org": (self.wildCert, self.wildKey)},
        )

    def served(self, name: Optional[bytes]) -> List[str]:
        return names(peerCertificate(handshake(self.source.serverConnectionForTLS(None), name)))

    def test_sni(self) -> None:
        """
        The client's server name picks the certificate; an unknown name or
        none gets the default; wildcards match one label.
        """
        self.assertEqual(self.served(None), ["mail.example.test"])
        self.assertEqual(self.served(b"other.example.test"), ["other.example.test"])
        self.assertEqual(self.served(b"OTHER.example.test"), ["other.example.test"])
        self.assertEqual(self.served(b"unknown.example.test"), ["mail.example.test"])
        self.assertEqual(self.served(b"imap.example.org"), ["wild.example.test"])
        self.assertEqual(self.served(b"a.b.example.org"), ["mail.example.test"])

    def test_tls11Refused(self) -> None:
        """
        TLS 1.1 (and older) clients are refused; 1.2 and 1.3 work.
        """
        self.assertRaises(SSL.Error, handshake, self.source.serverConnectionForTLS(None), None, SSL.TLS1_1_VERSION)
        client = handshake(self.source.serverConnectionForTLS(None), None, SSL.TLS1_2_VERSION)
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        self.assertIn("GCM", client.get_cipher_name() or "")
        client = handshake(self.source.serverConnectionForTLS(None))
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")

    def test_chain(self) -> None:
        """
        Certificates after the first in the cert file are sent as its chain.
        """
        chained = os.path.join(self.dir, "chain.pem")
        with open(chained, "wb") as f:
            for path in (self.cert, self.otherCert):
                with open(path, "rb") as g:
                    f.write(g.read())
        source = tls.ServerTLSContext(chained, self.key)
        client = handshake(source.serverConnectionForTLS(None))
        chain = client.get_peer_cert_chain(as_cryptography=True)
        self.assertEqual([names(c) for c in chain], [["mail.example.test"], ["other.example.test"]])

    def test_reload(self) -> None:
        """
        L{tls.ServerTLSContext.reload} reads the files again: new handshakes
        get the new certificate from the same object, and a connection made
        before keeps working.
        """
        before = self.source.serverConnectionForTLS(None)
        shutil.copy(self.otherCert, self.cert)
        shutil.copy(self.otherKey, self.key)
        self.assertEqual(self.served(None), ["mail.example.test"])
        self.source.reload()
        self.assertEqual(self.served(None), ["other.example.test"])
        self.assertEqual(names(peerCertificate(handshake(before))), ["mail.example.test"])
        self.assertIsNot(self.source.getContext(), before.get_context())

    def test_reloadFailureKeepsOld(self) -> None:
        """
        A broken file on reload raises L{ConfigError} and the old
        certificates stay; the SIGHUP service logs it and goes on.
        """
        with open(self.key, "wb") as f:
            f.write(b"broken")
        old = self.source.getContext()
        self.assertRaises(ConfigError, self.source.reload)
        self.assertIs(self.source.getContext(), old)
        service = TLSReloadService(self.source)
        self.assertFalse(service.reload())
        self.assertEqual(self.served(None), ["mail.example.test"])
        shutil.copy(self.otherKey, self.key)
        shutil.copy(self.otherCert, self.cert)
        self.assertTrue(service.reload())
        self.assertEqual(self.served(None), ["other.example.test"])

    def test_sighupService(self) -> None:
        """
        The service installs a SIGHUP handler while running and puts the
        previous one back when stopped.
        """
        import signal

        previous = signal.getsignal(signal.SIGHUP)
        service = TLSReloadService(self.source)
        service.startService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGHUP), service._onSignal)
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class CertCommandTests(SynchronousTestCase):
    """
    C{mailplat cert selfsigned}.
    """

    def command(self, dataDir: str, *args: str) -> str:
        from mailplat.admin.cli import AdminOptions, run

        options = AdminOptions()
        options.parseOptions(["--data-dir", dataDir, "cert", "selfsigned", *args])
        out = io.StringIO()
        d = run(options, options.resolveConfig(), out)
        self.successResultOf(d)
        return out.getvalue()

    def test_selfsigned(self) -> None:
        """
        The command makes (or replaces) the certificate the server will use.
        """
        dataDir = self.mktemp()
        out = self.command(dataDir, "--hostname", "MX.Example.Test")
        cert, key = tls.selfSignedPaths(dataDir, "mx.example.test")
        self.assertIn(cert, out)
        serial = tls.loadCertificates("c", cert)[0].serial_number
        self.command(dataDir, "--hostname", "mx.example.test")
        self.assertNotEqual(tls.loadCertificates("c", cert)[0].serial_number, serial)
        source = tls.contextForConfig(dataDir, "mx.example.test", None, None)
        self.assertEqual(source.certPath, cert)

    def test_defaultHostname(self) -> None:
        dataDir = self.mktemp()
        self.command(dataDir)
        cert, _ = tls.selfSignedPaths(dataDir, Config().hostname)
        self.assertTrue(os.path.exists(cert))
