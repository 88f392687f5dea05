"""Bars in, features out: the streaming reader, causal features, splits and the feature store."""
