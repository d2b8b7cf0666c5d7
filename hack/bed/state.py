"""What the running test bed is made of (pids, ports, URLs, versions): the ``State`` saved as ``state.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bed.base import REPO


def testbed_dir() -> Path:
    """The folder holding state, logs, certificates and data of the running test bed."""
    return Path(os.environ.get("SLIPWAY_TESTBED_DIR") or REPO / ".testbed").resolve()


@dataclass
class State:
    """What the running test bed is made of: pids, ports and URLs. Saved as state.json."""

    dir: str
    pids: dict[str, int] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    kubeconfig: str = ""
    kubectl: str = ""
    helm: str = ""
    token: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0

    @classmethod
    def load(cls, directory: Path) -> State | None:
        """The state saved in ``directory``, or None where no test bed was started there."""
        path = directory / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        """Write state.json atomically (a reader never sees half of it)."""
        path = Path(self.dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
