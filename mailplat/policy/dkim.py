"""
DKIM (RFC 6376): verify every C{DKIM-Signature} of incoming mail, sign mail
of authenticated clients, and make keys.

Verification uses dkimpy.  dkimpy asks DNS synchronously through a
C{dnsfunc(name, timeout=...)}; we give it one that only answers from a
dictionary: the selector TXT records (C{<s>._domainkey.<d>}) of every
signature are first fetched asynchronously with our C{twisted.names}
resolver, then the cryptography runs in the reactor's thread pool, so the
reactor never waits on DNS or RSA.

Signing keys live in C{<dataDir>/dkim/<domain>.<selector>.key} (PKCS#1 PEM,
mode 0600), made by L{keygen} (C{mailplat dkim keygen DOMAIN}).
"""

import base64
import os
import re
from typing import Any, Dict, Generator, List, Optional, Tuple

import dkim as _dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.util import parse_tag_value
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.names import dns

from mailplat.policy import DNSTempError, queryRecords, txtStrings

PASS = "pass"
FAIL = "fail"
NEUTRAL = "neutral"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

_log = Logger()

_SAFE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


class DKIMResult:
    """
    The outcome for one C{DKIM-Signature}.

    @ivar result: L{PASS}, L{FAIL}, L{NEUTRAL} (a signature that cannot be
        checked: malformed, unknown algorithm), L{TEMPERROR} (no DNS
        answer) or L{PERMERROR} (no or bad key), or L{NONE} (no signature
        at all).
    @ivar domain: the signing domain (C{d=}), or L{None}.
    @ivar selector: the selector (C{s=}), or L{None}.
    @ivar comment: a short explanation.
    """

    def __init__(self, result: str, domain: Optional[str] = None, selector: Optional[str] = None, comment: str = "") -> None:
        self.result = result
        self.domain = domain
        self.selector = selector
        self.comment = comment

    def __repr__(self) -> str:
        return f"<DKIMResult {self.result} d={self.domain} s={self.selector} ({self.comment})>"


def _signatureTags(message: bytes) -> List[Optional[Tuple[str, str]]]:
    """
    The C{(d, s)} of each C{DKIM-Signature} header, in order (L{None} for
    one that does not parse).
    """
    parsed = _dkimpy.DKIM(message)
    tags: List[Optional[Tuple[str, str]]] = []
    for name, value in parsed.headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            fields = parse_tag_value(value)
            tags.append((fields[b"d"].decode("ascii").strip().lower(), fields[b"s"].decode("ascii").strip()))
        except Exception:
            tags.append(None)
    return tags


def _verifyAll(message: bytes, tags: List[Optional[Tuple[str, str]]], keys: Dict[bytes, Optional[bytes]], failed: Dict[bytes, str], minKey: int) -> List[DKIMResult]:
    """
    Verify every signature against the pre-fetched keys.  Runs in a
    thread.
    """

    def dnsfunc(name: bytes, timeout: float = 5) -> Optional[bytes]:
        if isinstance(name, str):
            name = name.encode("ascii")
        key = name.rstrip(b".").lower()
        if key in failed:
            raise _dkimpy.DnsTimeoutError(failed[key])
        return keys.get(key)

    results = []
    for index, tag in enumerate(tags):
        if tag is None:
            results.append(DKIMResult(PERMERROR, comment="malformed signature"))
            continue
        domain, selector = tag
        name = f"{selector}._domainkey.{domain}".lower().encode("ascii", "replace")
        # dkimpy reports a missing key or a DNS failure only as "did not
        # verify"; tell them apart first.
        if name in failed:
            results.append(DKIMResult(TEMPERROR, domain, selector, "key lookup failed"))
            continue
        if keys.get(name) is None:
            results.append(DKIMResult(PERMERROR, domain, selector, "no key published"))
            continue
        try:
            _dkimpy.evaluate_pk(name, keys[name])
        except Exception as e:
            results.append(DKIMResult(PERMERROR, domain, selector, f"bad key: {e}"))
            continue
        verifier = _dkimpy.DKIM(message, minkey=minKey)
        try:
            good = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except _dkimpy.ValidationError as e:
            if "body hash mismatch" in str(e):
                results.append(DKIMResult(FAIL, domain, selector, "body hash did not verify"))
            else:
                results.append(DKIMResult(PERMERROR, domain, selector, str(e).split(" (")[0]))
            continue
        except _dkimpy.DKIMException as e:
            results.append(DKIMResult(PERMERROR, domain, selector, str(e)))
            continue
        except Exception as e:  # a malformed message can trip dkimpy anywhere
            results.append(DKIMResult(NEUTRAL, domain, selector, f"{e.__class__.__name__}: {e}"))
            continue
        if good:
            results.append(DKIMResult(PASS, domain, selector, "good signature"))
        else:
            results.append(DKIMResult(FAIL, domain, selector, "signature did not verify"))
    return results


