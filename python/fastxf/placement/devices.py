"""Device-list validation shared by the planner and place_model."""

from __future__ import annotations

import torch


def parse_devices(devices, check_exists: bool = True) -> list:
    """Turns a list of device strings into torch.devices with explicit indices
    (so "cuda" and "cuda:0" compare equal), raising ValueError for anything that
    is not a usable device."""
    if isinstance(devices, (str, torch.device)) or not hasattr(devices, "__iter__"):
        raise ValueError(f"devices: expected a list of device strings such as ['cuda:0', 'cuda:1'], got {devices!r}")
    devices = list(devices)
    if not devices:
        raise ValueError("devices: the list is empty; give at least one device")
    out = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"devices: {d!r} is not a device string ({e})") from None
        if dev.type == "cpu":
            if dev.index not in (None, 0):
                raise ValueError(f"devices: {d!r}: the CPU has no index {dev.index}; use 'cpu'")
            dev = torch.device("cpu")
        elif dev.type == "cuda":
            index = torch.cuda.current_device() if dev.index is None and torch.cuda.is_available() else (dev.index or 0)
            dev = torch.device("cuda", index)
            if check_exists:
                if not torch.cuda.is_available():
                    raise ValueError(f"devices: {d!r} requested but CUDA is not available here")
                if index >= torch.cuda.device_count():
                    raise ValueError(f"devices: {d!r} does not exist; this machine has "
                                     f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        elif dev.type == "meta":
            raise ValueError(f"devices: {d!r}: cannot place a model for execution on the meta device")
        else:
            mod = getattr(torch, dev.type, None)
            if check_exists and (mod is None or not getattr(mod, "is_available", lambda: False)()):
                raise ValueError(f"devices: {d!r}: device type {dev.type!r} is not available here")
        out.append(dev)
    return out
