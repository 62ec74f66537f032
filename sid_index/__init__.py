"""sid_index: the item universe — catalogue records, loaders, Semantic IDs, the SID trie,
the FAISS item index and release artifacts."""
