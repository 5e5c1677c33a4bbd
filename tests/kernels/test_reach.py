"""Reach mode (kernels/reach.py): the bound is sound, and an engine that only evaluates the
accounts within reach of a line reports exactly what a full sweep every cycle reports."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import units as u
from kernels.ratios import next_reported_tier, tier_of
from kernels.reach import N_CLASSES, bound_of, reach_of
from monitor.book import synthetic as synthbook
from monitor.book.load import book_from_dict
from monitor.core.account_events import AccountEventError
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState

T0 = 1_763_712_000_000_000_000
LINES = np.array([30000, 15000, 13000, 11000, 15000], dtype=np.int64)
BAND = 50

money = st.integers(0, 10**10)
position = st.tuples(st.integers(1, 10**6), st.integers(10, 10**6))  # qty, ref price (li)


def _moved(ref, delta, sign):
    """The integer price farthest from `ref` in direction `sign` with |p/ref - 1| <= delta."""
    step = int(np.floor(ref * delta))
    return max(ref + sign * step, 1)


@settings(max_examples=400, deadline=None)
@given(base_a=money, base_l=money, longs=st.lists(position, max_size=6),
       shorts=st.lists(position, max_size=3), pick=st.floats(0, 1), frac=st.floats(0, 1),
       signs=st.lists(st.sampled_from([-1, 0, 1]), min_size=9, max_size=9))
def test_no_price_move_below_reach_changes_the_reported_tier(base_a, base_l, longs, shorts,
                                                             pick, frac, signs):
    lq = np.array([q for q, _ in longs], dtype=np.int64)
    lp = np.array([p for _, p in longs], dtype=np.int64)
    sq = np.array([q for q, _ in shorts], dtype=np.int64)
    sp = np.array([p for _, p in shorts], dtype=np.int64)
    lmv, smv = int(lq @ lp), int(sq @ sp)
    A, L = base_a + lmv, base_l + smv
    # any tier hysteresis can leave reported: between the banded and the plain tier
    plain = int(tier_of(A, L, LINES, 0))
    banded = u.NO_DEBT if L <= 0 else int(tier_of(A, L, LINES, BAND))
    lo, hi = min(banded, plain), plain
    reported = lo + int(pick * (hi - lo + 1)) if hi > lo else lo
    reported = min(reported, hi)
    r = reach_of(reported, A, L, base_l, lmv, smv, LINES, BAND)
    assert r >= 0
    if not np.isfinite(r):
        delta = 0.5
    else:
        delta = r * frac  # any move up to the reach, in any direction per security
    new_l = [_moved(p, delta, signs[i % 9]) for i, p in enumerate(lp)]
    new_s = [_moved(p, delta, signs[(i + 5) % 9]) for i, p in enumerate(sp)]
    A2 = base_a + int(lq @ np.array(new_l, dtype=np.int64))
    L2 = base_l + int(sq @ np.array(new_s, dtype=np.int64))
    assert next_reported_tier(reported, A2, L2, LINES, BAND) == reported
    # and the adversarial corners: every long down and every short up, or the reverse
    for sgn in (-1, 1):
        A3 = base_a + int(lq @ np.array([_moved(p, delta, sgn) for p in lp], dtype=np.int64))
        L3 = base_l + int(sq @ np.array([_moved(p, delta, -sgn) for p in sp], dtype=np.int64))
        assert next_reported_tier(reported, A3, L3, LINES, BAND) == reported


position_g = st.tuples(st.integers(1, 10**6), st.integers(10, 10**6), st.integers(0, 3))


@settings(max_examples=400, deadline=None)
@given(base_a=money, base_l=money, longs=st.lists(position_g, max_size=8),
       shorts=st.lists(position_g, max_size=3), pick=st.floats(0, 1),
       weights=st.lists(st.floats(0, 1), min_size=N_CLASSES, max_size=N_CLASSES),
       signs=st.lists(st.sampled_from([-1, 0, 1]), min_size=11, max_size=11))
def test_no_move_within_the_class_bound_changes_the_reported_tier(base_a, base_l, longs, shorts,
                                                                 pick, weights, signs):
    """Price classes: each class g may move by its own delta_g; the engine's test
    sum_g delta_g * share_g / 255 < reach must guarantee an unchanged tier."""
    lsum = np.zeros(N_CLASSES, dtype=np.int64)
    ssum = np.zeros(N_CLASSES, dtype=np.int64)
    for q, p, g in longs:
        lsum[g] += q * p
    for q, p, g in shorts:
        ssum[g] += q * p
    A, L = base_a + int(lsum.sum()), base_l + int(ssum.sum())
    plain = int(tier_of(A, L, LINES, 0))
    banded = u.NO_DEBT if L <= 0 else int(tier_of(A, L, LINES, BAND))
    lo, hi = min(banded, plain), plain
    reported = min(lo + int(pick * (hi - lo + 1)), hi)
    reach, share = bound_of(reported, A, L, base_l, lsum, ssum, LINES, BAND)
    assert reach >= 0 and share.shape == (N_CLASSES,)
    if not np.isfinite(reach):
        return
    # spend the reach across the classes in the proportions `weights`, then shrink a hair
    used = sum(w * sh / 255.0 for w, sh in zip(weights, share, strict=True))
    if used <= 1e-9:
        return
    deltas = [w * float(reach) / used * (1 - 1e-6) for w in weights]
    for flip in (-1, 1, 0):
        def moved(p, g, i, short, flip=flip):
            sign = flip if flip else signs[i % 11]
            return _moved(p, deltas[g], -sign if short else sign)
        A2 = base_a + sum(q * moved(p, g, i, False) for i, (q, p, g) in enumerate(longs))
        L2 = base_l + sum(q * moved(p, g, i + 7, True) for i, (q, p, g) in enumerate(shorts))
        assert next_reported_tier(reported, A2, L2, LINES, BAND) == reported


def test_reach_is_tight_for_a_long_only_account():
    # A = 13000 * p, L = 100000: R = 1.40 at p = 10.769...; WARNING from 1.30 down, NORMAL
    # from 1.505 (1.50 + band) up
    A, L = 140_000_000, 100_000_000
    r = reach_of(u.WARNING, A, L, L, A, 0, LINES, BAND)
    assert abs(r - min((1.40 - 1.30) / 1.40, (1.505 - 1.40) / 1.40)) < 1e-6


_BOOK = []


def _book():
    if not _BOOK:
        _BOOK.append(book_from_dict(synthbook.generate_json_book(2000, 60, seed=3)))
    return _BOOK[0]


def strip(events):
    return [{k: v for k, v in e.items() if k not in ("event_id", "ts_published")}
            for e in events]


def _cash_event(b, rng, c, A, L):
    """A withdrawal or deposit large enough to move the account's ratio by points, not bp."""
    a = int(rng.integers(0, b.n_accounts))
    cash = int(b.cash[a])
    if rng.random() < 0.5 and cash > 2000:
        amt = cash // 2
        ev = {"type": "withdrawal", "amount": f"{amt / 1000:.3f}"}
    else:
        amt = max(int(L[a]) // 5, 1000)
        ev = {"type": "deposit", "amount": f"{amt / 1000:.3f}"}
    return dict(ev, account_id=b.account_ids[a], event_id=f"e{c}-{a}")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), vol=st.sampled_from([0.0005, 0.003]),
       trend=st.sampled_from([0.002, 0.004]), mode=st.sampled_from(["always", "auto"]))
