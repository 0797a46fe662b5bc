"""
A real mailplat server on loopback for end-to-end tests: the wiring of
L{mailplat.service.Server}, listening on ephemeral ports of 127.0.0.1.

Every listener the server makes is served: C{smtp}, C{submission},
C{smtps}, C{pop3}, C{pop3s}, C{imap} and C{imaps} (the implicit-TLS ones
speak TLS with the server's certificate, self-signed in the data directory
unless the overrides name one).
"""

import os
from dataclasses import replace
from typing import Dict, Iterable

from twisted.internet import defer, reactor, task
from twisted.protocols.policies import WrappingFactory

from mailplat.auth.passwd import PasswordFile
from mailplat.config import DEFAULT_LISTENERS, DISABLED, Config
from mailplat.service import Server


class LoopbackServer:
    """
    One running server.  L{start} listens; L{stop} closes the listeners
    and the store, as twistd would at shutdown.

    @ivar ports: listener name to the TCP port number it listens on.
    """

    def __init__(self, dataDir: str, **overrides: object) -> None:
        config = Config(
            hostname="mail.example.test",
            dataDir=dataDir,
            listeners={name: DISABLED for name in DEFAULT_LISTENERS},
        )
        self.config = replace(config, **overrides)
        self.ports: Dict[str, int] = {}
        self._listening: list = []

    def addUser(self, address: str, password: str) -> defer.Deferred:
        """
        What C{mailplat user add} does: an account and a password hash.
        """
        PasswordFile(os.path.join(self.config.dataDir, "passwd")).setPassword(address, password)
        return self.server.store.getAccount(address, create=True)

    def start(self) -> "LoopbackServer":
        """
        Build the server and listen on ephemeral loopback ports.
        """
        self.server = Server(self.config)
        self._wrappers = []
        for name, factory in self.server.factories.items():
            # Wrapped only to know the open connections, so stop() can
            # close what a client left open, as a server shutdown does.
            wrapper = WrappingFactory(factory)
            self._wrappers.append(wrapper)
            port = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
            self._listening.append(port)
            self.ports[name] = port.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self) -> Iterable[defer.Deferred]:
        """
        Stop listening and close the store.
        """
        for port in self._listening:
            yield port.stopListening()
        self._listening = []
        for wrapper in self._wrappers:
            for connection in list(wrapper.protocols):
                connection.transport.abortConnection()
        while any(wrapper.protocols for wrapper in self._wrappers):
            yield task.deferLater(reactor, 0.01, lambda: None)
        # As the server's StoreService does at shutdown: a queue holding
        # connections and threads (PostgreSQL) and the message index are
        # closed, then the store.
        for part in (self.server.queue, self.server.directoryFile, self.server.index):
            close = getattr(part, "close", None)
            if close is not None:
                yield close()
        yield self.server.store.close()


class IdleClient:
    """
    A raw-socket IMAP client that logs in, selects INBOX and idles (RFC
    2177), for tests that must see exactly what the server pushes.  Its
    methods block: call them with C{threads.deferToThread}.
    """

    def __init__(self, port: int, user: str, password: str) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = self.sock.makefile("rb")
        self.user = user
        self.password = password

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def readUntil(self, prefix: bytes) -> list:
        """
        The lines the server sends up to and including one that starts
        with C{prefix}.
        """
        lines = []
        while True:
            line = self.reader.readline()
            if not line:
                raise AssertionError(f"connection closed; got {lines!r}")
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def startIdle(self) -> list:
        """
        Log in, SELECT INBOX and start IDLE; the SELECT's lines.
        """
        self.readUntil(b"* OK")
        self.sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (self.user.encode(), self.password.encode()))
        self.readUntil(b"a ")
        self.sock.sendall(b"b SELECT INBOX\r\n")
        selected = self.readUntil(b"b ")
        self.sock.sendall(b"c IDLE\r\n")
        self.readUntil(b"+ ")
        return selected

    def finishIdle(self, expected: bytes) -> tuple:
        """
        Wait for a pushed line starting with C{expected}, then end IDLE;
        the lines up to it and IDLE's tagged answer.
        """
        woken = self.readUntil(expected)
        self.sock.sendall(b"DONE\r\n")
        return woken, self.readUntil(b"c ")
