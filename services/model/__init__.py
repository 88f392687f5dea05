"""The one TradingModel, the algorithm registry, the remote VecEnv it trains on and its checkpoints."""
