"""Walle deploy: push-then-pull release of tasks to device fleets.

The cloud side (``server``) stores signed, content-addressed task bundles and release
policies, and pushes small notices; devices (``agent``) pull, verify and install bundles.
"""

__version__ = "0.1.0"
