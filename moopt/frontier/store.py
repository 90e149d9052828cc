"""A directory of finished sweep points, written atomically, one file per point.

Layout: ``<root>/<key>.json`` holds a finished point (configuration, losses, multipliers,
seconds); ``<root>/<key>.pt`` holds the trained state (model weights and MDMM multipliers)
that the next run of an ε chain starts from. Each file is written to a temporary name in
the same directory and moved into place with ``os.replace`` (atomic on POSIX and Windows),
the state before the record, so a point is *finished* exactly when its ``.json`` exists: a
process killed at any moment leaves either the whole point or none of it.

Several processes (executor workers) may write to one store at once: keys differ per
point, and a point written twice (two racing re-runs) is replaced atomically by an
equivalent one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import tempfile
from pathlib import Path

import torch

from moopt.frontier._config import PointConfig


@dataclasses.dataclass
class PointRecord:
    """One finished run.

    Attributes:
        config: what was run.
        losses: the K final task losses the training function returned.
        multipliers: the final MDMM multipliers (``"epsilon"`` runs), else ``None``.
        seconds: wall-clock seconds the run took.
        key: the store key of the point.
        process: ``"host:pid"`` of the process that trained the point.
        from_store: ``True`` when this record was loaded from a store instead of computed
            by the current call.
    """

    config: PointConfig
    losses: tuple[float, ...]
    multipliers: tuple[float, ...] | None
    seconds: float
    key: str
    process: str = ""
    from_store: bool = False

    def to_dict(self) -> dict:
        """JSON-serialisable form (``from_store`` is not saved)."""
        return {
            "config": self.config.to_dict(),
            "losses": list(self.losses),
            "multipliers": None if self.multipliers is None else list(self.multipliers),
            "seconds": self.seconds,
            "key": self.key,
            "process": self.process,
        }

    @classmethod
    def from_dict(cls, data: dict, from_store: bool = False) -> PointRecord:
        """Inverse of :meth:`to_dict`."""
        multipliers = data.get("multipliers")
        return cls(
            config=PointConfig.from_dict(data["config"]),
            losses=tuple(float(v) for v in data["losses"]),
            multipliers=None if multipliers is None else tuple(float(v) for v in multipliers),
            seconds=float(data.get("seconds", 0.0)),
            key=str(data["key"]),
            process=str(data.get("process", "")),
            from_store=from_store,
        )


def this_process() -> str:
    """``"host:pid"`` of the calling process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _atomic_write(path: Path, payload: bytes) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class PointStore:
    """Finished sweep points in a directory (created if missing).

    Args:
        root: the directory. Use one directory per training setup: the key hashes the
            point's configuration and the sweep's fingerprint, not the code of a user's
            training function.
        save_states: also keep each run's trained state (needed to resume an ε chain
            half-way without redoing its finished runs; large for big models).
    """

    def __init__(self, root: str | os.PathLike, save_states: bool = True) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"store must be a path or a PointStore; got {type(root).__name__}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.save_states = bool(save_states)

    def __repr__(self) -> str:
        return f"PointStore({str(self.root)!r})"

    def __reduce__(self) -> tuple:
        return (PointStore, (str(self.root), self.save_states))

    def __contains__(self, key: str) -> bool:
        return (self.root / f"{key}.json").exists()

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """Keys of every finished point, sorted."""
        return sorted(path.stem for path in self.root.glob("*.json"))

    def get(self, key: str) -> PointRecord | None:
        """The finished point with this key, or ``None``."""
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        return PointRecord.from_dict(json.loads(path.read_text()), from_store=True)

    def state(self, key: str) -> dict | None:
        """The saved trained state of a point, or ``None`` when not saved."""
        path = self.root / f"{key}.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, record: PointRecord, state: dict | None = None) -> None:
        """Write a finished point (state first, then the record that marks it finished)."""
        if state is not None and self.save_states:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            _atomic_write(self.root / f"{record.key}.pt", buffer.getvalue())
        payload = json.dumps(record.to_dict(), indent=1, sort_keys=True).encode()
        _atomic_write(self.root / f"{record.key}.json", payload)

    def records(self) -> list[PointRecord]:
        """Every finished point in the store."""
        return [record for key in self.keys() if (record := self.get(key)) is not None]
