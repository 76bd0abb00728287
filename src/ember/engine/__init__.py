"""Tokenizer, batcher, warm-up and the per-model engine. No web framework here."""
