"""Safe ``torch.load`` for third-party checkpoints.

Checkpoints are first read with ``weights_only=True``. Research checkpoints often also pickle a training
config object (Chat-Scene saves its whole ``config``, an ``EasyDict``), which ``weights_only`` refuses. For
those we unpickle with a restricted unpickler: the globals torch itself allows under ``weights_only`` are
resolved, and every other class becomes an inert placeholder that only records the state it was given. A
placeholder may be *created* the way pickle restores a plain object (``NEWOBJ`` + ``BUILD``: how a config
object is pickled), but never *called* (``REDUCE``: how a pickle runs code, e.g. ``os.system``); a pickle
that calls anything beyond torch's allow-list is refused with :class:`CheckpointError` naming the global and
``--trust-checkpoint``. Every object torch reads goes through that unpickler, in every format: the zip
format, the legacy format and a plain pickle (whose first object torch's legacy reader reads with the pickle
module's ``load``). With ``trust=True`` (``--trust-checkpoint``) the file is loaded with
``weights_only=False``: full pickle, which runs whatever code the file holds.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import types
import warnings
from pathlib import Path
from typing import Any

from fast3d_cli.errors import CheckpointError

TRUST_HINT = (
    "pass --trust-checkpoint to load it with full pickle (weights_only=False), which runs any code the file "
    "holds: only for a checkpoint from a source you trust"
)


class InertObject(dict):
    """Stands in for an untrusted pickled object: keeps items, arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state


class UntrustedCall(Exception):
    """The pickle calls a global outside torch's ``weights_only`` allow-list."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _InertType(type):
    """Metaclass of the placeholders: ``cls.__new__`` (pickle's NEWOBJ) works, calling the class does not."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UntrustedCall(f"{cls.__module__.removeprefix('inert.')}.{cls.__qualname__}")


def _torch_allowed_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _torch_allowed_globals().get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        return _InertType(name, (InertObject,), {"__module__": f"inert.{module}", "__qualname__": name})


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`_RestrictedUnpickler`. torch's legacy (non-zip) reader calls the
    pickle module's ``load`` for the magic number, the header and the storage keys, so it must be restricted
    too: a plain pickle's first object is read this way."""
    return _RestrictedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) uses: every object it unpickles goes through the restricted unpickler.
_restricted_pickle = types.ModuleType("fast3d_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
_restricted_pickle.__dict__["Pickler"] = pickle.Pickler


def _first_line(err: BaseException) -> str:
    """The first sentence of ``err``'s message (torch's load errors run to several sentences)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


@contextlib.contextmanager
def quiet_torch_load():
    """torch warns when a file's pickle protocol is not its own default: noise for the user, not a risk."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def load_checkpoint(path: Path, trust: bool = False) -> Any:
    """Load ``path`` without executing pickled code; foreign classes come back as :class:`InertObject`.

    A pickle that would call a global outside torch's allow-list raises :class:`CheckpointError` (naming
    ``--trust-checkpoint``). ``trust=True`` loads with ``weights_only=False``: the file's code runs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if trust:
        try:
            with quiet_torch_load():
                return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # whatever the trusted pickle raises, the user sees one line
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from None
    try:
        with quiet_torch_load():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from None
    try:
        with quiet_torch_load():
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except UntrustedCall as err:
        raise CheckpointError(
            f"{path} is not a plain checkpoint: loading it calls {err.name}, which could run arbitrary code; "
            f"{TRUST_HINT}"
        ) from None
    except Exception as err:  # any failure of an untrusted file is a user-facing error, not a traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from None


def load_training_state_file(path: Path) -> Any:
    """A training-state file that accelerate's ``save_state`` wrote (``optimizer.bin``, ``scheduler.bin``,
    ``random_states_N.pkl``, ...), read the way ``accelerate.Accelerator.load_state`` reads it: ``torch.load``
    with ``weights_only=True``, which allows tensors, containers and accelerate's own globals for NumPy RNG
    states, and nothing that calls code. There is no ``--trust-checkpoint`` for these: fast3d wrote them.
    :class:`CheckpointError` with the reason (random bytes, a truncated file, a pickle that calls code).
    """
    from accelerate.utils import load as accelerate_load

    try:
        with quiet_torch_load():
            return accelerate_load(str(path), map_location="cpu")
    except Exception as err:  # any failure of the file is the user's error line, never a traceback
        reason = _weights_only_reason(err)
        raise CheckpointError(f"{path} cannot be read as a training state: {reason}") from None


def _weights_only_reason(err: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, from its long message: the global a pickle would call,
    or the unpickler's complaint about bytes that are no pickle."""
    text = str(err)
    called = re.search(r"unsupported GLOBAL (\S+)", text, re.IGNORECASE)
    if called:
        return f"it would call {called.group(1)}, which could run arbitrary code"
    complaint = re.search(r"Unpickler error:\s*(.+)", text)
    if complaint:
        return f"not a pickle of tensors ({complaint.group(1).strip()})"
    return _first_line(err)
