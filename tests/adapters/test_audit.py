"""The audit queue (monitor/adapters/audit.py) is bounded by bytes: with the writer stalled the
tick path never waits, the oldest batches are dropped past `max_bytes`, every drop is counted
and marked by a gap line in the audit file, and the report counts them."""

import threading

import orjson

from monitor.adapters.audit import AuditLog
from monitor.app.warmup import SAMPLE_BOOK
from monitor.book.load import load_book
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.reports.statements import read_audit_dir

T0 = 1_772_415_000_000_000_000


def test_a_stalled_writer_drops_the_oldest_batches_counted_and_marked(tmp_path):
    eng = Engine(MarginState(load_book(SAMPLE_BOOK), live=True), EngineConfig(run_id="cap"))
    events = eng.start(T0)
    assert len(events) >= 3
    audit = AuditLog(eng, tmp_path, max_bytes=64 * 1024)
    gate, entered = threading.Event(), threading.Event()
    lines = audit._lines

    def stalled(snap):  # the disk hangs on the first batch
        entered.set()
        gate.wait(30)
        return lines(snap)

    audit._lines = stalled
    batches = 400
    for k in range(batches):
        for e in events:
            e["seq"] = k * len(events) + events.index(e) + 1
        audit.record(events, [orjson.dumps(e) for e in events])
        assert audit.queued_bytes <= audit.max_bytes  # never beyond the cap, never waiting
        if k == 0:
            assert entered.wait(10)  # the writer holds the first batch, and hangs
    st = audit.stats()
    assert st["dropped"] > 0 and st["dropped_batches"] * len(events) == st["dropped"]
    assert st["queued_bytes"] <= 64 * 1024 and st["records"] == batches * len(events)
    gate.set()
    audit.close(eod=False)
    rows = [orjson.loads(x) for x in audit.path.read_bytes().splitlines()]
    gaps = [r["gap"] for r in rows if "gap" in r]
    written = [r for r in rows if "event" in r]
    assert sum(g["records"] for g in gaps) == audit.dropped
    assert len(written) + audit.dropped == batches * len(events) == audit.written + audit.dropped
    # the newest batches are the ones kept; the gap names the seqs that are missing
    seqs = [r["event"]["seq"] for r in written]
    assert seqs[-1] == batches * len(events) and seqs == sorted(seqs)
    assert gaps[0]["first_seq"] > seqs[0] and gaps[0]["last_seq"] < seqs[-1]
    missing = set(range(1, batches * len(events) + 1)) - set(seqs)
    assert len(missing) == audit.dropped
    assert min(missing) == gaps[0]["first_seq"] and max(missing) == gaps[-1]["last_seq"]
    run = orjson.loads((tmp_path / "run-cap.json").read_bytes())
    assert run["dropped"] == audit.dropped
    log = read_audit_dir(tmp_path)
    assert log.dropped == audit.dropped and log.bad_lines == 0
