"""`margin-monitor run` loses nothing when Redis goes away mid-run: every event reaches the
stream, in order, after Redis comes back; duplicates only with the same event_id."""

import subprocess
import sys
import time

import orjson
import redis

from monitor.book import synthetic as synthbook


def test_redis_stopped_and_restarted_mid_run_loses_no_event(redis_fresh, tmp_path):
    book = tmp_path / "book"
    # the summary key expires a few heartbeats after the last write; read after the exit
    (tmp_path / "monitor.toml").write_text("summary_ttl_s = 3600.0\n")
    synthbook.write_book(synthbook.generate(4000, 200, seed=3), book)
    cmd = [sys.executable, "-m", "monitor.cli", "run", "--book", str(book),
           "--feed", "synthetic:crash?drop=0.12&minutes=3&speed=40&duration=6&seed=3",
           "--redis", redis_fresh.url, "--alerts-stream", "out:alerts",
           "--listen", "127.0.0.1:0", "--until-feed-ends", "--config",
           str(tmp_path / "monitor.toml")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = redis.Redis.from_url(redis_fresh.url)
    deadline = time.monotonic() + 60
    while r.xlen("out:alerts") == 0:  # the start-up announcements arrived: Redis is in use
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(1.0)
    redis_fresh.stop()  # the crash goes on while Redis is down (its data is lost with it)
    time.sleep(2.0)
    redis_fresh.start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    r = redis.Redis.from_url(redis_fresh.url)
    entries = [orjson.loads(e[1][b"data"]) for e in r.xrange("out:alerts")]
    last_seq = orjson.loads(r.get("out:alerts:summary"))["seq"]
    # Redis restarted empty, so what it held before the stop is gone; everything published
    # from the outage on must be there, gap-free and in order
    seqs = []
    for e in entries:
        if not seqs or e["seq"] > seqs[-1]:
            seqs.append(e["seq"])
        else:  # a re-sent batch: the same event, same id
            assert e["seq"] in seqs
    assert seqs == list(range(seqs[0], last_seq + 1))
    assert len({e["event_id"] for e in entries}) == len(set(seqs))
    assert last_seq - seqs[0] > 50  # the outage really spanned a stream of events
    assert b"redis outbox" in err  # the outage was noticed and logged
