"""
Connection limits: how many connections one client address, and all
clients together, may hold open on one listener.

L{limitConnections} wraps a protocol factory.  A connection over a limit
is not handed to the protocol at all: it gets the protocol's own short
refusal line (SMTP C{421}, POP3 C{-ERR [SYS/TEMP]}, IMAP C{* BYE}), given
by the caller, and is closed.

Wrap the protocol factory I{inside} a C{TLSMemoryBIOFactory} for the
implicit-TLS listeners, so the refusal line is sent over TLS like any
other reply::

    TLSMemoryBIOFactory(tls, False, limitConnections(factory, 20, 1000, greeting))
"""

import ipaddress
from typing import Any, Dict, Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from mailplat import netutil

log = Logger()

#: How long a refused connection may take to go away (the refusal line
#: written, a TLS handshake finished) before it is aborted, seconds.
REFUSAL_TIMEOUT = 10.0


def addressKey(host: str) -> str:
    """
    The key a client address is counted under: the address itself for
    IPv4 (an IPv4-mapped IPv6 address counts as its IPv4 address), and its
    C{/64} network for IPv6, since one host commonly holds a whole C{/64}
    and would otherwise get a fresh allowance from every address in it.

    @param host: the peer's host as Twisted gives it
        (C{transport.getPeer().host}).
    @return: a printable key; a host that is not an IP address (a UNIX
        socket path, a name) is its own key.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Refusal(Protocol):
    """
    What an over-limit connection gets: the refusal line, then the close.

    @ivar line: the bytes to send.
    @ivar clock: for the abort timer.
    """

    transport: netutil.IConnectionTransport

    def __init__(self, line: bytes, clock: Optional[IReactorTime], timeout: float) -> None:
        self.line = line
        self.clock = clock
        self.timeout = timeout
        self._timer: Any = None

    def connectionMade(self) -> None:
        """
        Send the refusal line and close; abort if the close has not
        happened within the timeout (a client that never reads, a TLS
        handshake that never ends).
        """
        if self.clock is not None and self.timeout > 0:
            self._timer = self.clock.callLater(self.timeout, self._abort)
        self.transport.write(self.line)
        self.transport.loseConnection()

    def _abort(self) -> None:
        self._timer = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Ignore whatever the client sends: it has been refused.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Cancel the abort timer.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _Counted(ProtocolWrapper):
    """
    A connection within the limits; remembers the key it counts under.

    It has nothing to do while the connection lasts, so it steps out of the
    data path: the wrapped protocol gets the transport this wrapper was
    given (it writes to it directly), and the bytes read go straight to the
    wrapped protocol's C{dataReceived} (the method it has when the
    connection is made).  It only sees the connection begin
    (C{makeConnection}) and end (C{connectionLost}), which is all the
    counting needs.

    @ivar limitKey: the L{addressKey} of its peer, or None when it is not
        counted per address (an exempt loopback client).
    """

    limitKey: Optional[str] = None

    def makeConnection(self, transport: Any) -> None:
        """
        Count the connection, then connect the wrapped protocol to
        C{transport} itself, not to this wrapper.
        """
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        # An instance attribute: whoever reads from the transport calls
        # the wrapped protocol's method with no call in between.
        self.dataReceived = self.wrappedProtocol.dataReceived  # type: ignore[method-assign]
        self.wrappedProtocol.makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Give the places back and tell the wrapped protocol.
        """
        self.__dict__.pop("dataReceived", None)
        super().connectionLost(reason)


