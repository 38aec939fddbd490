"""The highest commit count a store has answered, kept on disk beside the server.

A running server notices Redis coming back from an older state (a restored append-only
file, a replica that lagged) by its commit count going below what was answered (see
script_pipe.py), and stops. That knowledge lived in the process only: the next start took
the older store as it was, handing out again sequences clients had seen and client order
ids they had been answered for. Kept here, per store identity, it outlives the process.
"""

from __future__ import annotations

import os
from pathlib import Path


class CommitFloorFile:
    def __init__(self, data_dir: Path, store_identity: str) -> None:
        self.path = data_dir / "commit-floors" / store_identity
        self._saved = -1

    def read(self) -> int:
        """The floor last saved for this store; 0 for none."""
        try:
            self._saved = int(self.path.read_text())
        except FileNotFoundError:
            self._saved = 0
        return self._saved

    def save(self, floor: int) -> None:
        """Record `floor` if it is higher than what is saved: replaced whole, never torn."""
        if floor <= self._saved:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(str(floor))
        os.replace(partial, self.path)
        self._saved = floor
