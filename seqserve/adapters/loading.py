"""A user's module from `FILE.py:NAME`, and weights into it — never by unpickling.

Every failure is one SeqserveError saying what was wrong and what was expected, raised before
anything is written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

from seqserve.errors import SeqserveError

CONVERT = ("python -c \"import torch; m = torch.load('{path}', weights_only=False); "
           "torch.save(m.state_dict(), '{path}.state_dict.pt')\"")


def load_callable(ref: str, what: str = "factory"):
    """'FILE.py:NAME' -> the object NAME defined in FILE.py (imported as a fresh module, with
    FILE's folder on sys.path so its own imports work)."""
    path, sep, name = str(ref).rpartition(":")
    if not sep or not path or not name:
        raise SeqserveError(f"--{'module' if what == 'factory' else what} {ref!r} is not FILE.py:NAME "
                            f"(e.g. mymodel.py:build)")
    file = Path(path)
    if not file.is_file():
        raise SeqserveError(f"{what} file {file} does not exist")
    mod_name = f"seqserve_user_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        raise SeqserveError(f"{what} file {file} cannot be imported as Python (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    try:
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise SeqserveError(f"importing {file} failed: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == mod_name)
        raise SeqserveError(f"{file} defines no {name!r}; it defines {', '.join(defined) or 'nothing callable'}")
    return getattr(module, name)


def build_module(ref: str) -> torch.nn.Module:
    """Call the factory FILE.py:NAME -> the user's nn.Module, in eval mode."""
    factory = load_callable(ref)
    try:
        model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    except Exception as e:
        raise SeqserveError(f"the factory {ref} raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise SeqserveError(f"the factory {ref} returned {type(model).__name__}; expected a torch.nn.Module")
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors, or a PyTorch state_dict file read with torch.load(weights_only=True). A
    checkpoint dict holding the state dict under a usual key ('state_dict', 'model_state_dict',
    'model') is unwrapped; a pickled whole model is refused with the one line that converts it."""
    path = Path(path)
    if not path.is_file():
        raise SeqserveError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise SeqserveError(f"weights file {path} is not readable safetensors: {_first_line(e)}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:    # UnpicklingError for a pickled module/class; other errors for non-torch files
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise SeqserveError(f"weights file {path} is a pickled object, not a state dict; seqserve never unpickles "
                                f"code. Convert it once, where you trust it: {CONVERT.format(path=path)}") from None
        raise SeqserveError(f"weights file {path} is not a PyTorch state dict or safetensors: {_first_line(e)}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SeqserveError(f"weights file {path} holds a {type(obj).__name__} that is not a name -> tensor state dict")
    return obj


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load `path` into `model`; every missing or unexpected key and every shape mismatch is listed."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs the module's {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {_some(missing)}" if missing else "", f"unexpected {_some(unexpected)}" if unexpected else "",
                 f"different shapes: {_some(shapes)}" if shapes else ""]
        raise SeqserveError(f"weights {path} do not fit the module: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def _some(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]
