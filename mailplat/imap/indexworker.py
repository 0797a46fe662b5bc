"""
The message index's parser process: the Python work of indexing a
delivered message (parse it, summarise it, decode and fold its text, make
the indexed form of that text) done in a child process, so that it does
not hold the serving process's GIL (as Dovecot's C{indexer-worker}
processes do its full-text indexing).

The index's writing thread (L{MessageIndex <mailplat.imap.index.MessageIndex>})
hands each delivered message above L{OFFLOAD_MIN} octets to its
L{Analyser}, which sends it to the child over a pipe and reads back what
the SQLite rows need (L{mailplat.imap.index.analyse}); the SQLite writes
stay in the serving process.  The child is started at the first such
message, reads requests until its standard input closes, and is started
again after a failure; when it cannot be run, or fails three times in a
row, the message is analysed in the thread instead (as smaller ones are):
the index never loses a message to the child.

The pipe carries frames: an 8-octet little-endian length, then that many
octets.  A request is one frame, the message.  A reply is a frame of one
octet, C{1} (then the summary frame, a frame of one octet saying whether
the text is stored, and when it is the four text frames, UTF-8) or C{0}
(then a frame with the error text: the message could not be analysed).

    python -m mailplat.imap.indexworker
"""

import struct
import subprocess
import sys
import threading
from typing import BinaryIO, List, Optional, Tuple

from twisted.logger import Logger

__all__ = ["Analyser", "AnalysisFailed", "OFFLOAD_MIN", "main"]

log = Logger()

#: Messages of at least this many octets are analysed in the child; for
#: smaller ones the trip costs more than it saves.
OFFLOAD_MIN = 16 * 1024
#: Failures in a row after which the child is not started again.
MAX_FAILURES = 3

_LENGTH = struct.Struct("<Q")

#: What the index stores of a message: the encoded summary, and the text
#: (head, body, and their indexed forms) or L{None} when it is not stored.
Analysis = Tuple[bytes, Optional[Tuple[str, str, str, str]]]


class AnalysisFailed(Exception):
    """
    The message could not be analysed (the child's error text).
    """


def _writeFrame(out: BinaryIO, data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _readExactly(source: BinaryIO, n: int) -> bytes:
    data = source.read(n)
    if data is None or len(data) != n:
        raise EOFError("the index parser closed its output")
    return data


def _readFrame(source: BinaryIO) -> bytes:
    (n,) = _LENGTH.unpack(_readExactly(source, _LENGTH.size))
    return _readExactly(source, n)


def _writeAnalysis(out: BinaryIO, analysis: Analysis) -> None:
    blob, text = analysis
    _writeFrame(out, b"\x01")
    _writeFrame(out, blob)
    if text is None:
        _writeFrame(out, b"\x00")
        return
    _writeFrame(out, b"\x01")
    for part in text:
        _writeFrame(out, part.encode("utf-8"))


def _readAnalysis(source: BinaryIO) -> Analysis:
    status = _readFrame(source)
    if status == b"\x00":
        raise AnalysisFailed(_readFrame(source).decode("utf-8", "replace"))
    if status != b"\x01":
        raise ValueError(f"the index parser answered {status[:20]!r}")
    blob = _readFrame(source)
    if _readFrame(source) == b"\x00":
        return blob, None
    head, body, indexedHead, indexedBody = (_readFrame(source).decode("utf-8") for _ in range(4))
    return blob, (head, body, indexedHead, indexedBody)


def main() -> None:
    """
    The child: analyse each message read from standard input and write the
    result to standard output, until standard input closes.
    """
    from mailplat.imap.index import analyse

    source = sys.stdin.buffer
    out = sys.stdout.buffer
    while True:
        try:
            content = _readFrame(source)
        except EOFError:
            return
        try:
            analysis = analyse(content)
        except Exception as e:
            _writeFrame(out, b"\x00")
            _writeFrame(out, f"{type(e).__name__}: {e}".encode("utf-8", "replace"))
        else:
            _writeAnalysis(out, analysis)
        out.flush()


class Analyser:
    """
    Analyses messages for the index: those of at least C{minimum} octets in
    the child process, the others (and all of them when the child cannot
    run) on the calling thread.  Safe to call from several threads (one
    message at a time goes to the child).

    @ivar minimum: the smallest message sent to the child; L{None} keeps
        every message on the calling thread.
    @ivar offloaded: how many messages the child analysed.
    """

    def __init__(self, minimum: Optional[int] = OFFLOAD_MIN, argv: Optional[List[str]] = None) -> None:
        """
        @param argv: the command that runs the child (by default this
            interpreter with C{-m mailplat.imap.indexworker}).
        """
        self.minimum = minimum
        self.offloaded = 0
        self._argv = argv or [sys.executable, "-m", "mailplat.imap.indexworker"]
        self._lock = threading.Lock()
        self._process: Optional["subprocess.Popen[bytes]"] = None
        self._failures = 0
        self._closed = False

    def analyse(self, content: bytes) -> Analysis:
        """
        What the index stores of C{content}.

        @raise Exception: the message cannot be analysed (the child's
            failure is L{AnalysisFailed}).
        """
        from mailplat.imap.index import analyse

        if self.minimum is None or len(content) < self.minimum:
            return analyse(content)
        with self._lock:
            if not self._closed and self._failures < MAX_FAILURES:
                try:
                    process = self._start()
                    assert process.stdin is not None and process.stdout is not None
                    _writeFrame(process.stdin, content)  # type: ignore[arg-type]
                    process.stdin.flush()
                    analysis = _readAnalysis(process.stdout)  # type: ignore[arg-type]
                except AnalysisFailed:
                    self._failures = 0
                    raise
                except (OSError, EOFError, ValueError, struct.error) as e:
                    self._failures += 1
                    self._stop()
                    log.warn("message index parser failed ({error}); indexing in the server process{more}",
                             error=str(e) or type(e).__name__,
                             more="" if self._failures < MAX_FAILURES else " from now on")
                else:
                    self._failures = 0
                    self.offloaded += 1
                    return analysis
        return analyse(content)

    def _start(self) -> "subprocess.Popen[bytes]":
        if self._process is None or self._process.poll() is not None:
            # The environment as it is, as for the worker processes.  A
            # session of its own: Ctrl-C at the terminal running the server
            # does not reach the child (not even while it starts); it ends
            # when the server closes the pipe.
            self._process = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                             start_new_session=True)
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """
        Stop the child (its standard input closes, and it exits).
        """
        with self._lock:
            self._closed = True
            self._stop()


if __name__ == "__main__":
    main()
