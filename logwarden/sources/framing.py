"""Cut what a source reads into complete lines: a file or a pipe gives any number of bytes.

A read may end inside a line; its start waits for the rest (``partial``). A line longer than
``max_line_bytes`` is left out and counted by the caller, also when it spans reads: the rest of
it is discarded up to its newline (``skipping``). Bytes are never decoded.
"""

from __future__ import annotations


class LineBuffer:
    """The bytes of a line not yet complete, for one stream (a file, a pipe)."""

    __slots__ = ("partial", "skipping")

    def __init__(self) -> None:
        self.partial = b""
        self.skipping = False
        """True while discarding the rest of a line that exceeded the limit."""

    def complete(self, chunk: bytes, limit: int) -> tuple[bytes, int]:
        """The complete lines ``chunk`` ends, each with its newline, as one block (not split:
        the processor tests them in the block), and how many over-long lines were left out."""
        data = self.partial + chunk if self.partial else chunk
        if self.skipping:  # the first piece ends an over-long line we are discarding
            end = data.find(b"\n")
            if end < 0:
                self.partial = b""
                return b"", 0
            data = data[end + 1:]
            self.skipping = False
        end = data.rfind(b"\n") + 1
        block, self.partial = data[:end], data[end:]
        too_long = 0
        if len(self.partial) > limit:
            too_long += 1
            self.partial, self.skipping = b"", True
        if _may_hold_longer(block, limit):
            lines = block.split(b"\n")
            lines.pop()  # after the last newline
            kept = [line + b"\n" for line in lines if len(line) <= limit]
            if len(kept) < len(lines):
                too_long += len(lines) - len(kept)
                block = b"".join(kept)
        return block, too_long

    def rest(self) -> bytes:
        """The unterminated last line, now complete (its stream ended), with a newline; b"" if
        there is none. The buffer is empty afterwards."""
        last = self.partial  # b"" while skipping
        self.partial, self.skipping = b"", False
        return last + b"\n" if last else b""


def _may_hold_longer(block: bytes, limit: int) -> bool:
    """False when no line of ``block`` is longer than ``limit``, told from a newline in each
    window of ``limit // 2 + 1`` bytes (a longer line would span one): ~32 finds per MiB
    instead of a split. True: split and look."""
    step = limit // 2 + 1
    find = block.find
    return any(find(b"\n", i, i + step) < 0 for i in range(0, len(block), step))
