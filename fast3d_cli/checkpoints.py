"""Safe ``torch.load`` for third-party checkpoints.

Checkpoints are first read with ``weights_only=True``. Research checkpoints often also pickle a training
config object (Chat-Scene saves its whole ``config``, an EasyDict-like class), which ``weights_only`` refuses.
For those we unpickle with a restricted unpickler: the globals torch itself allows under ``weights_only`` are
resolved, every other class becomes an inert placeholder that only records the state it was given, and no
pickled callable ever runs.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

from fast3d_cli.errors import CheckpointError


class InertObject(dict):
    """Stands in for an untrusted pickled object: keeps items, arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _torch_allowed_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _torch_allowed_globals().get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        return type(name, (InertObject,), {"__module__": f"inert.{module}", "__qualname__": name})


_restricted_pickle = types.ModuleType("fast3d_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = pickle.load  # type: ignore[attr-defined]
_restricted_pickle.__dict__["Pickler"] = pickle.Pickler


def load_checkpoint(path: Path) -> Any:
    """Load ``path`` without executing pickled code; foreign classes come back as :class:`InertObject`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(err).strip().splitlines()[0]}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except Exception as err:  # any failure of an untrusted file is a user-facing error, not a traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {str(err).strip().splitlines()[0]}") from None
