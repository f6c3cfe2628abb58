"""MedMNIST's catalogue (`medmnist.info`: INFO, the flags, their files, URLs and MD5s per image size), read without
importing the `medmnist` package.

`import medmnist.info` first runs `medmnist/__init__.py`, which imports `medmnist.dataset` (torch, Pillow) and
`medmnist.evaluator` (pandas, scikit-learn): about 2 s, and when one of them is missing it prints "Please install the
required packages first" on stdout. kr needs only the catalogue, `medmnist/info.py`, which imports nothing but the
standard library: it is loaded here from the installed distribution alone, once, under its own name `medmnist.info`,
so that kr, medmnist (if imported later) and tests share one INFO dict.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

SIZES = (28, 64, 128, 224)  # MedMNIST+ image sides; 28 is the original MedMNIST
DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".medmnist")  # medmnist.info.DEFAULT_ROOT, computed, not created
INSTALL_HINT = "pip install --no-deps 'medmnist==3.0.2' (kr reads only its catalogue, medmnist/info.py)"


@functools.cache
def _info_module() -> ModuleType:
    """medmnist.info: the one already imported, else loaded from its file without the package's __init__.

    Raises ModuleNotFoundError (with how to install it) when medmnist is not installed.
    """
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"]
    package = importlib.util.find_spec("medmnist")  # a top-level name: found, not imported
    locations = list(package.submodule_search_locations or []) if package is not None else []
    path = next((p for p in (os.path.join(loc, "info.py") for loc in locations) if os.path.isfile(p)), None)
    if path is None:
        raise ModuleNotFoundError(f"MedMNIST flags need the medmnist catalogue, which is not installed: {INSTALL_HINT}")
    spec = importlib.util.spec_from_file_location("medmnist.info", path)
    assert spec is not None and spec.loader is not None  # a .py file that exists always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["medmnist.info"] = module  # a later `import medmnist` (its __init__ too) reuses this very module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["medmnist.info"]
        raise
    return module


def info() -> dict[str, dict[str, Any]]:
    """medmnist's INFO: flag -> {'task', 'label', 'n_channels', 'n_samples', 'url', 'MD5', 'url_64', 'MD5_64', ...}.

    Raises ModuleNotFoundError when medmnist is not installed."""
    return _info_module().INFO


def flags_2d() -> list[str]:
    """The 2-D MedMNIST flags (every flag but the '...3d' ones), in INFO's order."""
    return [f for f in info() if not f.endswith("3d")]


def is_multi_label(flag: str) -> bool:
    """Whether a flag's task gives several labels per image (ChestMNIST: 'multi-label, binary-class')."""
    return "multi-label" in info()[flag]["task"]


def file_name(flag: str, size: int) -> str:
    """The file of a flag at an image size: '<flag>.npz' for 28, '<flag>_<size>.npz' for MedMNIST+ sizes."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def sizes(flag: str) -> list[int]:
    """The image sides a flag comes in: 28, and each MedMNIST+ size its INFO entry has a file (url_<size>) for."""
    return [28, *sorted(int(key.removeprefix("url_")) for key in info()[flag] if key.startswith("url_"))]


def md5(flag: str, size: int) -> str:
    """The official MD5 hex digest of a flag's file at an image size (INFO's 'MD5' or 'MD5_<size>')."""
    return info()[flag][f"MD5{_suffix(size)}"]


def flag_of(md5_hex: str, size: int) -> str | None:
    """The 2-D flag whose official file at `size` pixels has this MD5 (a copy of it under another name or in object
    storage is that dataset), or None."""
    return next((f for f in flags_2d() if info()[f].get(f"MD5{_suffix(size)}") == md5_hex), None)


def url(flag: str, size: int) -> str:
    """Where a flag's file at an image size is published (INFO's 'url' or 'url_<size>', a Zenodo record)."""
    return info()[flag][f"url{_suffix(size)}"]
