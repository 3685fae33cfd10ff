"""Model-based test of the tailer: random write / rotate / truncate / delete / restart sequences
on real files, checked against an in-memory model of what must come out.

What the model guarantees: every complete line is emitted exactly once, in write order per
file. What it allows to be lost, precisely:
  * truncation: lines (and the unterminated tail) that were written to a file but not yet read
    by a poll when the file was truncated;
  * unseen files: lines of a file that left the path (renamed away or deleted) before any poll
    opened it, or while the tailer was stopped and the file was deleted.
A truncation is noticed by the file being shorter than the read offset, so the model polls
before the truncated file grows again (``needs_poll``); NGINX appends whole lines and inotify
wakes the tailer on the truncation itself, so in practice that window is milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from logwarden.ops.metrics import Metrics
from logwarden.sources.file import FileSource
from logwarden.sources.positions import Positions


@dataclass
class ModelFile:
    name: str
    deleted: bool = False
    lines: list[bytes] = field(default_factory=list)  # every complete line, in write order
    partial: bytes = b""
    read_upto: int = 0  # lines a poll has read (and so emitted)
    known: bool = False  # a poll opened it once: the positions file knows its inode
    held: bool = False  # open in the running tailer


class TailerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lw-model-"))
        self.path = self.dir / "access.log"
        self.loop = asyncio.new_event_loop()
        self.metrics = Metrics()
        self.positions_path = self.dir / "positions.json"
        self.files: dict[int, ModelFile] = {}  # by a model id
        self.at_path: int | None = None
        self.next_id = 0
        self.counter = 0
        self.lost: set[bytes] = set()
        self.emitted: list[bytes] = []
        self.needs_poll = False
        self.source: FileSource | None = None
        self.queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        self._create()
        self._start()

    # -- helpers --------------------------------------------------------------------------------

    def _create(self) -> None:
        self.path.write_bytes(b"")
        self.files[self.next_id] = ModelFile(self.path.name)
        self.at_path = self.next_id
        self.next_id += 1

    def _start(self) -> None:
        self.positions = Positions(self.positions_path)
        self.source = FileSource(self.path, self.queue, self.metrics, positions=self.positions,
                                 from_start=True, rotate_wait=0, max_line_bytes=1 << 20)

    def _line(self, size: int) -> bytes:
        self.counter += 1
        return b"L%d-" % self.counter + b"x" * size

    def _append(self, data: bytes) -> None:
        assert self.at_path is not None
        with open(self.path, "ab") as fh:
            fh.write(data)

    # -- rules ----------------------------------------------------------------------------------

    @precondition(lambda self: self.at_path is not None and not self.needs_poll)
    @rule(size=st.integers(0, 30), count=st.integers(1, 3))
    def append_lines(self, size: int, count: int) -> None:
        assert self.at_path is not None
        model = self.files[self.at_path]
        data = b""
        for _ in range(count):
            new = self._line(size)
            model.lines.append(model.partial + new)  # the partial is in the file already
            model.partial = b""
            data += new + b"\n"
        self._append(data)

    @precondition(lambda self: self.at_path is not None and not self.needs_poll)
    @rule(size=st.integers(1, 10))
    def append_partial(self, size: int) -> None:
        assert self.at_path is not None
        model = self.files[self.at_path]
        piece = (b"P%d-" % self.counter) + b"p" * size if not model.partial else b"q" * size
        self.counter += 1
        model.partial += piece
        self._append(piece)

    @precondition(lambda self: self.at_path is not None)
    @rule()
    def rename_rotate(self) -> None:
        assert self.at_path is not None
        model = self.files[self.at_path]
        rotated = self.dir / f"access.log.{self.next_id}"
        os.rename(self.path, rotated)
        model.name = rotated.name
        self._rotated_away(model)
        self._create()

    @precondition(lambda self: self.at_path is not None)
    @rule()
    def delete(self) -> None:
        assert self.at_path is not None
        model = self.files[self.at_path]
        os.unlink(self.path)
        model.deleted = True
        if not model.held:  # nobody holds it open: what was not read is gone
            self._lose_unread(model)
        self._rotated_away(model)
        self.at_path = None

    @precondition(lambda self: self.at_path is None)
    @rule()
    def recreate(self) -> None:
        self._create()

    @precondition(lambda self: self.at_path is not None)
    @rule(copy=st.booleans())
    def truncate(self, copy: bool) -> None:
        assert self.at_path is not None
        model = self.files[self.at_path]
        if copy:  # copytruncate: the copy is not tailed
            shutil.copyfile(self.path, self.dir / f"copy.{self.counter}")
        os.truncate(self.path, 0)
        self._lose_unread(model)
        model.read_upto = len(model.lines)  # what follows is new content
        if model.known:
            self.needs_poll = True

    @precondition(lambda self: self.source is not None)
    @rule()
    def poll(self) -> None:
        assert self.source is not None
        self.loop.run_until_complete(self.source.poll())
        self._collect()
        self.needs_poll = False
        for i, model in self.files.items():
            if i == self.at_path or (model.known and not model.deleted):
                model.known = model.held = True  # at the path, or found again by inode
            if model.held:
                model.read_upto = len(model.lines)

    @precondition(lambda self: self.source is not None and not self.needs_poll)
    @rule()
    def stop(self) -> None:
        """A graceful stop, as ``FileSource.run()`` ends: one last poll, save, close."""
        assert self.source is not None
        self.source.stop()
        self.poll()
        self.positions.save()
        self.source.close()
        self.source = None
        for model in self.files.values():
            model.held = False
        emitted = set(self.emitted)
        for model in self.files.values():  # a deleted file's unterminated tail is gone now
            if model.deleted:
                self.lost.update(line for line in model.lines if line not in emitted)

    @precondition(lambda self: self.source is None)
    @rule()
    def start(self) -> None:
        self._start()

    # -- model bookkeeping ----------------------------------------------------------------------

    def _rotated_away(self, model: ModelFile) -> None:
        """The file left the path: its partial line now counts as complete (emitted at close)."""
        if model.partial:
            model.lines.append(model.partial)
            model.partial = b""
        if not model.known:  # never opened: positions cannot find it again
            self._lose_unread(model)

    def _lose_unread(self, model: ModelFile) -> None:
        self.lost.update(model.lines[model.read_upto:])
        if model.partial:
            self.lost.add(model.partial)
            model.partial = b""

    def _collect(self) -> None:
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            assert batch is not None
            self.emitted.extend(batch)
            if batch.checkpoint is not None:
                self.positions.commit(batch.checkpoint)

    # -- checks ---------------------------------------------------------------------------------

    @invariant()
    def nothing_twice(self) -> None:
        assert len(self.emitted) == len(set(self.emitted)), "a line was emitted twice"

    def teardown(self) -> None:
        try:
            if self.source is None:
                self._start()
            for _ in range(2):  # one poll reads, the next closes quiet rotated files
                self.poll()
            written = [line for m in self.files.values() for line in m.lines]
            expected = [line for line in written if line not in self.lost]
            missing = set(expected) - set(self.emitted)
            extra = set(self.emitted) - set(written)
            assert not missing, f"lines lost: {sorted(missing)}"
            assert not extra, f"lines never written: {sorted(extra)}"
            for model in self.files.values():  # write order kept per file
                order = [line for line in self.emitted if line in set(model.lines)]
                assert order == [line for line in model.lines if line in set(order)]
        finally:
            if self.source is not None:
                self.source.close()
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TailerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                           deadline=None)
test_tailer_model = TailerMachine.TestCase
