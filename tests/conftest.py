"""Shared fixtures. Servers are real (Redis-compatible, Celery, HTTP, gRPC) on loopback."""

from __future__ import annotations

import os

# Offline everywhere: no hub downloads exist here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
