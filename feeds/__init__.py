"""Market-data and account-event adapters."""
