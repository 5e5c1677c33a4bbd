"""margin-monitor runtime: book, evaluation, engine, outputs and CLI."""
