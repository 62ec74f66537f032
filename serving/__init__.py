"""serving: the product surface — the `reasonrec` CLI, FastAPI and gRPC front ends, A/B router."""
