"""
Two small IMAP clients for the benchmarks, reading replies to the tagged
status line and counting what came back (literals included, so a
C{\\r\\nx OK} inside a message body is never taken for the end):

  - L{BlockingIMAP}: one session on a blocking socket, the reply read by
    the C-level C{readline} of a buffered file (for the single-session
    big-mailbox timings, where the client's own cost must stay small);
  - L{AsyncIMAP}: one session on asyncio streams (for many concurrent
    sessions from one process).
"""

import asyncio
import re
import socket
from typing import List, Optional, Tuple

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class IMAPError(Exception):
    """
    A command ended with NO or BAD, or the server closed the connection.
    """


def _check(tag: bytes, status: bytes, command: bytes) -> bytes:
    if not status.startswith(tag + b" OK"):
        raise IMAPError(f"{command[:60]!r} answered {status.strip()[:300]!r}")
    return status


class BlockingIMAP:
    """
    One IMAP session on a blocking socket.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 600.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=1 << 20)
        self.greeting = self._line()
        self.counter = 0

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise IMAPError("the server closed the connection")
        return line

    def command(self, text: bytes) -> Tuple[List[bytes], int]:
        """
        Send one command and read its reply.

        @return: the untagged lines (each with its literals joined in)
            and the octets received.
        """
        self.counter += 1
        tag = b"t%d" % self.counter
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines: List[bytes] = []
        octets = 0
        current = b""
        while True:
            line = self._line()
            octets += len(line)
            m = _LITERAL.search(line)
            if m:
                data = self.file.read(int(m.group(1)))
                octets += len(data)
                current += line + data
                continue
            current += line
            if current.startswith(tag + b" "):
                _check(tag, current, text)
                return lines, octets
            lines.append(current)
            current = b""

    def login(self, user: str, password: str) -> None:
        self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))

    def close(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (IMAPError, OSError):
            pass
        self.file.close()
        self.sock.close()


class AsyncIMAP:
    """
    One IMAP session on asyncio streams.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> "AsyncIMAP":
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self = cls(reader, writer)
        greeting = await self._line()
        if not greeting.startswith(b"* OK"):
            raise IMAPError(f"greeting {greeting!r}")
        return self

    async def _line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise IMAPError("the server closed the connection")
        return line

    def _tag(self) -> bytes:
        self.counter += 1
        return b"t%d" % self.counter

    async def _reply(self, tag: bytes, text: bytes) -> List[bytes]:
        lines: List[bytes] = []
        current = b""
        while True:
            line = await self._line()
            m = _LITERAL.search(line)
            if m:
                current += line + await self.reader.readexactly(int(m.group(1)))
                continue
            current += line
            if current.startswith(tag + b" "):
                _check(tag, current, text)
                lines.append(current)
                return lines
            lines.append(current)
            current = b""

    async def command(self, text: bytes) -> List[bytes]:
        """
        Send one command; the untagged lines and, last, the tagged one.
        """
        tag = self._tag()
        self.writer.write(tag + b" " + text + b"\r\n")
        return await self._reply(tag, text)

    async def append(self, mailbox: bytes, flags: bytes, message: bytes) -> List[bytes]:
        """
        APPEND with a synchronising literal (both servers have LITERAL+,
        but the plain form is what every server takes).
        """
        tag = self._tag()
        text = b"APPEND %s (%s) {%d}" % (mailbox, flags, len(message))
        self.writer.write(tag + b" " + text + b"\r\n")
        line = await self._line()
        if not line.startswith(b"+"):
            raise IMAPError(f"APPEND answered {line!r}")
        self.writer.write(message + b"\r\n")
        return await self._reply(tag, text)

    async def idle(self, hold: float = 0.0) -> Optional[bytes]:
        """
        IDLE, wait for the continuation, stay C{hold} seconds, DONE.
        """
        tag = self._tag()
        self.writer.write(tag + b" IDLE\r\n")
        while True:
            line = await self._line()
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise IMAPError(f"IDLE answered {line!r}")
        if hold:
            await asyncio.sleep(hold)
        self.writer.write(b"DONE\r\n")
        lines = await self._reply(tag, b"IDLE")
        return lines[-1]

    async def close(self) -> None:
        try:
            await self.command(b"LOGOUT")
        except (IMAPError, OSError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
