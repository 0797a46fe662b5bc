"""
Credentials mailplat's protocols hand to the cred portal beyond Twisted's
own C{UsernamePassword}.
"""

import hashlib
import hmac

from twisted.cred.credentials import IUsernameHashedPassword
from zope.interface import implementer


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """
    A POP3 APOP login (RFC 1939 section 7): an MD5 digest of the server's
    timestamp banner and the shared secret.  Only a checker that holds the
    secret itself (Twisted's C{memory:} checker, for one) can verify it, so
    POP3 offers APOP only when the portal accepts
    L{IUsernameHashedPassword}.
    """

    def __init__(self, username: bytes, challenge: bytes, digest: bytes) -> None:
        self.username = username
        self.challenge = challenge
        self.digest = digest

    def checkPassword(self, password: bytes) -> bool:
        """
        Whether C{password} is the secret that makes the client's digest.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hashlib.md5(self.challenge + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest.lower())


@implementer(IUsernameHashedPassword)
class CramMD5Credentials:
    """
    A SASL CRAM-MD5 login (RFC 2195, used by SMTP AUTH): the client answers
    the server's challenge with C{HMAC-MD5(secret, challenge)} in hex.  As
    with APOP, only a checker holding the plain secret can verify it, so
    CRAM-MD5 is offered only when the portal accepts
    L{IUsernameHashedPassword}.

    @ivar username: the login name (C{bytes}).
    @ivar challenge: the challenge the server sent, before base64.
    @ivar response: the client's hex digest.
    """

    def __init__(self, username: bytes, challenge: bytes, response: bytes) -> None:
        self.username = username
        self.challenge = challenge
        self.response = response

    def checkPassword(self, password: bytes) -> bool:
        """
        Whether C{password} is the secret that makes the client's digest.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hmac.new(password, self.challenge, hashlib.md5).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.response.lower())
