"""Checkpoints: a folder of safetensors weights + JSON config + tokenizer. Never a pickle.

    CKPT/config.json           family, model config, training record
    CKPT/tokenizer.json
    CKPT/model.safetensors
    CKPT/optimizer.safetensors + CKPT/trainer_state.json   (for --resume)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from seqserve.data import Tokenizer
from seqserve.errors import SeqserveError
from seqserve.io import atomic_dir, write_json
from seqserve.models import build_model, config_from_dict

FORMAT = "seqserve-checkpoint/1"


@dataclass
class Checkpoint:
    path: Path
    family: str
    model: torch.nn.Module     # in eval mode
    tokenizer: Tokenizer
    info: dict                 # the whole config.json


def save_checkpoint(out: str | Path, family: str, model, tokenizer: Tokenizer, training: dict,
                    optimizer: torch.optim.Optimizer | None = None, trainer_state: dict | None = None) -> Path:
    with atomic_dir(out, "config.json") as tmp:
        save_model(model, str(tmp / "model.safetensors"))   # handles tied (shared) weights
        write_json(tmp / "config.json", {"format": FORMAT, "family": family,
                                         "model": asdict(model.config), "training": training})
        write_json(tmp / "tokenizer.json", tokenizer.to_json())
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            write_json(tmp / "trainer_state.json", {"optimizer": meta, **(trainer_state or {})})
    return Path(out)


def read_checkpoint_info(path: str | Path) -> dict:
    path = Path(path)
    cfg = path / "config.json"
    if not path.is_dir():
        raise SeqserveError(f"checkpoint {path} is not a folder; expected the output of `seqserve train`")
    if not cfg.is_file():
        raise SeqserveError(f"checkpoint {path} has no config.json; expected the output of `seqserve train`")
    try:
        info = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SeqserveError(f"checkpoint {cfg} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(info, dict):
        raise SeqserveError(f"checkpoint {cfg} holds a JSON {type(info).__name__}; expected an object")
    if info.get("format") != FORMAT:
        raise SeqserveError(f"checkpoint {cfg} has format {info.get('format')!r}; expected {FORMAT!r}")
    return info


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        tokenizer = Tokenizer.from_json(json.loads((path / "tokenizer.json").read_text()))
        model = build_model(info["family"], config_from_dict(info["family"], info["model"]))
    except FileNotFoundError:
        raise SeqserveError(f"checkpoint {path} has no tokenizer.json") from None
    except json.JSONDecodeError as e:
        raise SeqserveError(f"checkpoint {path}/tokenizer.json is not valid JSON ({e.msg})") from None
    except SeqserveError as e:
        raise SeqserveError(f"checkpoint {path}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        # e.g. "model" not an object, a negative vocab_size (torch raises RuntimeError)
        raise SeqserveError(f"checkpoint {path} has a bad config or tokenizer: {e}") from None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise SeqserveError(f"checkpoint {path} has no model.safetensors")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise SeqserveError(f"checkpoint weights {weights} are corrupt or do not fit the config: {e}") from None
    if missing or unexpected:
        raise SeqserveError(f"checkpoint weights {weights} do not match the model: missing {missing}, unexpected {unexpected}")
    return Checkpoint(path, info["family"], model.eval(), tokenizer, info)


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimizer state saved with the checkpoint; returns trainer_state.json."""
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        tensors = load_file(str(path / "optimizer.safetensors"))
        sd = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise SeqserveError(f"checkpoint {path} cannot be resumed: no readable optimizer state ({e})") from None
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        sd["state"].setdefault(int(idx), {})[name] = t
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise SeqserveError(f"checkpoint {path} cannot be resumed: its optimizer state does not fit the model ({e})") from None
    return state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"{idx}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}
