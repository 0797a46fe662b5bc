"""
mailplat's own checker: argon2id password hashes in a file of the data
directory, written by C{mailplat user add|passwd|del}.

The file has one line per user, C{address:hash[:scram]}, with the hash in
argon2's PHC string form (C{$argon2id$v=19$...}) and, for a password set
since SCRAM support, the user's SCRAM-SHA-256 secrets in RFC 5803 form
(C{SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>}).  A line without
them (written by an older mailplat) stays valid: that user logs in with
PLAIN or LOGIN but not SCRAM-SHA-256 until the password is set again.  It
is rewritten atomically (write, fsync, rename) and read again whenever it
changes on disk, so users added by the admin command can log in without a
restart.
"""

import os
import tempfile
from typing import Any, Dict, Generator, Optional, Tuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer, threads
from twisted.plugin import IPlugin
from zope.interface import implementer

from mailplat.address import normalizeAddress
from mailplat.auth.scram import ISCRAMSecretSource, ISCRAMSHA256Credentials, ScramSecrets, fakeParameters
from mailplat.errors import ConfigError

_hasher = PasswordHasher()

# Verified against when the user is unknown, so that a wrong name costs as
# much time as a wrong password and does not tell who exists.
_DUMMY_HASH = _hasher.hash("mailplat: no such user")

# Checked against when a user has no SCRAM secrets, for the same reason.
_DUMMY_SCRAM = ScramSecrets.fromPassword("mailplat: no such user")

#: One user's line: the argon2 hash and the SCRAM secrets (or None).
_Entry = Tuple[str, Optional[ScramSecrets]]


