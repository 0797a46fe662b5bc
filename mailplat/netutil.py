"""
Connection details every protocol shares: TCP_NODELAY, whether a peer is on
loopback, whether a connection is encrypted.
"""

import ipaddress
import socket

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.address import IPv4Address, IPv6Address


def setNoDelay(transport: object) -> None:
    """
    Turn on C{TCP_NODELAY} (Twisted leaves Nagle on): request/response
    protocols otherwise wait for delayed ACKs on every reply.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except (OSError, socket.error):
            pass


def isLoopback(address: object) -> bool:
    """
    Whether a Twisted address (C{transport.getPeer()}) is on loopback.
    UNIX sockets count as local.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            ip = ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback
    return type(address).__name__ == "UNIXAddress"


def isEncrypted(transport: object) -> bool:
    """
    Whether the connection runs over TLS (implicit or after STARTTLS).
    """
    return ISSLTransport.providedBy(transport)


def cleartextAllowed(transport: object) -> bool:
    """
    Whether a password may be sent in the clear on this connection: over TLS,
    or from loopback (DESIGN.md: secure by default).
    """
    return isEncrypted(transport) or isLoopback(transport.getPeer())  # type: ignore[attr-defined]


def peerHost(transport: object) -> str:
    """
    The peer's host as text, for logs and Received headers.
    """
    peer = transport.getPeer()  # type: ignore[attr-defined]
    return getattr(peer, "host", str(peer))
