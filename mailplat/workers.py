"""
Serving on every core: the twistd process binds the listening sockets and
spawns C{workers - 1} children (C{python -m mailplat.workers}) that adopt
the same sockets and serve them with the same configuration; the kernel
hands each new connection to one of the processes.

A child gets the resolved configuration and the socket numbers as one
JSON line on its standard input (not in its environment, where a relay
password would show to C{ps e}).  The parent serves too, and alone runs
the outbound queue: a child that
queues a message writes C{wake} on its standard output so the parent's
queue runner looks at once.  A child's log goes to its standard error,
which the parent logs line by line as C{worker <pid>: ...}.  A child
exits when its standard input (a pipe from the parent) closes, so it
never outlives the parent; a child that dies while the parent runs is
started again, after a pause that grows while it keeps dying early.

The connection limits are counted over all the processes: each publishes
its open connections in a file of C{<data-dir>/connections} (slot 0 the
parent, slot I{n} worker I{n}; L{mailplat.limits.SharedCounts}), and the
parent zeroes a dead child's files before starting it again.

With a metrics page, every process keeps its metric values in files in
one directory (named in the payload as C{metrics}); the parent's page sums
them, and the parent tells the metrics when a child ended, so that its
open connections stop counting.
"""

import dataclasses
import json
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailplat.config import DISABLED, Config

log = Logger()

#: Seconds a child is given to stop before it is killed.
STOP_TIMEOUT = 10.0


def configToJSON(config: Config) -> str:
    """
    A resolved configuration as JSON (paths made absolute), for a child.
    """
    data = dataclasses.asdict(config)
    data["dataDir"] = os.path.abspath(config.dataDir)
    return json.dumps(data)


def configFromJSON(text: str) -> Config:
    """
    The configuration L{configToJSON} wrote.
    """
    data = json.loads(text)
    data["domains"] = tuple(data["domains"])
    data["auth"] = tuple(data["auth"])
    data["policyDnsblZones"] = tuple(data["policyDnsblZones"])
    data["tlsSNI"] = {name: tuple(pair) for name, pair in data["tlsSNI"].items()}
    return Config(**data)


