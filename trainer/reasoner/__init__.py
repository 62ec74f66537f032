"""The reasoner (slow path model): tokenizer and vocabulary extension, base model loading,
itemic alignment pre-training, chain-of-thought SFT, decoding and evaluation tiers.

Entry points for the CLI: `align.train_align(AlignTrainConfig)`, `sft.train_sft(SFTTrainConfig)`,
`generate.reason(ReasonConfig)`, `model.prepare_reasoner` / `model.load_reasoner`.
"""
