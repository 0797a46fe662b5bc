"""
Connection details every protocol shares: TCP_NODELAY, whether a peer is on
loopback, whether a connection is encrypted.
"""

import ipaddress
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ISSLTransport, ITLSTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol


class IConnectionTransport(ITLSTransport, IPushProducer, IConsumer):
    """
    For the type checker: the transport a connected mailplat protocol has.
    Twisted's TCP transport (and the TLS and policy wrappers put in front of
    it) writes, closes and aborts, pauses and resumes reading, takes a
    producer (streaming a large message) and starts TLS (where TLS is not
    on already), though none of Twisted's interfaces says all of that.  A
    protocol declares C{transport: IConnectionTransport} (instead of
    L{Protocol}'s C{Optional[ITransport]}) because its methods run only
    while it is connected.
    """


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
    Whether the connection runs over TLS: implicit TLS (the protocol's
    transport is a L{TLSMemoryBIOProtocol}), or after STARTTLS (Twisted
    marks the TCP transport L{ISSLTransport}).  Protocol wrappers in
    between (C{WrappingFactory}, policies) are looked through.
    """
    for _ in range(8):
        if transport is None:
            return False
        if ISSLTransport.providedBy(transport) or isinstance(transport, TLSMemoryBIOProtocol):
            return True
        if not isinstance(transport, ProtocolWrapper):
            return False
        transport = transport.transport
    return False


def cleartextAllowed(transport: object, allowPlaintext: bool = False) -> bool:
    """
    Whether a password may be sent in the clear on this connection: over TLS,
    or from loopback (DESIGN.md: secure by default), or anywhere when the
    administrator said so (C{auth.allow_plaintext}).

    @param allowPlaintext: the server's C{auth.allow_plaintext}; protocols
        pass their factory's C{allowPlaintext} attribute.
    """
    if allowPlaintext:
        return True
    return isEncrypted(transport) or isLoopback(transport.getPeer())  # type: ignore[attr-defined]


def peerHost(transport: object) -> str:
    """
    The peer's host as text, for logs and Received headers.
    """
    peer = transport.getPeer()  # type: ignore[attr-defined]
    return getattr(peer, "host", str(peer))