class PasswordFile:
    """
    The users and their hashes, kept in step with the file on disk.

    @ivar path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[tuple] = None
        self._entries: Dict[str, _Entry] = {}

    def _load(self) -> Dict[str, _Entry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            entries: Dict[str, _Entry] = {}
            with open(self.path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    address, sep, rest = line.partition(":")
                    # The argon2 PHC string holds no ':', the RFC 5803 text
                    # after it does.
                    hashed, _, scramText = rest.partition(":")
                    if not sep or not hashed.startswith("$argon2"):
                        raise ConfigError(f"{self.path}: line {number} is not 'address:$argon2id$...'")
                    scram = None
                    if scramText:
                        try:
                            scram = ScramSecrets.parse(scramText)
                        except ValueError as e:
                            raise ConfigError(f"{self.path}: line {number}: bad SCRAM-SHA-256 secrets ({e})") from None
                    entries[normalizeAddress(address)] = (hashed, scram)
            self._stamp, self._entries = stamp, entries
        return self._entries

    def users(self) -> Dict[str, str]:
        """
        The current address-to-hash map (read from disk if it changed).
        """
        return {address: entry[0] for address, entry in self._load().items()}

    def hashFor(self, address: str) -> Optional[str]:
        """
        The stored hash of C{address}, or None.
        """
        entry = self._load().get(normalizeAddress(address))
        return entry[0] if entry is not None else None

    def scramFor(self, address: str) -> Optional[ScramSecrets]:
        """
        The SCRAM-SHA-256 secrets of C{address}, or None (no such user, or
        their password was set before mailplat kept SCRAM secrets).
        """
        entry = self._load().get(normalizeAddress(address))
        return entry[1] if entry is not None else None

    def setPassword(self, address: str, password: str) -> None:
        """
        Add the user or change their password, durably: the argon2id hash
        and the SCRAM-SHA-256 secrets (fresh salt, 4096 iterations).
        """
        entries = dict(self._load())
        entries[normalizeAddress(address)] = (_hasher.hash(password), ScramSecrets.fromPassword(password))
        self._write(entries)

    def remove(self, address: str) -> bool:
        """
        Remove the user; whether they were there.
        """
        entries = dict(self._load())
        if entries.pop(normalizeAddress(address), None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: Dict[str, "_Entry"]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for address in sorted(entries):
                    hashed, scram = entries[address]
                    extra = f":{scram.format()}" if scram is not None else ""
                    f.write(f"{address}:{hashed}{extra}\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dirfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self._stamp = None


def verifyPassword(hashed: str, password: bytes) -> bool:
    """
    Whether C{password} matches the argon2 C{hashed} (constant time in the
    library).  Blocking: about 50 ms of CPU; run it off the reactor thread.
    """
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _address(username: object) -> str:
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    return normalizeAddress(str(username))


@implementer(ICredentialsChecker, ISCRAMSecretSource)
class PasswordFileChecker:
    """
    Checks user names and passwords against a L{PasswordFile} (the argon2
    hashing runs in the reactor's thread pool), and SCRAM-SHA-256 proofs
    against the SCRAM secrets kept beside the hash (a few HMACs, on the
    reactor thread; the password is never needed).

    @ivar fakeKey: makes the salt sent for a user without SCRAM secrets
        (random per process, so with several worker processes such a
        user's salt can differ from one connection to the next).
    """

    credentialInterfaces = (IUsernamePassword, ISCRAMSHA256Credentials)

    def __init__(self, passwords: PasswordFile) -> None:
        self.passwords = passwords
        self.fakeKey = os.urandom(32)

    def scramParameters(self, username: bytes) -> "defer.Deferred[Tuple[bytes, int]]":
        """
        See L{ISCRAMSecretSource.scramParameters}.
        """
        try:
            secrets = self.passwords.scramFor(_address(username))
        except ConfigError as e:
            return defer.fail(e)
        if secrets is None:
            return defer.succeed(fakeParameters(self.fakeKey, username))
        return defer.succeed((secrets.salt, secrets.iterations))

    def requestAvatarId(self, credentials: object) -> defer.Deferred:
        """
        See L{ICredentialsChecker.requestAvatarId}: fires with the normalised
        address (bytes) or fails with L{UnauthorizedLogin}.
        """
        if ISCRAMSHA256Credentials.providedBy(credentials):
            return defer.maybeDeferred(self._checkSCRAM, credentials)
        return self._checkPassword(credentials)  # type: ignore[arg-type]

    def _checkSCRAM(self, credentials: ISCRAMSHA256Credentials) -> bytes:
        address = _address(credentials.username)
        secrets = self.passwords.scramFor(address)
        ok = credentials.checkSecrets(secrets or _DUMMY_SCRAM)
        if not ok or secrets is None:
            raise UnauthorizedLogin("Authentication failed")
        return address.encode("utf-8")

    @defer.inlineCallbacks
    def _checkPassword(self, credentials: IUsernamePassword) -> Generator["defer.Deferred[Any]", Any, bytes]:
        address = _address(credentials.username)
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        hashed = self.passwords.hashFor(address)
        ok = yield threads.deferToThread(verifyPassword, hashed or _DUMMY_HASH, password)
        if not ok or hashed is None:
            raise UnauthorizedLogin("Authentication failed")
        return address.encode("utf-8")


@implementer(ICheckerFactory, IPlugin)
class PasswordFileCheckerFactory:
    """
    The C{--auth mailplat[:PATH]} checker plugin.  Without PATH the server
    uses C{passwd} in its data directory.
    """

    authType = "mailplat"
    authHelp = (
        "mailplat's own users: argon2id hashes (and SCRAM-SHA-256 secrets) in a file written by "
        "'mailplat user add'. Default file: <data-dir>/passwd."
    )
    argStringFormat = "Path to the password file (optional)."
    credentialInterfaces = PasswordFileChecker.credentialInterfaces

    def defaultArguments(self, dataDir: str) -> str:
        """
        What an empty argument string means for a server whose data
        directory is C{dataDir}: C{<dataDir>/passwd}.
        """
        return os.path.join(dataDir, "passwd")

    def generateChecker(self, argstring: str = "") -> PasswordFileChecker:
        """
        Make the checker for the file C{argstring}.
        """
        if not argstring:
            raise ConfigError("--auth mailplat needs the password file's path (the server supplies <data-dir>/passwd)")
        return PasswordFileChecker(PasswordFile(argstring))
