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

With several worker processes (C{--workers}), each process counts its own
connections exactly and publishes them in a L{SharedCounts}: one file per
process and listener in a directory of the data directory, mapped into
memory by every process, so a process adds what the others hold before it
accepts one more.  Each file holds the process's total and its counts per
address, in L{BUCKETS} buckets chosen by a keyed hash of the address; two
addresses that land in one bucket share the other processes' part of the
limit (one chance in L{BUCKETS} for a pair; the key is random per start,
so a client cannot choose its neighbours).  A process only ever writes its
own file, so there is no lock: two processes accepting in the same instant
may both take the last place.  When a worker dies its file is zeroed
before it is started again (L{clearSlot}), so the connections it held
stop counting.
"""

import ipaddress
import mmap
import os
import secrets
from hashlib import blake2b
from typing import Any, Dict, Iterable, List, Optional

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


#: Address buckets in each process's file of L{SharedCounts}.
BUCKETS = 1 << 16

_CELL = 4
_FILE_SIZE = (1 + BUCKETS) * _CELL
_KEY_FILE = "key"


def _slotPath(directory: str, listener: str, slot: int) -> str:
    return os.path.join(directory, f"{listener}.{slot}")


def prepareSharedCounts(directory: str, listeners: Iterable[str], slots: int) -> str:
    """
    Make C{directory} ready for the L{SharedCounts} of C{slots} processes
    (the parent is slot 0, worker I{n} slot I{n}): a new hash key, and a
    zeroed file per listener and slot.  The parent calls it once, before
    any worker starts; files of an earlier run are replaced.

    @return: C{directory}, absolute.
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    made = [os.path.join(directory, _KEY_FILE)]
    with open(made[0], "w") as f:
        f.write(secrets.token_hex(16))
    for listener in listeners:
        for slot in range(slots):
            made.append(_slotPath(directory, listener, slot))
            with open(made[-1], "wb") as f:
                f.truncate(_FILE_SIZE)
    # Made by a parent still running as root (twistd -u drops privileges
    # after the services are built): the workers, started as the user,
    # must open their own files for writing.
    owner = os.stat(directory)
    if os.geteuid() == 0 and owner.st_uid != 0:
        for path in made:
            os.chown(path, owner.st_uid, owner.st_gid)
    return directory


def clearSlot(directory: str, slot: int) -> None:
    """
    The process of C{slot} ended: zero its files, so the connections it
    held no longer count anywhere.  Written in place (the other processes
    keep them mapped; a shorter file would fault their reads).
    """
    suffix = f".{slot}"
    zeros = bytes(_FILE_SIZE)
    for name in os.listdir(directory):
        if name.endswith(suffix):
            fd = os.open(os.path.join(directory, name), os.O_RDWR)
            try:
                if os.pread(fd, _FILE_SIZE, 0) != zeros:
                    os.pwrite(fd, zeros, 0)
            finally:
                os.close(fd)


class SharedCounts:
    """
    One listener's open connections, as every process of the server sees
    them (see the module's docstring): this process writes its own file,
    maps the others' read-only, and reads their counts.

    @ivar slot: this process's slot.
    """

    def __init__(self, directory: str, listener: str, slot: int, slots: int) -> None:
        """
        Map the files L{prepareSharedCounts} made; this process's own
        starts at zero.

        @raise OSError: a file is missing or cannot be mapped.
        """
        with open(os.path.join(directory, _KEY_FILE)) as f:
            self._key = bytes.fromhex(f.read().strip())
        self.slot = slot
        self._maps: List[mmap.mmap] = []
        self._others: List[memoryview] = []
        for other in range(slots):
            path = _slotPath(directory, listener, other)
            if other == slot:
                with open(path, "r+b") as f:
                    m = mmap.mmap(f.fileno(), _FILE_SIZE)
                self._mine = memoryview(m).cast("I")
                if m[:] != bytes(_FILE_SIZE):
                    # Left by an earlier process in this slot.  Only then
                    # written: a file never written takes no disk blocks.
                    self._mine[:] = memoryview(bytes(_FILE_SIZE)).cast("I")
            else:
                with open(path, "rb") as f:
                    m = mmap.mmap(f.fileno(), _FILE_SIZE, access=mmap.ACCESS_READ)
                self._others.append(memoryview(m).cast("I"))
            self._maps.append(m)

    def bucket(self, key: str) -> int:
        """
        The cell of address key C{key} (1 to L{BUCKETS}; cell 0 holds the
        total).
        """
        digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=4, key=self._key).digest()
        return 1 + int.from_bytes(digest, "little") % BUCKETS

    def others(self, cell: int = 0) -> int:
        """
        What the other processes hold in C{cell}: their total (0) or an
        address bucket.
        """
        return sum(view[cell] for view in self._others)

    def add(self, cell: Optional[int], n: int) -> None:
        """
        Publish C{n} (1 or -1) more connections of this process, in all and
        in address bucket C{cell} (None: not counted per address).
        """
        mine = self._mine
        mine[0] = max(0, mine[0] + n)
        if cell is not None:
            mine[cell] = max(0, mine[cell] + n)

    def close(self) -> None:
        """
        Unmap the files (tests; a process keeps them until it exits).
        """
        self._mine.release()
        for view in self._others:
            view.release()
        for m in self._maps:
            m.close()
        self._maps = []
        self._others = []


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
    @ivar limitCell: its address bucket in the factory's L{SharedCounts},
        or None.
    """

    limitKey: Optional[str] = None
    limitCell: Optional[int] = None

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
    @ivar current: the connections open now in this process, in all.
    @ivar perKey: address key to the number of its open connections in
        this process.
    @ivar refused: how many connections have been refused.
    @ivar shared: where the other worker processes' counts are read and
        this one's published (L{shareThrough}), or None (one process).
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
        self.shared: Optional[SharedCounts] = None

    def shareThrough(self, counts: SharedCounts) -> None:
        """
        Count the other worker processes' connections too, and publish
        this one's in C{counts}.  Call before serving.
        """
        self.shared = counts

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
        shared = self.shared
        if self.total:
            current = self.current + (shared.others() if shared is not None else 0)
            if current >= self.total:
                return self._refuse(addr, f"{current} connections open in all")
        key: Optional[str] = None
        cell: Optional[int] = None
        if self.perAddress and not (self.exemptLoopback and netutil.isLoopback(addr)):
            key = addressKey(str(getattr(addr, "host", addr)))
            held = self.perKey.get(key, 0)
            if shared is not None:
                cell = shared.bucket(key)
                held += shared.others(cell)
            if held >= self.perAddress:
                return self._refuse(addr, f"{held} connections open from {key}")
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        protocol = self.protocol(self, wrapped)
        protocol.limitKey = key
        protocol.limitCell = cell
        self.current += 1
        if key is not None:
            self.perKey[key] = self.perKey.get(key, 0) + 1
        if shared is not None:
            shared.add(cell, 1)
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
        if self.shared is not None:
            self.shared.add(p.limitCell, -1)
        p.limitCell = None


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
