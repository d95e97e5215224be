"""Registers the shared fixtures of ``deploy_testlib`` for this folder. The helpers live in a
module with a unique name because several test folders of the project have a conftest.py."""

from deploy_testlib import bundle, keys, other_keys, server  # noqa: F401
