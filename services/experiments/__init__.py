"""The statistics of a study: deflated Sharpe ratio, probability of backtest overfitting, seed intervals."""
