"""Caches (search decisions, machine profiles, compiled models) go to a directory of this test
run, so no test reads what an earlier run or the user's own sessions left behind."""

import os
import tempfile

os.environ["WALLE_CACHE_DIR"] = tempfile.mkdtemp(prefix="walle-test-cache-")
