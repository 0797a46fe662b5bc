"""
The server side of TLS for every listener: one L{ServerTLSContext} holds
the certificate (with its chain) and key read from PEM files, optional
extra certificates chosen by the client's server name (SNI), and makes the
pyOpenSSL contexts that STARTTLS, STLS and the implicit-TLS listeners use.

Policy: TLS 1.2 or newer, forward-secret AEAD cipher suites only (Mozilla's
"intermediate" list), no compression, no renegotiation.

With no certificate configured, L{selfSignedFiles} makes a self-signed one
for the host name in C{<dataDir>/tls/} on first start and reuses it after.

L{ServerTLSContext.reload} reads the files again (the server calls it on
SIGHUP).  The object handed to listeners stays the same; new handshakes get
the new contexts, established connections keep theirs.
"""

import datetime
import ipaddress
import os
import tempfile
from typing import Dict, List, Mapping, Optional, Tuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.errors import ConfigError

log = Logger()

#: Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are always on).
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

#: How long a generated self-signed certificate is valid.
SELF_SIGNED_DAYS = 825

#: A self-signed certificate this close to its end is made again.
SELF_SIGNED_RENEW = datetime.timedelta(days=30)


def _readPem(label: str, path: str) -> bytes:
    """
    The bytes of a PEM file, or a L{ConfigError} naming it.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{label} {path!r}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{label} {path!r}: is a directory, not a PEM file") from None
    except OSError as e:
        raise ConfigError(f"{label} {path!r}: cannot read it ({e.strerror})") from None


def loadCertificates(label: str, path: str) -> List[x509.Certificate]:
    """
    The certificates of a PEM file: the server's own first, then its chain.

    @param label: what to call the file in errors (C{"tls.cert"}).
    @raise ConfigError: missing, unreadable, or without a PEM certificate.
    """
    data = _readPem(label, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{label} {path!r}: no PEM certificate in it (expected '-----BEGIN CERTIFICATE-----')")
    return certificates


def loadKey(label: str, path: str) -> PrivateKeyTypes:
    """
    The private key of a PEM file (unencrypted).

    @raise ConfigError: missing, unreadable, encrypted or not a key.
    """
    data = _readPem(label, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{label} {path!r}: the key is encrypted; give an unencrypted PEM key (readable only by the server)") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{label} {path!r}: no usable PEM private key in it ({e.__class__.__name__})") from None


def _publicBytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def makeContext(certPath: str, keyPath: str, certLabel: str = "tls.cert", keyLabel: str = "tls.key") -> SSL.Context:
    """
    A server context for one certificate (with its chain) and key.

    @raise ConfigError: a file is missing, unreadable or not PEM, or the key
        does not belong to the certificate.
    """
    certificates = loadCertificates(certLabel, certPath)
    key = loadKey(keyLabel, keyPath)
    if _publicBytes(certificates[0].public_key()) != _publicBytes(key.public_key()):
        raise ConfigError(f"{keyLabel} {keyPath!r}: this key does not match the certificate in {certPath!r}")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_SINGLE_ECDH_USE | SSL.OP_SINGLE_DH_USE
    options |= getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    context.set_options(options)
    context.set_cipher_list(CIPHERS)
    context.set_session_id(b"mailplat")
    try:
        context.use_certificate(certificates[0])
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except (SSL.Error, crypto.Error, TypeError, ValueError) as e:
        raise ConfigError(f"{certLabel} {certPath!r}: OpenSSL cannot use this certificate and key ({e})") from None
    return context


def _hostnameName(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def makeSelfSigned(hostname: str, certPath: str, keyPath: str, now: Optional[datetime.datetime] = None) -> None:
    """
    Write a new self-signed certificate for C{hostname} and its RSA key
    (mode 0600), each atomically (written to a temporary file, synced,
    renamed), the key first.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([_hostnameName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _writeAtomically(keyPath, keyBytes, 0o600)
    _writeAtomically(certPath, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _writeAtomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tls.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def selfSignedPaths(dataDir: str, hostname: str) -> Tuple[str, str]:
    """
    Where the self-signed certificate and key for C{hostname} are kept:
    C{<dataDir>/tls/<hostname>-selfsigned.crt} and C{.key}.
    """
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in hostname) or "localhost"
    base = os.path.join(dataDir, "tls", f"{safe}-selfsigned")
    return base + ".crt", base + ".key"


def _usableSelfSigned(certPath: str, keyPath: str, hostname: str, now: datetime.datetime) -> bool:
    """
    Whether the self-signed pair on disk can be reused: both files readable,
    matching, for C{hostname} and not about to expire.
    """
    if not (os.path.exists(certPath) and os.path.exists(keyPath)):
        return False
    try:
        certificate = loadCertificates("self-signed certificate", certPath)[0]
        key = loadKey("self-signed key", keyPath)
    except ConfigError:
        return False
    if _publicBytes(certificate.public_key()) != _publicBytes(key.public_key()):
        return False
    if certificate.not_valid_after_utc - SELF_SIGNED_RENEW < now:
        return False
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return _hostnameName(hostname) in list(names)


def selfSignedFiles(dataDir: str, hostname: str, force: bool = False) -> Tuple[str, str]:
    """
    The self-signed certificate and key for C{hostname} in C{dataDir}:
    made (and logged) when missing, broken, for another name, expiring, or
    when C{force} is set; reused otherwise.

    @return: the certificate's and the key's paths.
    @raise ConfigError: the files cannot be written.
    """
    certPath, keyPath = selfSignedPaths(dataDir, hostname)
    now = datetime.datetime.now(datetime.timezone.utc)
    if not force and _usableSelfSigned(certPath, keyPath, hostname, now):
        return certPath, keyPath
    try:
        makeSelfSigned(hostname, certPath, keyPath, now)
    except OSError as e:
        raise ConfigError(f"cannot write a self-signed certificate to {os.path.dirname(certPath)!r} ({e.strerror})") from None
    log.info(
        "No TLS certificate configured: made a self-signed certificate for {hostname} in {cert} "
        "(clients will not trust it; set tls.cert and tls.key for a real one)",
        hostname=hostname, cert=certPath,
    )
    return certPath, keyPath


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSContext:
    """
    The TLS configuration every listener shares.  Hand this one object to
    L{twisted.protocols.tls.TLSMemoryBIOFactory} and to
    C{transport.startTLS}: it gives each new handshake the contexts loaded
    last, so L{reload} takes effect without a restart and without touching
    open connections.

    @ivar certPath: the default certificate (chain after it), PEM.
    @ivar keyPath: its key, PEM.
    @ivar sni: server name (lower case; C{*.example.test} matches one
        label) to C{(certPath, keyPath)}.
    """

    def __init__(self, certPath: str, keyPath: str, sni: Optional[Mapping[str, Tuple[str, str]]] = None,
                 where: str = "tls") -> None:
        """
        Load every file now.

        @param where: prefix of error messages (the config file and section).
        @raise ConfigError: a file is missing, unreadable, not PEM, or a key
            does not match its certificate.
        """
        self.certPath = certPath
        self.keyPath = keyPath
        self.sni: Dict[str, Tuple[str, str]] = {name.lower().rstrip("."): paths for name, paths in (sni or {}).items()}
        self._where = where
        self._context, self._sniContexts = self._load()

    def _load(self) -> Tuple[SSL.Context, Dict[str, SSL.Context]]:
        w = self._where
        default = makeContext(self.certPath, self.keyPath, f"{w}.cert", f"{w}.key")
        contexts = {
            name: makeContext(cert, key, f"{w}.sni.{name}.cert", f"{w}.sni.{name}.key")
            for name, (cert, key) in self.sni.items()
        }
        for context in [default, *contexts.values()]:
            context.set_tlsext_servername_callback(self._serverName)
        return default, contexts

    def reload(self) -> None:
        """
        Read every file again.  On success new handshakes use the new
        certificates; on failure the old ones stay in use.

        @raise ConfigError: as for the constructor.
        """
        self._context, self._sniContexts = self._load()

    def _serverName(self, connection: SSL.Connection) -> None:
        """
        The SNI callback: switch to the certificate of the name the client
        asked for, when there is one (else keep the default).
        """
        name = connection.get_servername()
        if not name:
            return
        host = name.decode("ascii", "replace").lower().rstrip(".")
        context = self._sniContexts.get(host)
        if context is None and "." in host:
            context = self._sniContexts.get("*." + host.split(".", 1)[1])
        if context is not None:
            connection.set_context(context)

    def getContext(self) -> SSL.Context:
        """
        The default context, for APIs that want an old-style context factory.
        """
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        See L{IOpenSSLServerConnectionCreator}: a connection on the current
        default context (SNI may switch it during the handshake).
        """
        return SSL.Connection(self._context, None)


def contextForConfig(dataDir: str, hostname: str, cert: Optional[str], key: Optional[str],
                     sni: Optional[Mapping[str, Tuple[str, str]]] = None, where: str = "tls") -> ServerTLSContext:
    """
    The server's L{ServerTLSContext}: the configured files, or a self-signed
    certificate for C{hostname} in C{dataDir} when none are configured.

    @raise ConfigError: as L{ServerTLSContext} and L{selfSignedFiles}.
    """
    if not cert:
        cert, key = selfSignedFiles(dataDir, hostname)
    assert key is not None
    return ServerTLSContext(cert, key, sni, where)
