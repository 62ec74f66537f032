"""slow_path: offline reasoning — Trace contract, Redis stores, reasoner backends, Celery app."""