def listen(reactor: Any, description: str, factory: "protocol.Factory[Any]") -> IListeningPort:
    """
    Listen on a server endpoint string now (TCP and UNIX endpoints listen
    at once), for a socket to share with the children.

    @raise error.CannotListenError: the endpoint cannot listen.
    """
    results: List[Any] = []
    endpoints.serverFromString(reactor, description).listen(factory).addBoth(results.append)
    if not results:
        raise error.CannotListenError(None, description, "endpoint did not listen at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def shareable(port: IListeningPort, factory: "protocol.Factory[Any]") -> Optional[Tuple[int, int]]:
    """
    The socket (descriptor, address family) of a listening port that a
    child can adopt and serve with the same factory, or L{None} (an
    endpoint that wraps the factory itself, such as C{ssl:}, cannot be
    reproduced from the socket alone).
    """
    sock = getattr(port, "socket", None)
    if sock is None or getattr(port, "factory", None) is not factory:
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    return sock.fileno(), int(sock.family)


class _WorkerProtocol(protocol.ProcessProtocol):
    """
    The parent's side of one child: its log lines, its wake-ups and its end.
    """

    def __init__(self, pool: "WorkerPool", number: int) -> None:
        self.pool = pool
        self.number = number
        self.pid: Optional[int] = None
        self.started = time.monotonic()
        self.ended: defer.Deferred = defer.Deferred()
        self._out = b""
        self._err = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.transport.write(self.pool.payload(self.number) + b"\n")  # type: ignore[union-attr]
        log.info("worker {number} started, pid {pid}", number=self.number, pid=self.pid)

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        if any(line.strip() == b"wake" for line in lines):
            self.pool.wake()

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if text.startswith("- "):
                text = text[2:]
            if text:
                log.info("worker {pid}: {line}", pid=self.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool(service.Service):
    """
    Starts the children, starts again one that dies, and stops them with
    the parent.

    @ivar count: how many children (C{workers - 1}).
    @ivar sockets: listener name to (descriptor, address family) shared.
    @ivar wake: called when a child queued a message.
    @ivar metricsDirectory: where every process writes its metric values
        (L{mailplat.metrics.Metrics.shareThrough}), or L{None} (no page).
    @ivar countsDirectory: where every process publishes its open
        connections (L{mailplat.limits.prepareSharedCounts}), or L{None}.
    """

    def __init__(self, reactor: Any, config: Config, count: int, sockets: Dict[str, Tuple[int, int]],
                 wake: Callable[[], None], metricsDirectory: Optional[str] = None,
                 countsDirectory: Optional[str] = None) -> None:
        self.reactor = reactor
        self.metricsDirectory = metricsDirectory
        self.countsDirectory = countsDirectory
        self.config = config
        self.count = count
        self.sockets = sockets
        self.wake = wake
        self.children: Dict[int, _WorkerProtocol] = {}
        self._delays: Dict[int, float] = {}
        self._pendingRestarts: Dict[int, Any] = {}

    def startService(self) -> None:
        service.Service.startService(self)
        for fd, _ in self.sockets.values():
            os.set_inheritable(fd, True)
        for number in range(1, self.count + 1):
            self._spawn(number)

    def payload(self, number: int) -> bytes:
        """
        The line child C{number} reads first: its configuration, sockets,
        and where the processes share metrics and connection counts.
        """
        counts = None
        if self.countsDirectory is not None:
            counts = {"directory": self.countsDirectory, "slot": number, "slots": self.count + 1}
        return json.dumps({"config": json.loads(configToJSON(self.config)), "sockets": self.sockets,
                           "metrics": self.metricsDirectory, "connections": counts}).encode("utf-8")

    def signalAll(self, signame: str) -> None:
        """
        Send every running child the signal C{signame} (C{"HUP"}: reload
        the TLS certificates, as the parent did).
        """
        for child in self.children.values():
            try:
                child.transport.signalProcess(signame)  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass

    def _spawn(self, number: int) -> None:
        self._pendingRestarts.pop(number, None)
        child = _WorkerProtocol(self, number)
        env = dict(os.environ)
        childFDs: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for fd, _ in self.sockets.values():
            childFDs[fd] = fd
        args = [sys.executable, "-m", "mailplat.workers"]
        self.reactor.spawnProcess(child, sys.executable, args, env=env, path=os.getcwd(), childFDs=childFDs)
        self.children[number] = child

    def ended(self, child: _WorkerProtocol, reason: Failure) -> None:
        """
        A child ended: start it again while the parent runs.
        """
        if self.children.get(child.number) is child:
            del self.children[child.number]
        if self.metricsDirectory is not None and child.pid is not None:
            from mailplat.metrics import processEnded

            processEnded(self.metricsDirectory, child.pid)
        if self.countsDirectory is not None:
            from mailplat.limits import clearSlot

            # The connections it held closed with it.
            clearSlot(self.countsDirectory, child.number)
        if not self.running:
            return
        early = time.monotonic() - child.started < 10.0
        delay = min(30.0, self._delays.get(child.number, 0.5) * 2) if early else 1.0
        self._delays[child.number] = delay
        log.warn("worker {number} (pid {pid}) ended ({reason}); starting it again in {delay:.1f}s",
                 number=child.number, pid=child.pid, reason=reason.getErrorMessage(), delay=delay)
        self._pendingRestarts[child.number] = self.reactor.callLater(delay, self._spawn, child.number)

    def stopService(self) -> defer.Deferred:
        """
        Close each child's standard input and send it SIGTERM; kill what is
        still running after L{STOP_TIMEOUT}.
        """
        service.Service.stopService(self)
        for call in self._pendingRestarts.values():
            if call.active():
                call.cancel()
        self._pendingRestarts.clear()
        children = list(self.children.values())
        for child in children:
            try:
                child.transport.closeStdin()  # type: ignore[union-attr]
                child.transport.signalProcess("TERM")  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass
        done = defer.DeferredList([child.ended for child in children])
        timer = self.reactor.callLater(STOP_TIMEOUT, self._kill, children)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)

    def _kill(self, children: List[_WorkerProtocol]) -> None:
        for child in children:
            if not child.ended.called:
                try:
                    child.transport.signalProcess("KILL")  # type: ignore[union-attr]
                except error.ProcessExitedAlready:
                    pass


class _ParentWatch(protocol.Protocol):
    """
    The child's standard input: when the parent closes it (or dies), stop.
    """

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.stop()


def readPayload(fd: int = 0) -> str:
    """
    Read the first line of C{fd} (the parent's JSON line), byte by byte so
    nothing after it is taken from the pipe.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("mailplat worker: the parent closed the pipe before sending the configuration")
        data += chunk
    return data.decode("utf-8")


def runWorker(payload: str) -> None:
    """
    A child's life: build the server from the parent's configuration,
    adopt its sockets, serve until the parent goes.
    """
    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from mailplat.service import Server

    data = json.loads(payload)
    config = configFromJSON(json.dumps(data["config"]))
    sockets = {name: (int(fd), int(family)) for name, (fd, family) in data["sockets"].items()}
    # No time stamp: the parent stamps the line when it logs it.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr, timeFormat=None)], redirectStandardIO=False)
    server = Server(config)
    if data.get("metrics"):
        server.metrics.shareThrough(data["metrics"])
    counts = data.get("connections")
    if counts:
        server.shareConnectionCounts(counts["directory"], int(counts["slot"]), int(counts["slots"]))
    top = server.workerService(sockets)
    wakeOut = os.fdopen(os.dup(1), "wb", buffering=0)

    def wake() -> None:
        try:
            wakeOut.write(b"wake\n")
        except OSError:
            pass

    server.queue.addObserver(wake)

    def stop() -> None:
        # The parent both closes the pipe and sends SIGTERM: stop once.
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass

    # twisted.internet.stdio picks its StandardIO by platform and mypy reads
    # the Windows one, which has no stdin or stdout arguments.
    stdio.StandardIO(_ParentWatch(stop), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]

    def stopOnSignal() -> None:
        # The reactor's own SIGTERM handler would stop it a second time,
        # after the closed pipe already had: take the signals ourselves.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: reactor.callFromThread(stop))  # type: ignore[attr-defined]

    reactor.callWhenRunning(stopOnSignal)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("worker ready, pid {pid}, serving {names}", pid=os.getpid(), names=", ".join(sorted(sockets)) or DISABLED)
    reactor.run()


if __name__ == "__main__":
    runWorker(readPayload())
