"""
SCRAM-SHA-256 (RFC 5802, RFC 7677): the stored secrets, their RFC 5803
text form, and the credentials the SASL layer hands to the cred portal.

A checker can verify a SCRAM login in one of two ways:

  - It keeps the SCRAM secrets (C{StoredKey}, C{ServerKey}, salt and
    iteration count) of each user and provides
    L{ISCRAMSecretSource}: it says which salt and iteration count to send
    before the proof arrives, and accepts L{ISCRAMSHA256Credentials},
    verifying them with L{ISCRAMSHA256Credentials.checkSecrets}.
    mailplat's own password file checker does this; it never sees the
    password.
  - It holds plain secrets and accepts L{IUsernameHashedPassword} (Twisted's
    C{memory:} checker, C{file:} without a hash): the server makes up a
    fresh salt for the exchange and the credentials' C{checkPassword}
    derives the keys from the plain secret (4096 rounds of PBKDF2, run by
    the checker on the reactor thread: a few milliseconds).
"""

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from typing import Optional, Tuple, Union

from twisted.cred.credentials import ICredentials, IUsernameHashedPassword
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer, implementer_only

#: The mechanism's name, and the scheme name in RFC 5803 text.
SCHEME = "SCRAM-SHA-256"
#: Iterations for new secrets and made-up salts (RFC 7677 4: at least 4096).
DEFAULT_ITERATIONS = 4096
#: Most iterations a stored secret may ask for (a bound on the CPU a
#: corrupt file can cost; also what a client is asked to compute).
MAX_ITERATIONS = 1_000_000
#: Salt length for new secrets, octets.
SALT_LENGTH = 16


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _inTable(char: str, *tables: object) -> bool:
    return any(table(char) for table in tables)  # type: ignore[operator]


