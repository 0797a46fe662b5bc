"""
Addresses as mailplat keys them: accounts, login names and recipients.
"""

from typing import Tuple


def normalizeAddress(address: str) -> str:
    """
    The key form of an address: surrounding space removed, lower-cased
    (local parts are treated case-insensitively, as Dovecot and Postfix
    do by default), no trailing dot on the domain.
    """
    address = address.strip().lower()
    if address.endswith("."):
        address = address[:-1]
    return address


def splitAddress(address: str) -> Tuple[str, str]:
    """
    Split C{local@domain} at the last C{@}; the domain is C{""} when there
    is none.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain
