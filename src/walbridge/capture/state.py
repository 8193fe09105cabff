"""Local capture state (one small JSON file per capture under the state directory).

It records what the source cannot: whether the initial snapshot of a slot finished. The
streaming position itself lives in the source (slot's confirmed LSN, trigger offset table).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CaptureState"]


class CaptureState:
    def __init__(self, state_dir: str | Path, name: str) -> None:
        self.path = Path(state_dir) / "capture" / f"{name}.json"

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}

    def save(self, **values: Any) -> None:
        data = {**self.load(), **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)

    @property
    def snapshot_pending(self) -> bool:
        return bool(self.load().get("snapshot_pending", False))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