def saslprep(text: str) -> str:
    """
    SASLprep (RFC 4013) of a password or user name: map non-ASCII spaces to
    a space and remove "commonly mapped to nothing" characters, normalise
    with NFKC, and refuse prohibited or badly mixed bidirectional
    characters.  Unassigned code points are allowed (a "stored string"
    would refuse them; clients seldom do).

    @raise ValueError: the string contains a prohibited character.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    for c in prepared:
        if _inTable(
            c,
            stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
            stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
            stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        ):
            raise ValueError(f"SASLprep: prohibited character U+{ord(c):04X}")
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("SASLprep: mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end with a right-to-left character")
    return prepared


def preparePassword(password: Union[str, bytes]) -> bytes:
    """
    The octets SCRAM salts: the SASLprep of the password in UTF-8.  A
    password SASLprep refuses (or that is not UTF-8) is used as it is, as
    PostgreSQL does, so that every password can still log in with a client
    that does the same.
    """
    if isinstance(password, bytes):
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return password
    else:
        text = password
    try:
        return saslprep(text).encode("utf-8")
    except ValueError:
        return text.encode("utf-8", "surrogateescape")


class ScramSecrets:
    """
    What a server keeps to verify SCRAM-SHA-256 logins (RFC 5802 3):
    C{StoredKey = H(HMAC(SaltedPassword, "Client Key"))} and
    C{ServerKey = HMAC(SaltedPassword, "Server Key")}, with the salt and
    iteration count that made C{SaltedPassword}.  Knowing them does not let
    one log in (the client proof needs C{ClientKey}), though a thief could
    try to guess the password offline, as with any hash.

    @ivar iterations: the PBKDF2 iteration count.
    @ivar salt: the salt (raw octets).
    @ivar storedKey: 32 octets.
    @ivar serverKey: 32 octets.
    """

    def __init__(self, iterations: int, salt: bytes, storedKey: bytes, serverKey: bytes) -> None:
        self.iterations = iterations
        self.salt = salt
        self.storedKey = storedKey
        self.serverKey = serverKey

    @classmethod
    def fromPassword(cls, password: Union[str, bytes], salt: Optional[bytes] = None,
                     iterations: int = DEFAULT_ITERATIONS) -> "ScramSecrets":
        """
        Derive the secrets of C{password} (a fresh random salt when
        C{salt} is L{None}).
        """
        if salt is None:
            salt = os.urandom(SALT_LENGTH)
        salted = hashlib.pbkdf2_hmac("sha256", preparePassword(password), salt, iterations)
        return cls(iterations, salt, _h(_hmac(salted, b"Client Key")), _hmac(salted, b"Server Key"))

    def format(self) -> str:
        """
        The RFC 5803 text form:
        C{SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>}, base64.
        """
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return f"{SCHEME}${self.iterations}:{b64(self.salt)}${b64(self.storedKey)}:{b64(self.serverKey)}"

    @classmethod
    def parse(cls, text: str) -> "ScramSecrets":
        """
        Read the RFC 5803 form written by L{format}.

        @raise ValueError: it is not that form.
        """
        scheme, sep, rest = text.partition("$")
        if scheme != SCHEME or not sep:
            raise ValueError(f"not {SCHEME}$<iter>:<salt>$<StoredKey>:<ServerKey>")
        params, sep, keys = rest.partition("$")
        iterText, sep1, saltText = params.partition(":")
        storedText, sep2, serverText = keys.partition(":")
        if not (sep and sep1 and sep2 and iterText.isdigit()):
            raise ValueError(f"not {SCHEME}$<iter>:<salt>$<StoredKey>:<ServerKey>")
        iterations = int(iterText)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"iteration count {iterations} out of range")
        try:
            salt = base64.b64decode(saltText, validate=True)
            storedKey = base64.b64decode(storedText, validate=True)
            serverKey = base64.b64decode(serverText, validate=True)
        except ValueError:
            raise ValueError("salt or keys are not base64") from None
        if not salt or len(storedKey) != 32 or len(serverKey) != 32:
            raise ValueError("the salt is empty or a key is not 32 octets")
        return cls(iterations, salt, storedKey, serverKey)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScramSecrets):
            return NotImplemented
        return self.format() == other.format()

    def __repr__(self) -> str:
        return f"<ScramSecrets i={self.iterations}>"


class ISCRAMSHA256Credentials(ICredentials):
    """
    A finished SCRAM-SHA-256 exchange waiting for its proof to be checked
    against a user's stored secrets.
    """

    username = Attribute("The login name (bytes, the SCRAM n= value unescaped).")
    salt = Attribute("The salt the server sent (bytes).")
    iterations = Attribute("The iteration count the server sent (int).")

    def checkSecrets(secrets: ScramSecrets) -> bool:
        """
        Whether the client's proof was made with these secrets (and the
        salt and iteration count sent were theirs).  On success the server
        signature to send back becomes available as C{serverSignature}.
        """


class ISCRAMSecretSource(Interface):
    """
    A checker that keeps SCRAM-SHA-256 secrets says which salt and
    iteration count a user's exchange needs before the proof is sent.
    """

    def scramParameters(username: bytes) -> "defer.Deferred[Tuple[bytes, int]]":
        """
        The C{(salt, iterations)} of C{username}'s secrets.  For an unknown
        user, or one without SCRAM secrets, a made-up but stable pair, so
        that the answer does not tell who exists (the login then fails).
        """


@implementer(ISCRAMSHA256Credentials)
class SCRAMCredentials:
    """
    The end of a SCRAM-SHA-256 exchange (RFC 5802 3), for a checker that
    holds the user's L{ScramSecrets}.

    @ivar username: the login name (C{bytes}).
    @ivar salt: the salt the server sent.
    @ivar iterations: the iteration count the server sent.
    @ivar authMessage: C{client-first-message-bare "," server-first-message
        "," client-final-message-without-proof}.
    @ivar proof: the client's proof (32 octets).
    @ivar serverSignature: C{HMAC(ServerKey, AuthMessage)} once a check
        succeeded, else L{None}.
    """

    def __init__(self, username: bytes, salt: bytes, iterations: int, authMessage: bytes, proof: bytes) -> None:
        self.username = username
        self.salt = salt
        self.iterations = iterations
        self.authMessage = authMessage
        self.proof = proof
        self.serverSignature: Optional[bytes] = None

    def checkSecrets(self, secrets: ScramSecrets) -> bool:
        """
        See L{ISCRAMSHA256Credentials.checkSecrets}: recover C{ClientKey}
        from the proof and compare its hash with C{StoredKey} in constant
        time.
        """
        if len(self.proof) != 32 or len(secrets.storedKey) != 32:
            return False
        clientSignature = _hmac(secrets.storedKey, self.authMessage)
        clientKey = _xor(self.proof, clientSignature)
        sameParameters = hmac.compare_digest(secrets.salt, self.salt) and secrets.iterations == self.iterations
        ok = hmac.compare_digest(_h(clientKey), secrets.storedKey)
        if ok and sameParameters:
            self.serverSignature = _hmac(secrets.serverKey, self.authMessage)
            return True
        return False


@implementer_only(IUsernameHashedPassword)
class HashedSCRAMCredentials(SCRAMCredentials):
    """
    The end of a SCRAM-SHA-256 exchange for a checker that holds the plain
    secret (L{IUsernameHashedPassword}): the salt was made up for this
    exchange, and C{checkPassword} derives the keys from the secret.
    """

    def checkPassword(self, password: Union[str, bytes]) -> bool:
        """
        See L{IUsernameHashedPassword.checkPassword}.
        """
        return self.checkSecrets(ScramSecrets.fromPassword(password, self.salt, self.iterations))


def fakeParameters(key: bytes, username: bytes) -> Tuple[bytes, int]:
    """
    A salt and the default iteration count for a user without secrets: the
    same for the same name while C{key} stays the same, so that asking
    twice does not tell a made-up salt from a real one.
    """
    return _hmac(key, b"mailplat SCRAM fake salt\0" + username)[:SALT_LENGTH], DEFAULT_ITERATIONS