class ConnectionLimitFactory(WrappingFactory[_Counted]):
    """
    A factory wrapper that refuses connections over a per-address or a
    total limit with a protocol's refusal line.

    @ivar perAddress: most connections open at once from one address (an
        IPv6 C{/64} counts as one address); 0 or None for no limit.
    @ivar total: most connections open at once in all; 0 or None for no
        limit.
    @ivar greeting: the refusal line sent before closing (with its CRLF).
    @ivar exemptLoopback: whether loopback clients are spared the
        per-address limit (they still count towards the total).
    @ivar current: the connections open now, in all.
    @ivar perKey: address key to the number of its open connections.
    @ivar refused: how many connections have been refused.
    """

    protocol = _Counted

    def __init__(
        self,
        wrappedFactory: "Factory[Any]",
        perAddress: Optional[int],
        total: Optional[int],
        greeting: bytes,
        exemptLoopback: bool = False,
        clock: Optional[IReactorTime] = None,
        refusalTimeout: float = REFUSAL_TIMEOUT,
    ) -> None:
        """
        @param clock: the reactor for the refusal's abort timer; the global
            reactor when None.
        @param refusalTimeout: seconds a refused connection may linger.
        """
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.perAddress = perAddress or 0
        self.total = total or 0
        self.greeting = greeting
        self.exemptLoopback = exemptLoopback
        self.clock = clock
        self.refusalTimeout = refusalTimeout
        self.current = 0
        self.perKey: Dict[str, int] = {}
        self.refused = 0

    def logPrefix(self) -> str:
        """
        Log as the wrapped factory does.
        """
        return super().logPrefix()

    def _refuse(self, addr: Optional[IAddress], why: str) -> Protocol:
        self.refused += 1
        log.info("Refusing a connection from {peer}: {why}", peer=getattr(addr, "host", addr), why=why)
        refusal = _Refusal(self.greeting, self.clock, self.refusalTimeout)
        refusal.factory = self
        return refusal

    # WrappingFactory says it builds only wrappers, but the factory contract
    # (the listening port) takes any protocol, or None to drop the connection.
    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[Protocol]:  # type: ignore[override]
        """
        The wrapped protocol if the limits allow one more connection from
        C{addr}; a refusal otherwise.
        """
        if self.total and self.current >= self.total:
            return self._refuse(addr, f"{self.current} connections open in all")
        key: Optional[str] = None
        if self.perAddress and not (self.exemptLoopback and netutil.isLoopback(addr)):
            key = addressKey(str(getattr(addr, "host", addr)))
            if self.perKey.get(key, 0) >= self.perAddress:
                return self._refuse(addr, f"{self.perKey[key]} connections open from {key}")
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        protocol = self.protocol(self, wrapped)
        protocol.limitKey = key
        self.current += 1
        if key is not None:
            self.perKey[key] = self.perKey.get(key, 0) + 1
        return protocol

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """
        A counted connection ended: give its places back.
        """
        super().unregisterProtocol(p)
        if not isinstance(p, _Counted):
            return
        self.current = max(0, self.current - 1)
        key = p.limitKey
        if key is not None:
            left = self.perKey.get(key, 0) - 1
            if left > 0:
                self.perKey[key] = left
            else:
                self.perKey.pop(key, None)
            p.limitKey = None


def limitConnections(
    factory: "Factory[Any]",
    perAddress: Optional[int],
    total: Optional[int],
    greeting: bytes,
    exemptLoopback: bool = False,
    clock: Optional[IReactorTime] = None,
) -> ConnectionLimitFactory:
    """
    Wrap C{factory} so that at most C{perAddress} connections from one
    client address and C{total} in all are open at once.  An over-limit
    connection gets C{greeting} and is closed; the wrapped factory never
    sees it.

    @param perAddress: per-address limit; 0 or None turns it off.
    @param total: total limit; 0 or None turns it off.
    @param greeting: the protocol's refusal line, CRLF included, for
        example C{b"421 4.7.0 mail.example.test Too many connections, try
        again later\\r\\n"}; see L{refusalLine}.
    @param exemptLoopback: spare loopback clients the per-address limit
        (a local webmail or proxy opens many connections from one address).
    @param clock: the reactor (for the refusal's abort timer).
    """
    return ConnectionLimitFactory(factory, perAddress, total, greeting, exemptLoopback, clock)


def refusalLine(protocol: str, hostname: str) -> bytes:
    """
    The standard refusal line of C{protocol} for too many connections.

    @param protocol: C{"smtp"}, C{"pop3"} or C{"imap"} (a listener name
        such as C{submission} or C{imaps} is mapped to its protocol).
    @param hostname: the server's name (SMTP puts it in the reply).
    @raise ValueError: an unknown protocol.
    """
    kind = {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3", "imaps": "imap"}.get(protocol, protocol)
    if kind == "smtp":
        return f"421 4.7.0 {hostname} Too many connections, try again later\r\n".encode("ascii", "replace")
    if kind == "pop3":
        return b"-ERR [SYS/TEMP] Too many connections\r\n"
    if kind == "imap":
        return b"* BYE Too many connections\r\n"
    raise ValueError(f"no refusal line for protocol {protocol!r}")
