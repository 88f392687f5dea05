"""The trading environments, their accounting, the env factory and the evaluation metrics."""