def test_reach_engine_equals_a_full_sweep_every_cycle(seed, vol, trend, mode):
    """A market that falls then recovers (so accounts keep crossing lines, in both
    directions), cash events that jump accounts towards lines in between, chunks of 300
    accounts: every cycle's events, the tiers and the state equal a sweep engine's. "auto"
    switches between reach, sweep and incremental cycles (re-basing on the way)."""
    book = _book()
    rch = Engine(MarginState(book, live=True),
                 EngineConfig(run_id="t", reach=mode, reach_chunk=300))
    swp = Engine(MarginState(book, live=True),
                 EngineConfig(run_id="t", reach="off", sweep_share=-1.0))
    assert strip(rch.start(T0)) == strip(swp.start(T0))
    b = rch.state.book
    down, up = b.limit_prices()
    rng = np.random.default_rng(seed)
    price = b.price.astype(np.float64)
    skipped = changes = 0
    paths = set()
    for c in range(48):
        A, L = swp.state.assets(), swp.state.liabilities()
        for _ in range(3):
            ev = _cash_event(swp.state.book, rng, c, A, L)
            outs = []
            for e in (rch, swp):
                try:
                    outs.append(strip(e.apply_account_event(ev, T0 + c)))
                except AccountEventError as err:
                    outs.append(err.reason)
            assert outs[0] == outs[1]
        drift = -trend if c < 24 else trend
        price = np.clip(price * np.exp(drift + rng.normal(0, vol, price.shape[0])), down, up)
        if mode == "auto":  # steer the cost model: reach wins every big cycle
            rch._cost_reach, rch._cost_sweep = 1.0, 1e18
        if c % 8 == 0:
            rch.state.sync()  # a whole-book reader (the desk): values exact, bounds kept
        # mostly broad moves; every 4th cycle a couple of symbols (after a sync, "auto" runs an
        # incremental cycle while the reach bounds stay in force)
        sec = np.flatnonzero(rng.random(price.shape[0]) < (0.7 if c % 4 else 0.03))
        p = np.maximum(price[sec].astype(np.int64) // 10 * 10, 10)
        for e in (rch, swp):
            e.add_ticks(sec.astype(np.int64), p, np.full(sec.shape[0], T0 + c, dtype=np.int64))
        ev_r, ev_s = rch.cycle(T0 + c), swp.cycle(T0 + c)
        assert strip(ev_r) == strip(ev_s)
        paths.add(rch.last_cycle.path)
        changes += len(ev_s)
        if rch.last_cycle.path == "reach":
            skipped += b.n_accounts - rch.last_cycle.touched
    np.testing.assert_array_equal(rch.reported, swp.reported)
    np.testing.assert_array_equal(rch.state.assets(), swp.state.assets())
    np.testing.assert_array_equal(rch.state.liabilities(), swp.state.liabilities())
    assert changes > 0
    if mode == "always":
        assert skipped > 0  # the filter skipped accounts while tiers moved
    else:
        assert {"reach", "incremental"} <= paths
