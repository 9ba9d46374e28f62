"""Incremental text assembly for streaming: UTF-8 boundaries and stop strings."""
from __future__ import annotations


def utf8_complete_prefix(buf: bytes) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside a UTF-8 sequence."""
    n = len(buf)
    i = n - 1
    # Look back at most 3 bytes for the lead byte of an unfinished sequence.
    while i >= 0 and i >= n - 4:
        b = buf[i]
        if b & 0xC0 != 0x80:  # lead byte or ASCII
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            return n if n - i >= need else i
        i -= 1
    return n


class StopScanner:
    """Feeds decoded text, yields what is safe to emit, and reports a stop string match.

    Text that could be the beginning of a stop string is held back until it is decided.
    """

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = 0
        for s in self.stop:  # longest suffix of pending that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
