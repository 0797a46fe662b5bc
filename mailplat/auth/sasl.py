"""
The server side of SASL (RFC 4422), shared by SMTP AUTH (RFC 4954), POP3
AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501, RFC 4959 SASL-IR), so
that the three protocols offer and run the same mechanisms.

A protocol asks L{mechanismsFor} what to advertise on a connection, makes a
L{Mechanism} with L{makeMechanism} when the client picks one, and feeds it
the client's responses, base64-decoded with L{decodeResponse}
(which also recognises the C{*} that cancels).  Each call of
L{Mechanism.respond} gives a Deferred firing with a L{Challenge} to send or
with the credentials to log in with through the cred portal; it fails with
L{SASLError} for a malformed response (the protocol answers its syntax
error) or with L{UnauthorizedLogin} for a well-formed response that can
only fail (the protocol answers its authentication failure).  After the
portal accepted the credentials, L{Mechanism.serverFinal} gives the data a
mechanism still has to send (SCRAM's server signature): the protocol sends
it as one more challenge, waits for the client's empty response, and only
then reports success.

The mechanisms:

  - C{PLAIN} (RFC 4616) and C{LOGIN} (draft-murchison-sasl-login): the
    password itself, so offered only where a password may be sent (over
    TLS, from loopback, or anywhere with C{auth.allow_plaintext}).
  - C{CRAM-MD5} (RFC 2195): when a checker holds plain secrets
    (L{IUsernameHashedPassword}).
  - C{SCRAM-SHA-256} (RFC 5802, RFC 7677): when a checker keeps SCRAM
    secrets (L{ISCRAMSecretSource} with L{ISCRAMSHA256Credentials}) or
    holds plain secrets (L{IUsernameHashedPassword}).  No channel binding:
    the C{-PLUS} variant is not offered, a client asking for binding
    (C{p=}) is refused, and C{y} (the client could bind but thinks we
    cannot) is accepted, as we indeed cannot.

The cleartext rule covers every mechanism, not only PLAIN and LOGIN: an
eavesdropper who records a CRAM-MD5 or SCRAM exchange can guess the
password offline, so without TLS (and off loopback, without
C{allow_plaintext}) no mechanism is offered at all.
"""

import base64
import binascii
import os
import secrets
import time
from typing import Any, Callable, List, Optional, Union

from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface.interface import InterfaceClass

from mailplat.address import normalizeAddress
from mailplat.auth.credentials import CramMD5Credentials
from mailplat.auth.scram import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    SALT_LENGTH,
    HashedSCRAMCredentials,
    ISCRAMSecretSource,
    ISCRAMSHA256Credentials,
    SCRAMCredentials,
)

#: Every mechanism this module knows, in the order they are advertised.
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")

#: Longest user name accepted inside a SASL exchange, octets.
MAX_USERNAME = 512


class SASLError(Exception):
    """
    A malformed client response; the exchange is over.  The message is
    safe to show the client.
    """


class SASLCancelled(SASLError):
    """
    The client sent C{*}: it gives up the exchange (RFC 4422 3.5).
    """


