"""Checkpoint files read without running code (``torch.load(weights_only=True)`` or safetensors), and weight hashes.

A file holding pickled Python objects is refused in one line that says how to convert it to a state_dict.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile

import torch
from store.validation import UserError, one_line

__all__ = ["load_weights_only", "read_state_dict", "require_file", "weights_sha256"]

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_SAVE_HINT = "save it with torch.save(model.state_dict(), path) (tensors only) or as .safetensors"


def require_file(path: str, spec: str) -> None:
    """``FileNotFoundError`` naming the ``@`` part of ``spec`` when the checkpoint ``path`` is not a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} for backbone {spec!r} not found; check the path after '@'")


def _load_safetensors(path: str, probe: bool):
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        if probe:
            with safe_open(path, framework="pt") as handle:
                handle.keys()
            return None
        return load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise UserError(f"cannot read checkpoint {path} as safetensors ({one_line(err, 300)})") from None


def _unpickling_refusal(path: str, err: pickle.UnpicklingError) -> UserError:
    """The one-line error for a file ``weights_only`` refused: Python objects in it (named), or a damaged file."""
    text = one_line(err, limit=10_000)
    found = sorted(set(_UNSAFE_GLOBAL.findall(text)))
    if not found:  # not a pickle of allowed types, nor one naming code: a damaged or foreign file
        detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        return UserError(f"cannot read checkpoint {path} ({(detail.group(1) if detail else text)[:300]}); "
                          f"{_SAVE_HINT}")
    return UserError(
        f"checkpoint {path} holds Python objects ({', '.join(found)}), not only tensors (e.g. a whole pickled "
        "model): loading it could run code, so it is refused; where you trust the file, convert it to a "
        f"state_dict: python -c \"import torch; m = torch.load('{path}', weights_only=False); torch.save("
        "m.state_dict() if hasattr(m, 'state_dict') else m['state_dict'], 'state_dict.pth')\" and pass "
        "@state_dict.pth instead"
    )


def load_weights_only(path: str, probe: bool = False):
    """``torch.load(weights_only=True)`` (or safetensors) of a checkpoint, its refusals as one-line ``ValueError``.

    ``probe=True`` only checks that the file can be read safely: tensors are memory-mapped (zip checkpoints) or, for
    safetensors, only the header is read; returns None.
    """
    if path.endswith(".safetensors"):
        return _load_safetensors(path, probe)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=probe and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise _unpickling_refusal(path, err) from None
    except Exception as err:  # zip / legacy-format / storage errors of a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path} ({one_line(err, 300)}); {_SAVE_HINT}") from None
    return None if probe else obj


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: plain, or nested under ``state_dict`` / ``model`` (optionally DDP'd)."""
    obj = load_weights_only(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"checkpoint {path} is not a state_dict (a dict of tensors, plain or under 'state_dict'/'model'); "
            "save it with torch.save(model.state_dict(), path)"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def weights_sha256(module_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict: for each key in sorted order, the key, dtype, shape and the raw tensor bytes.

    Deterministic for equal weights regardless of device (tensors are hashed from CPU copies).
    """
    sd = module_or_state_dict
    if isinstance(sd, torch.nn.Module):
        sd = sd.state_dict()
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(f"|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
