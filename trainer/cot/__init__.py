"""Chain-of-thought data for the reasoner: persona prototypes, CoT teachers (rule-based and
OpenAI-compatible LLM endpoints) and the SFT / itemic-alignment corpora.

The text format itself lives in `slow_path/cot_format.py` (shared with the slow path)."""
