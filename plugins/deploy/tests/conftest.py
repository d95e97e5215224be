"""Registers the shared fixtures of ``deploy_testlib`` for this folder. The helpers live in a
module with a unique name because several test folders of the project have a conftest.py."""

import os
import tempfile

from deploy_testlib import bundle, keys, other_keys, server  # noqa: F401

# caches go to a directory of this test run (see tests/conftest.py)
os.environ["WALLE_CACHE_DIR"] = tempfile.mkdtemp(prefix="walle-test-cache-")
