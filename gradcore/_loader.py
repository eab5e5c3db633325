"""Find gradcore's compiled extension and check that it was built for this package."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Optional


def installed_extension(package: str, source_dir: str) -> Optional[object]:
    """Load ``<package>._C`` from another ``<package>`` folder on sys.path (the installed
    one), or return None when there is none."""
    here = os.path.realpath(source_dir)
    for entry in sys.path:
        folder = os.path.realpath(os.path.join(entry or os.getcwd(), package))
        if folder == here or not os.path.isdir(folder):
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_C" + suffix)
            if os.path.isfile(path):
                spec = importlib.util.spec_from_file_location(f"{package}._C", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[f"{package}._C"] = module
                return module
    return None


def check_extension_version(module: object, expected: str) -> None:
    """Refuse an extension built from other sources than this Python package.

    ``_C.__version__`` is compiled in from the project version (CMakeLists.txt); a stale
    build (an old wheel next to a new checkout, an in-place build not redone after a
    pull) would otherwise run kernels whose arguments or semantics changed.
    """
    found = getattr(module, "__version__", None)
    if found != expected:
        where = getattr(module, "__file__", "gradcore._C")
        raise ImportError(
            f"gradcore's compiled extension {where} is version {found!r} but the Python package is "
            f"{expected!r}; reinstall gradcore (`pip install .`, or tools/build_inplace.sh in a source tree)"
        )
