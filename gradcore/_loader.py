"""Find the compiled extension of an installed gradcore when imported from a source tree."""
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
