"""
mailplat's own checker: argon2id password hashes in a file of the data
directory, written by C{mailplat user add|passwd|del}.

The file has one line per user, C{address:hash}, with the hash in argon2's
PHC string form (C{$argon2id$v=19$...}).  It is rewritten atomically (write,
fsync, rename) and read again whenever it changes on disk, so users added by
the admin command can log in without a restart.
"""

import os
import tempfile
from typing import Dict, Optional

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
from mailplat.errors import ConfigError

_hasher = PasswordHasher()

# Verified against when the user is unknown, so that a wrong name costs as
# much time as a wrong password and does not tell who exists.
_DUMMY_HASH = _hasher.hash("mailplat: no such user")


class PasswordFile:
    """
    The users and their hashes, kept in step with the file on disk.

    @ivar path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[tuple] = None
        self._hashes: Dict[str, str] = {}

    def _load(self) -> Dict[str, str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._hashes = None, {}
            return self._hashes
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            hashes = {}
            with open(self.path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    address, sep, hashed = line.partition(":")
                    if not sep or not hashed.startswith("$argon2"):
                        raise ConfigError(f"{self.path}: line {number} is not 'address:$argon2id$...'")
                    hashes[normalizeAddress(address)] = hashed
            self._stamp, self._hashes = stamp, hashes
        return self._hashes

    def users(self) -> Dict[str, str]:
        """
        The current address-to-hash map (read from disk if it changed).
        """
        return dict(self._load())

    def hashFor(self, address: str) -> Optional[str]:
        """
        The stored hash of C{address}, or None.
        """
        return self._load().get(normalizeAddress(address))

    def setPassword(self, address: str, password: str) -> None:
        """
        Add the user or change their password (argon2id), durably.
        """
        users = self.users()
        users[normalizeAddress(address)] = _hasher.hash(password)
        self._write(users)

    def remove(self, address: str) -> bool:
        """
        Remove the user; whether they were there.
        """
        users = self.users()
        if users.pop(normalizeAddress(address), None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: Dict[str, str]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for address in sorted(users):
                    f.write(f"{address}:{users[address]}\n")
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


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """
    Checks user names and passwords against a L{PasswordFile}; the hashing
    runs in the reactor's thread pool.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: PasswordFile) -> None:
        self.passwords = passwords

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials: IUsernamePassword):
        """
        See L{ICredentialsChecker.requestAvatarId}: fires with the normalised
        address (bytes) or fails with L{UnauthorizedLogin}.
        """
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        address = normalizeAddress(username)
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
        "mailplat's own users: argon2id hashes in a file written by "
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
