"""The book of credit accounts: its in-memory model (`model`), loading and validation from
JSON, CSV or Parquet (`load`, `columns`), the optional credit terms (`credit_terms`), the feed's
view of it (`universe`) and seeded synthetic books (`synthetic`). Depends on kernels and feeds
only."""
