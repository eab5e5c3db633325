"""Test-session settings shared by every test file."""
import os
import tempfile

from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches examples and the constants it harvests from the source files (with
# their absolute paths) under ./.hypothesis by default; keep that machine-specific cache
# out of the source tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "gradcore-hypothesis"))
