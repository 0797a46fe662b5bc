"""
Making Twisted's own checkers agree with what mailplat's protocols send.
"""

from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse


def bytesUsernames(checker: Any) -> Any:
    """
    Twisted's strcred C{memory:} checker keeps the names and secrets it was
    given as C{str}, while every protocol hands the portal C{bytes} user
    names (as C{IUsernamePassword} says), so no login would ever match.
    Re-key such a checker by UTF-8 names and secrets, in place; any other
    checker is returned untouched.

    @return: C{checker}.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (name.encode("utf-8") if isinstance(name, str) else name):
            (secret.encode("utf-8") if isinstance(secret, str) else secret)
            for name, secret in checker.users.items()
        }
    return checker