class DKIMVerifier:
    """
    Verifies every DKIM signature of a message.

    @ivar resolver: a C{twisted.names} resolver (C{lookupText}).
    @ivar minKey: the smallest RSA key accepted, in bits.
    @ivar maxSignatures: signatures checked at most (the rest are
        ignored), to bound the work a message can cause.
    """

    def __init__(self, resolver: Any, minKey: int = 1024, maxSignatures: int = 5) -> None:
        self.resolver = resolver
        self.minKey = minKey
        self.maxSignatures = maxSignatures

    @defer.inlineCallbacks
    def _fetchKey(
        self, name: bytes, keys: Dict[bytes, Optional[bytes]], failed: Dict[bytes, str]
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Fetch one selector record into C{keys} (or C{failed}).
        """
        try:
            payloads = yield queryRecords(self.resolver, "lookupText", name.decode("ascii"), dns.TXT)
        except DNSTempError as e:
            failed[name] = str(e)
            return
        texts = txtStrings(payloads)
        chosen = [t for t in texts if b"p=" in t]
        keys[name] = chosen[0] if chosen else texts[0] if texts else None

    @defer.inlineCallbacks
    def verify(self, message: bytes) -> Generator["defer.Deferred[Any]", Any, List[DKIMResult]]:
        """
        Check every signature of C{message}.

        @return: a Deferred firing with a list of L{DKIMResult}, one per
            signature (at most C{maxSignatures}), or a single L{NONE}
            result when the message has none.
        """
        try:
            tags = _signatureTags(message)[: self.maxSignatures]
        except Exception as e:
            return [DKIMResult(NEUTRAL, comment=f"message does not parse: {e}")]
        if not tags:
            return [DKIMResult(NONE, comment="no signature")]
        keys: Dict[bytes, Optional[bytes]] = {}
        failed: Dict[bytes, str] = {}
        names = set()
        for tag in tags:
            if tag is None:
                continue
            domain, selector = tag
            try:
                names.add(f"{selector}._domainkey.{domain}".lower().encode("ascii"))
            except UnicodeEncodeError:
                continue
        yield defer.gatherResults([self._fetchKey(name, keys, failed) for name in sorted(names)])
        results = yield threads.deferToThread(_verifyAll, message, tags, keys, failed, self.minKey)
        return results


def keyPath(dataDir: str, domain: str, selector: str) -> str:
    """
    Where the signing key of C{domain} and C{selector} is kept.

    @raise ValueError: for a domain or selector that is no safe file name.
    """
    if not _SAFE_NAME.match(domain) or not _SAFE_NAME.match(selector) or ".." in domain + selector:
        raise ValueError(f"bad DKIM domain or selector: {domain!r} {selector!r}")
    return os.path.join(dataDir, "dkim", f"{domain.lower()}.{selector}.key")


def txtRecord(domain: str, selector: str, publicKeyDER: bytes) -> str:
    """
    The zone-file line publishing a public key.  The value is split into
    quoted strings of at most 255 octets, as a TXT character-string must
    be (a 2048-bit key does not fit in one); DNS software joins them.
    """
    value = "v=DKIM1; k=rsa; p=" + base64.b64encode(publicKeyDER).decode("ascii")
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    return f"{selector}._domainkey.{domain} IN TXT " + " ".join(f'"{c}"' for c in chunks)


def keygen(domain: str, selector: str, dataDir: str, bits: int = 2048) -> str:
    """
    Make an RSA signing key for C{domain}, written to
    C{<dataDir>/dkim/<domain>.<selector>.key} (mode 0600; an existing key
    is never overwritten).

    @return: the DNS TXT record to publish, as a zone-file line
        C{<selector>._domainkey.<domain> IN TXT "v=DKIM1; k=rsa; p=..."}.
    @raise FileExistsError: when the key exists already.
    """
    domain = domain.lower().rstrip(".")
    path = keyPath(dataDir, domain, selector)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return txtRecord(domain, selector, der)


#: Header fields signed (when present), oversigned where a second copy
#: would change the meaning.
SIGNED_HEADERS = [
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
    b"in-reply-to", b"references", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"list-unsubscribe",
]


class DKIMSigner:
    """
    Signs messages with the keys in C{<dataDir>/dkim/}.

    @ivar dataDir: the data directory.
    @ivar selector: the selector to sign with.
    """

    def __init__(self, dataDir: str, selector: str = "mail") -> None:
        self.dataDir = dataDir
        self.selector = selector
        self._cache: Dict[str, Tuple[float, bytes]] = {}

    def key(self, domain: str) -> Optional[bytes]:
        """
        The PEM key for C{domain}, or L{None} when there is none (read again
        when the file changes).
        """
        try:
            path = keyPath(self.dataDir, domain, self.selector)
            mtime = os.stat(path).st_mtime
        except (ValueError, OSError):
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        with open(path, "rb") as f:
            pem = f.read()
        self._cache[path] = (mtime, pem)
        return pem

    def sign(self, message: bytes, domain: str) -> "defer.Deferred[Optional[bytes]]":
        """
        Sign C{message} for C{domain} (relaxed/relaxed, rsa-sha256).

        @return: a Deferred firing with the C{DKIM-Signature} header line
            (C{bytes} ending in CRLF), or L{None} when C{domain} has no key.
        """
        domain = domain.lower().rstrip(".")
        pem = self.key(domain)
        if pem is None:
            return defer.succeed(None)
        present = {name.lower() for name, _ in _dkimpy.DKIM(message).headers}
        include = [h for h in SIGNED_HEADERS if h in present]
        if b"from" not in include:
            include.insert(0, b"from")
        return threads.deferToThread(
            _dkimpy.sign, message, self.selector.encode("ascii"), domain.encode("ascii"), pem,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )
