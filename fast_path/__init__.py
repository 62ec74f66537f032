"""fast_path: real-time SID decoding (constrained beam search, Recommender, micro-batching)."""
