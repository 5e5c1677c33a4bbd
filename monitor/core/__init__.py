"""The sans-I/O core: `state` (kernel outputs -> reported figures), `engine` (ticks and account
events in, events out), `calls` (margin-call lifecycle), `account_events` and `ledger` (what
moves the live book), `patterns` (trading-pattern watch), `credit` (concentration, credit lines,
financing halt), `pretrade` (checks before an order) and `envelope` (event ids and seq). No
sockets, files or threads here: the app passes time and input in and publishes what comes out."""
