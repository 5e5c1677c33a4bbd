"""margin-monitor's runtime, by concern. Imports point only downward (tests/test_layout.py):

    errors, settings     the exception tree; reading settings files
    book/                the book: model, loading and validation, credit terms, synthetic books
    core/                sans-I/O: live state, engine, calls, account events, patterns, credit
                         controls, pre-trade checks (no sockets, no files, no clocks of its own)
    adapters/            I/O the core's output goes through: Redis outbox, audit log, snapshots
    desk/                the risk desk's read model (queries, acknowledgements)
    web/                 the HTTP and websocket edge: alert channel, desk API and page
    reports/, liquidator/  end-of-day statements; the forced-liquidation worker
    app/                 composition: config, runtime (the live node), warm-up, metrics, demo
    perf/                the bench and soak commands and what they need
    cli                  `margin-monitor` (also `python -m monitor`)
"""
