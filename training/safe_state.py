"""Nested training state to one safetensors file and back, without pickle.

Optimizer, LR-schedule, EMA and RNG states are nests of dicts, lists and tuples holding tensors and
plain numbers. `torch.save` pickles such nests, and unpickling a crafted file runs arbitrary code.
Here every tensor goes into the safetensors payload (raw bytes, never executed) and the rest of the
nest becomes JSON in the file's metadata, so reading a file can only ever produce dicts, lists,
tuples, numbers, strings and tensors. Tuples and dicts with integer keys (an optimizer's per-
parameter state) are tagged so they come back as they went in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from studio.errors import CheckpointError

_TREE = "studio_state"
_TENSOR, _TUPLE, _INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"
_TAGS = (_TENSOR, _TUPLE, _INT_KEYS)


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        # a private contiguous CPU copy: safetensors refuses views and tensors sharing storage
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: path}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {_INT_KEYS: [[k, _encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
        if not all(isinstance(k, str) for k in obj) or any(k in _TAGS for k in obj):
            raise TypeError(f"cannot store a dict with keys {list(obj)[:4]} at {path or '/'}")
        return {k: _encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {path or '/'} without pickle")


def _decode(tree: Any, tensors: dict[str, torch.Tensor] | None) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return None if tensors is None else tensors[tree[_TENSOR]]
        if _TUPLE in tree:
            return tuple(_decode(v, tensors) for v in tree[_TUPLE])
        if _INT_KEYS in tree:
            return {int(k): _decode(v, tensors) for k, v in tree[_INT_KEYS]}
        return {k: _decode(v, tensors) for k, v in tree.items()}
    return tree


def write_state(path: Path, state: Any) -> None:
    """Write ``state`` (a nest of dicts, lists, tuples, tensors and JSON scalars) to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors, ""))
    save_file(tensors, str(path), metadata={_TREE: tree})


def read_state(path: Path, tensors: bool = True) -> Any:
    """The nest `write_state` wrote to ``path``; a `CheckpointError` if the file is not one.

    With ``tensors=False`` only the JSON part is read and every tensor comes back as None (a cheap
    look at counters and names).
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tree = json.loads((handle.metadata() or {})[_TREE])
            loaded = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else None  # noqa: SIM118
        return _decode(tree, loaded)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as exc:  # noqa: BLE001  (safetensors and json raise many types for a foreign file)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable studio training state ({detail})") from None