class Challenge:
    """
    A server challenge to send (before base64).

    @ivar data: the challenge octets.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    def encoded(self) -> bytes:
        """
        The challenge in base64, as every protocol sends it.
        """
        return base64.b64encode(self.data)

    def __repr__(self) -> str:
        return f"<Challenge {self.data!r}>"


def decodeResponse(line: bytes, initial: bool = False) -> bytes:
    """
    A client response as sent on the wire: base64, C{*} to cancel, and (for
    an initial response, RFC 4954 4 / RFC 4959 / RFC 5034) C{=} for an empty
    one.

    @param initial: whether this is the initial response given with the
        command (where C{*} is not a cancellation but bad base64).
    @raise SASLCancelled: the client cancelled.
    @raise SASLError: not base64.
    """
    line = line.strip()
    if not initial and line == b"*":
        raise SASLCancelled("Authentication cancelled")
    if initial and line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("Invalid base64 in authentication response") from None


def findChecker(portal: Any, interface: InterfaceClass) -> Any:
    """
    The checker a portal would use for credentials providing C{interface},
    looking through wrappers that keep the real portal as C{.portal} (such
    as L{mailplat.metrics.CountingPortal}); L{None} when there is none.
    """
    for _ in range(8):
        if portal is None:
            return None
        checkers = getattr(portal, "checkers", None)
        if isinstance(checkers, dict):
            return checkers.get(interface)
        portal = getattr(portal, "portal", None)
    return None


def _scramSource(portal: Any) -> Optional[Any]:
    checker = findChecker(portal, ISCRAMSHA256Credentials)
    if checker is not None and ISCRAMSecretSource.providedBy(checker):
        return checker
    return None


def mechanismsFor(portal: Any, cleartextAllowed: bool) -> List[str]:
    """
    The mechanism names to advertise on a connection, in order: none
    without a portal or where passwords may not travel (see the module
    docstring); PLAIN and LOGIN; CRAM-MD5 when a checker holds plain
    secrets; SCRAM-SHA-256 when a checker keeps SCRAM secrets or holds plain
    ones.

    @param cleartextAllowed: whether the connection is encrypted, on
        loopback, or the server allows plaintext.
    """
    if portal is None or not cleartextAllowed:
        return []
    interfaces = portal.listCredentialsInterfaces()
    names = ["PLAIN", "LOGIN"]
    hashed = IUsernameHashedPassword in interfaces
    if hashed:
        names.append("CRAM-MD5")
    if hashed or (ISCRAMSHA256Credentials in interfaces and _scramSource(portal) is not None):
        names.append("SCRAM-SHA-256")
    return names


def _username(raw: bytes) -> bytes:
    """
    A login name as the portal gets it: UTF-8, normalised like every other
    login of mailplat (the full address, lower-cased).

    @raise UnauthorizedLogin: empty, too long, not UTF-8 or holding NUL;
        such a name can only fail.
    """
    if not raw or len(raw) > MAX_USERNAME or b"\0" in raw:
        raise UnauthorizedLogin("Invalid user name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnauthorizedLogin("Invalid user name") from None
    return normalizeAddress(name).encode("utf-8")


def _sameUser(authzid: bytes, username: bytes) -> None:
    """
    Logging in as someone else (an authorisation identity other than the
    authentication identity) is not supported.

    @raise UnauthorizedLogin: C{authzid} names someone else.
    """
    if authzid and _username(authzid) != username:
        raise UnauthorizedLogin("Logging in as another user is not allowed")


class Mechanism:
    """
    One SASL exchange on the server side: a small state machine fed the
    client's decoded responses.

    @cvar name: the mechanism's registered name.
    @cvar clientFirst: whether the client speaks first (an initial response
        is allowed); when not, the exchange starts with a challenge.
    """

    name = ""
    clientFirst = True

    def __init__(self) -> None:
        self.done = False

    def respond(self, response: Optional[bytes]) -> defer.Deferred:
        """
        Take the client's next response (L{None} at the start when the
        client gave no initial response).

        @return: a Deferred firing with a L{Challenge} or the credentials
            for the portal; failing with L{SASLError} or
            L{UnauthorizedLogin}.
        """
        if self.done:
            return defer.fail(SASLError("Authentication exchange is over"))
        if response is None and self.clientFirst:
            return defer.succeed(Challenge(b""))
        try:
            result = self._step(response)
        except Exception:
            self.done = True
            return defer.fail()
        if not isinstance(result, defer.Deferred):
            result = defer.succeed(result)

        def finished(value: Any) -> Any:
            if not isinstance(value, Challenge):
                self.done = True
            return value

        def failed(failure: Any) -> Any:
            self.done = True
            return failure

        return result.addCallbacks(finished, failed)

    def _step(self, response: Optional[bytes]) -> Union[Challenge, Any, defer.Deferred]:
        raise NotImplementedError()

    def serverFinal(self) -> Optional[bytes]:
        """
        Data the server still sends after the portal accepted the
        credentials ("additional data with success"), or L{None}.
        """
        return None


class PlainMechanism(Mechanism):
    """
    PLAIN (RFC 4616): C{authzid NUL authcid NUL password}.
    """

    name = "PLAIN"

    def _step(self, response: Optional[bytes]) -> Any:
        assert response is not None
        fields = response.split(b"\0")
        if len(fields) != 3:
            raise SASLError("Invalid PLAIN response")
        authzid, authcid, password = fields
        username = _username(authcid)
        _sameUser(authzid, username)
        return UsernamePassword(username, password)


class LoginMechanism(Mechanism):
    """
    LOGIN (draft-murchison-sasl-login): C{Username:}, then C{Password:}.
    An initial response is taken as the user name.
    """

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._user: Optional[bytes] = None

    def respond(self, response: Optional[bytes]) -> defer.Deferred:
        """
        See L{Mechanism.respond}; the exchange starts with C{Username:}.
        """
        if response is None and not self.done and self._user is None:
            return defer.succeed(Challenge(b"Username:"))
        return super().respond(response)

    def _step(self, response: Optional[bytes]) -> Any:
        assert response is not None
        if self._user is None:
            # Checked only with the password, so that a bad name costs the
            # client the same exchange as a good one.
            self._user = response
            return Challenge(b"Password:")
        return UsernamePassword(_username(self._user), response)


class CramMD5Mechanism(Mechanism):
    """
    CRAM-MD5 (RFC 2195): the server sends C{<unique@host>}, the client
    answers C{name SP hex(HMAC-MD5(secret, challenge))}.
    """

    name = "CRAM-MD5"
    clientFirst = False

    def __init__(self, hostname: str) -> None:
        super().__init__()
        self.challenge = b"<%d.%s.%d@%s>" % (
            os.getpid(), secrets.token_hex(8).encode("ascii"), int(time.time()), hostname.encode("utf-8", "replace"),
        )
        self._sent = False

    def _step(self, response: Optional[bytes]) -> Any:
        if not self._sent:
            if response is not None:
                raise SASLError("CRAM-MD5 takes no initial response")
            self._sent = True
            return Challenge(self.challenge)
        assert response is not None
        name, _, digest = response.rpartition(b" ")
        if not digest:
            raise SASLError("Invalid CRAM-MD5 response")
        return CramMD5Credentials(_username(name), self.challenge, digest)


def _scramName(value: bytes) -> bytes:
    """
    Unescape a SCRAM saslname (C{=2C} is C{,}, C{=3D} is C{=}).

    @raise SASLError: another C{=} escape.
    """
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i:i + 1]
        if c == b"=":
            code = value[i + 1:i + 3]
            if code == b"2C":
                out += b","
            elif code == b"3D":
                out += b"="
            else:
                raise SASLError("Invalid escape in SCRAM user name")
            i += 3
        else:
            out += c
            i += 1
    return bytes(out)


def _attributes(message: bytes, expected: str) -> List[bytes]:
    """
    Split a SCRAM message into its C{a=value} fields and check the leading
    attribute names.
    """
    fields = message.split(b",")
    for position, letter in enumerate(expected):
        if position >= len(fields) or fields[position][:2] != letter.encode("ascii") + b"=":
            raise SASLError(f"Invalid SCRAM message: expected {letter}=")
    return fields


def _serverNonce() -> bytes:
    """
    The server's half of a SCRAM nonce: 144 random bits, printable and
    without a comma.
    """
    return base64.b64encode(secrets.token_bytes(18))


class ScramSHA256Mechanism(Mechanism):
    """
    SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding:
    client-first (C{n,,n=user,r=cnonce}), server-first
    (C{r=cnonce+snonce,s=salt,i=iterations}), client-final
    (C{c=biws,r=nonce,p=proof}), and after the portal accepted the proof,
    server-final (C{v=signature}) from L{serverFinal}.

    @ivar source: the L{ISCRAMSecretSource} checker that gives the salt, or
        L{None} when the salt is made up for a checker holding plain
        secrets.
    """

    name = "SCRAM-SHA-256"

    def __init__(self, source: Optional[Any] = None, iterations: int = DEFAULT_ITERATIONS) -> None:
        super().__init__()
        self.source = source
        self.iterations = iterations
        self._state = "client-first"
        self._gs2Header = b""
        self._clientFirstBare = b""
        self._serverFirst = b""
        self._nonce = b""
        self._username = b""
        self._salt = b""
        self._iterations = 0
        self._credentials: Optional[SCRAMCredentials] = None

    def _step(self, response: Optional[bytes]) -> Any:
        assert response is not None
        if self._state == "client-first":
            return self._clientFirst(response)
        return self._clientFinal(response)

    def _clientFirst(self, message: bytes) -> defer.Deferred:
        # gs2-header: cbind-flag "," [authzid] ","
        flag, sep, rest = message.partition(b",")
        authzid, sep2, bare = rest.partition(b",")
        if not sep or not sep2:
            raise SASLError("Invalid SCRAM client-first message")
        if flag.startswith(b"p="):
            raise UnauthorizedLogin("Channel binding is not supported")
        if flag not in (b"n", b"y"):
            raise SASLError("Invalid SCRAM channel binding flag")
        if authzid and not authzid.startswith(b"a="):
            raise SASLError("Invalid SCRAM authorization identity")
        if bare.startswith(b"m="):
            raise SASLError("SCRAM extensions are not supported")
        fields = _attributes(bare, "nr")
        self._username = _username(_scramName(fields[0][2:]))
        if authzid:
            _sameUser(_scramName(authzid[2:]), self._username)
        clientNonce = fields[1][2:]
        if not clientNonce or not all(0x21 <= c <= 0x7E for c in clientNonce):
            raise SASLError("Invalid SCRAM nonce")
        self._gs2Header = flag + b"," + authzid + b","
        self._clientFirstBare = bare
        self._nonce = clientNonce + _serverNonce()
        self._state = "client-final"
        if self.source is None:
            parameters = defer.succeed((secrets.token_bytes(SALT_LENGTH), self.iterations))
        else:
            parameters = defer.maybeDeferred(self.source.scramParameters, self._username)
        return parameters.addCallback(self._serverFirstMessage)

    def _serverFirstMessage(self, parameters: Any) -> Challenge:
        salt, iterations = parameters
        if not salt or not 1 <= iterations <= MAX_ITERATIONS:
            raise UnauthorizedLogin("No usable SCRAM parameters")
        self._salt, self._iterations = salt, iterations
        self._serverFirst = b"r=%s,s=%s,i=%d" % (self._nonce, base64.b64encode(salt), iterations)
        return Challenge(self._serverFirst)

    def _clientFinal(self, message: bytes) -> Any:
        withoutProof, sep, proofField = message.rpartition(b",")
        if not sep or not proofField.startswith(b"p="):
            raise SASLError("Invalid SCRAM client-final message")
        fields = _attributes(withoutProof, "cr")
        try:
            binding = base64.b64decode(fields[0][2:], validate=True)
            proof = base64.b64decode(proofField[2:], validate=True)
        except (binascii.Error, ValueError):
            raise SASLError("Invalid base64 in SCRAM client-final message") from None
        if binding != self._gs2Header:
            # With "n" or "y" there is no channel binding data: c= must
            # repeat the gs2 header exactly.
            raise UnauthorizedLogin("SCRAM channel binding does not match")
        if fields[1][2:] != self._nonce:
            raise UnauthorizedLogin("SCRAM nonce does not match")
        authMessage = b",".join((self._clientFirstBare, self._serverFirst, withoutProof))
        kind = SCRAMCredentials if self.source is not None else HashedSCRAMCredentials
        self._credentials = kind(self._username, self._salt, self._iterations, authMessage, proof)
        return self._credentials

    def serverFinal(self) -> Optional[bytes]:
        """
        C{v=} and the server signature, proving to the client that we know
        its secrets too.
        """
        if self._credentials is None or self._credentials.serverSignature is None:
            return None
        return b"v=" + base64.b64encode(self._credentials.serverSignature)


def makeMechanism(name: str, portal: Any, hostname: str) -> Mechanism:
    """
    A new exchange of mechanism C{name} (upper case) for C{portal}.  The
    caller checks first that L{mechanismsFor} offers it.

    @raise KeyError: an unknown name.
    """
    factories: dict = {
        "PLAIN": PlainMechanism,
        "LOGIN": LoginMechanism,
        "CRAM-MD5": lambda: CramMD5Mechanism(hostname),
        "SCRAM-SHA-256": lambda: ScramSHA256Mechanism(_scramSource(portal)),
    }
    make: Callable[[], Mechanism] = factories[name]
    return make()
