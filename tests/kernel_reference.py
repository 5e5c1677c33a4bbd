"""The plain reference of every kernel in kernels/catalog.py, called exactly like the kernel.

Each function here takes the kernel's arguments, writes the kernel's outputs into the output
arrays it is given and returns what the kernel returns, so tests/kernels/test_kernel_catalog.py can
call both on copies of the same inputs and compare everything. They are plain Python loops over
the flat arrays (no Numba, nothing shared with kernels/), resting on the references the other
tests use: `reference.py` (exact Decimal: tiers, AMB, withdrawable, stress, distances,
liquidation status, value, policy order and plan), `credit_reference.py` (concentration items
and caps, credit-line use) and `monitor/perf/baselines.py` (the NumPy sweep and tiers). Where a
kernel computes a bound (reach.py), the reference computes the exact quantity and a `check_*`
function says how close the kernel's rounded bound must be.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import reference as ref
from credit_reference import CreditRef

from kernels import bands
from kernels import units as u
from monitor.perf import baselines as base

D = Decimal
S = u.RATIO_SCALE
LINE_KEYS = ref.LINE_NAMES  # withdrawable, normal, warning, margin_call, target (units order)
INF = float("inf")
M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A Python integer as the int64 with the same low 64 bits (two's complement)."""
    x &= M64
    return x - (1 << 64) if x >= 1 << 63 else x


def _lines(row, band=0) -> dict:
    """A profile's lines (bp) as reference.py's Decimal lines, raised by `band` bp."""
    return {k: D(int(v) + (int(band) if k != "target" else 0)) / S
            for k, v in zip(LINE_KEYS, row, strict=True)}


def tier_code(A, L, row, band=0) -> int:
    """reference.tier on integer money: the best tier whose line A/L is at or above."""
    if L <= 0:
        return u.NO_DEBT
    return u.TIER_CODES[ref.tier(D(int(A)), D(int(L)), _lines(row, band))]


def next_tier(reported, A, L, row, band) -> int:
    """Hysteresis (ratios.py): a worse tier at once, a better one only as far as R clears its
    line by the band; never better than the plain tier."""
    plain = tier_code(A, L, row)
    if reported == u.UNSET_TIER or plain < reported:
        return plain
    banded = u.NO_DEBT if L <= 0 else tier_code(A, L, row, band)
    return max(int(reported), banded)


def _sums(ptr, sec, qty, price, accounts=None):
    accounts = range(ptr.shape[0] - 1) if accounts is None else accounts
    return [sum(int(qty[j]) * int(price[sec[j]]) for j in range(ptr[a], ptr[a + 1]))
            for a in accounts]


# ------------------------------------------------------------------------------ common


def line_mode(profile_lines):
    """How the tier loop reads lines: select chain (at most 4 profiles), packed 16-bit words
    (every line fits) or the table; the select matrix (rows past the last profile repeat the
    first) and each profile's packed word (of the lines that fit)."""
    n = profile_lines.shape[0]
    cols = (u.LINE_WITHDRAWABLE, u.LINE_NORMAL, u.LINE_WARNING, u.LINE_MARGIN_CALL)
    sel = np.array([[profile_lines[p if p < n else 0, c] for c in cols] for p in range(4)],
                   dtype=np.int64)
    fits = [[0 <= profile_lines[p, c] <= 0xFFFF for c in cols] for p in range(n)]
    packed = np.array([_signed(sum(int(profile_lines[p, c]) << (16 * k)
                                   for k, c in enumerate(cols) if fits[p][k]))
                       for p in range(n)], dtype=np.int64)
    mode = 0 if n <= 4 else (1 if all(map(all, fits)) else 2)
    return mode, sel, packed


def block_tiers(mode, sel, packed, profile_lines, ba, bl, lm, sm, prof, band, reported,
                candidate):
    candidate[:] = base.numpy_tiers(ba + lm, bl + sm, profile_lines[prof], band, reported)


def next_tier_branchless(reported, A, L, l0, l1, l2, l3, band):
    return next_tier(reported, A, L, [l0, l1, l2, l3, 0], band)


# ------------------------------------------------------------------------------ ratios


def tier_of(A, L, row, band):
    return tier_code(A, L, row, band)


def next_reported_tier(reported, A, L, row, band):
    return next_tier(reported, A, L, row, band)


def sweep(long_price, short_price, lptr, lsec, lqty, sptr, ssec, sqty, long_mv, short_mv):
    long_mv[:] = base.segment_sums(lptr, lqty * long_price[lsec])
    short_mv[:] = base.segment_sums(sptr, sqty * short_price[ssec])


def sweep_tiers(price, lptr, lsec, lqty, sptr, ssec, sqty, ba, bl, prof, lines, band, long_mv,
                short_mv, reported, candidate):
    b = SimpleNamespace(price=price, long_ptr=lptr, long_sec=lsec, long_qty=lqty,
                        short_ptr=sptr, short_sec=ssec, short_qty=sqty, base_assets=ba,
                        base_liabilities=bl, profile_of=prof, profile_lines=lines)
    long_mv[:], short_mv[:], candidate[:] = base.numpy_sweep_tiers(b, band, reported)


def collect_changes(candidate, reported, previous_out, changed_out):
    k = 0
    for a in range(candidate.shape[0]):
        if candidate[a] != reported[a]:
            changed_out[k], previous_out[k] = a, reported[a]
            reported[a] = candidate[a]
            k += 1
    return k


def plain_tiers(assets, liabilities, profile_of, profile_lines, out):
    for a in range(assets.shape[0]):
        out[a] = tier_code(assets[a], liabilities[a], profile_lines[profile_of[a]])


# ------------------------------------------------------------------------------ incremental


def holders_touched(secs, n, long_hptr, short_hptr):
    return sum(int(long_hptr[s + 1] - long_hptr[s] + short_hptr[s + 1] - short_hptr[s])
               for s in secs[:n])


def _csc_values(hptr, hacct, hqty, price, n_accounts):
    mv = [0] * n_accounts
    for s in range(hptr.shape[0] - 1):
        for j in range(hptr[s], hptr[s + 1]):
            mv[hacct[j]] += int(hqty[j]) * int(price[s])
    return mv


def apply_price_changes(secs, new_prices, n, price, lhptr, lhacct, lhqty, shptr, shacct, shqty,
                        long_mv, short_mv, mark, touched_out):
    """Market values afresh over the holder index at the old and the new prices; touched: the
    holders of each moved security (longs, then shorts) in walk order, each once."""
    old = price.copy()
    seen: set = set()
    k = 0
    for i in range(n):
        s = secs[i]
        if new_prices[i] == price[s]:
            continue
        price[s] = new_prices[i]
        for hptr, hacct in ((lhptr, lhacct), (shptr, shacct)):
            for j in range(hptr[s], hptr[s + 1]):
                if hacct[j] not in seen:
                    seen.add(hacct[j])
                    touched_out[k] = hacct[j]
                    k += 1
    na = long_mv.shape[0]
    for mv, hptr, hacct, hqty in ((long_mv, lhptr, lhacct, lhqty),
                                  (short_mv, shptr, shacct, shqty)):
        before = _csc_values(hptr, hacct, hqty, old, na)
        after = _csc_values(hptr, hacct, hqty, price, na)
        mv[:] = mv + np.array(after, dtype=np.int64) - np.array(before, dtype=np.int64)
    return k


def retier_accounts(accounts, n, ba, bl, long_mv, short_mv, profile_of, profile_lines, band,
                    reported, previous_out, changed_out):
    k = 0
    for a in accounts[:n]:
        r = int(reported[a])
        c = next_tier(r, ba[a] + long_mv[a], bl[a] + short_mv[a], profile_lines[profile_of[a]],
                      band)
        if c != r:
            changed_out[k], previous_out[k] = a, r
            reported[a] = c
            k += 1
    return k


# ------------------------------------------------------------------------------ conflate


def conflate(sec, price, ts, n, pending_price, pending_ts, pending_flag, pending_list,
             n_pending):
    """The last price per symbol is the state; symbols listed in order of first arrival."""
    k = n_pending
    for i in range(n):
        s = sec[i]
        pending_price[s], pending_ts[s] = price[i], ts[i]
        if not pending_flag[s]:
            pending_flag[s] = 1
            pending_list[k] = s
            k += 1
    return k


def take_pending(pending_list, n_pending, pending_price, pending_flag, price, old_price,
                 secs_out, prices_out):
    for i, s in enumerate(pending_list[:n_pending]):
        secs_out[i], prices_out[i] = s, pending_price[s]
        old_price[s] = price[s]
        pending_flag[s] = 0
    return n_pending


def triggers(accounts, n, lptr, lsec, lqty, sptr, ssec, sqty, price, old_price, out_sec):
    """The security whose move hurt the account most (a long falling, a short rising: the
    first of the largest); if none did, the one that helped it most; -1 if nothing moved."""
    for i in range(n):
        a = accounts[i]
        rows = ([(lsec[j], int(lqty[j]), -1) for j in range(lptr[a], lptr[a + 1])]
                + [(ssec[j], int(sqty[j]), 1) for j in range(sptr[a], sptr[a + 1])])
        best, best_s = 0, -1
        for sign in (1, -1):  # adverse moves, then favourable ones
            for s, q, side in rows:
                d = sign * side * q * (int(price[s]) - int(old_price[s]))
                if d > best:
                    best, best_s = d, s
            if best_s >= 0:
                break
        out_sec[i] = best_s


# ------------------------------------------------------------------------------ totals, margin


def tier_totals(reported, liabilities, counts, debt):
    counts[:] = 0
    debt[:] = 0.0
    for t, x in zip(reported.tolist(), liabilities.tolist(), strict=True):
        if 0 <= t < counts.shape[0]:
            counts[t] += 1
            debt[t] += float(x)


_KINDS = {u.COLLATERAL: "collateral", u.FINANCED: "financed", u.SHORT: "short"}


def _positions(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost, pos_margin_ratio, securities):
    """reference.py positions (duck-typed) of account a; money stays in the unit given."""
    return [SimpleNamespace(sec=securities[int(pos_sec[j])], symbol=int(pos_sec[j]),
                            kind=_KINDS[int(pos_kind[j])], qty=int(pos_qty[j]),
                            cost=D(int(pos_cost[j])), is_short=pos_kind[j] == u.SHORT,
                            margin_ratio=D(repr(float(pos_margin_ratio[j]))), row=j)
            for j in range(pos_ptr[a], pos_ptr[a + 1])]


def available_margin_balance_one(a, cash, accrued, other_debt, other_collateral, pos_ptr,
                                 pos_sec, pos_kind, pos_qty, pos_cost, pos_margin_ratio, price,
                                 haircut):
    secs = [SimpleNamespace(haircut=D(repr(float(h)))) for h in haircut]
    m = {"cash": D(int(cash[a])), "other_coll": D(int(other_collateral[a])),
         "accrued": D(int(accrued[a])), "other_debt": D(int(other_debt[a])),
         "positions": _positions(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost,
                                 pos_margin_ratio, secs)}
    return float(ref.available_margin_balance(m, [D(int(p)) for p in price]))


def available_margin_balance(accounts, cash, accrued, other_debt, other_collateral, pos_ptr,
                             pos_sec, pos_kind, pos_qty, pos_cost, pos_margin_ratio, price,
                             haircut, out):
    for i, a in enumerate(accounts):
        out[i] = available_margin_balance_one(a, cash, accrued, other_debt, other_collateral,
                                              pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost,
                                              pos_margin_ratio, price, haircut)


def free_cash(accounts, cash, pos_ptr, pos_kind, pos_qty, pos_cost, out):
    for i, a in enumerate(accounts):
        shorts = [D(int(pos_cost[j])) for j in range(pos_ptr[a], pos_ptr[a + 1])
                  if pos_kind[j] == u.SHORT and pos_qty[j] > 0]
        out[i] = int(ref.free_cash(D(int(cash[a])), shorts))


def _amb_on_grid(amb) -> D:
    """The kernel's float AMB as the exact value it stands for: the nearest money·bp."""
    return (D(float(amb)) * S).quantize(D(1), rounding="ROUND_HALF_UP") / S


def withdrawable_one(free, amb, A, L, withdrawable_bp):
    w = ref.withdrawable(D(int(free)), _amb_on_grid(amb), D(int(A)), D(int(L)),
                         D(int(withdrawable_bp)) / S)
    return int(w.to_integral_value(rounding="ROUND_FLOOR"))


def withdrawable(free, amb, A, L, withdrawable_bp, out):
    for i in range(out.shape[0]):
        out[i] = withdrawable_one(free[i], amb[i], A[i], L[i], withdrawable_bp[i])


# ------------------------------------------------------------------------------ stress


def stress_ratio(ba, bl, long_mv_down, short_mv_up, out):
    for a in range(out.shape[0]):
        A, L = int(ba[a]) + int(long_mv_down[a]), int(bl[a]) + int(short_mv_up[a])
        out[a] = INF if L <= 0 else float(ref.div(D(A), D(L)))


def distance_one(base_assets, liabilities, assets, long_mv, line_bp):
    d = ref.distance(D(int(base_assets)), D(int(assets)), D(int(liabilities)), D(int(long_mv)),
                     D(int(line_bp)) / S)
    return np.nan if d is None else float(d)


def distances(ba, assets, liabilities, long_mv, profile_of, profile_lines, out):
    for a in range(out.shape[0]):
        for k in range(3):
            out[a, k] = distance_one(ba[a], liabilities[a], assets[a], long_mv[a],
                                     profile_lines[profile_of[a], u.LINE_NORMAL + k])


# ------------------------------------------------------------------------------ reach


def account_values(accounts, price, lptr, lsec, lqty, sptr, ssec, sqty, long_mv_out,
                   short_mv_out):
    long_mv_out[:] = _sums(lptr, lsec, lqty, price, accounts)
    short_mv_out[:] = _sums(sptr, ssec, sqty, price, accounts)


def short_values(price, sptr, ssec, sqty, short_mv_out):
    short_mv_out[:] = _sums(sptr, ssec, sqty, price)


def _line_for(tier, row):
    """The line an account must clear to be in `tier` (1..4)."""
    return int(row[{1: u.LINE_MARGIN_CALL, 2: u.LINE_WARNING, 3: u.LINE_NORMAL}.get(
        tier, u.LINE_WITHDRAWABLE)])


def exact_bound(reported, A, L, base_l, lsum, ssum, row, band):
    """(reach, shares, slack) of reach.py's docstring, exact: reach = the room A·S − line·L
    to the nearer hysteresis line over D = Σ_g (LMV_g·S + c·SMV_g); shares_g = D_g / D · 255;
    slack: how far under reach the kernel's rounded-down value may be (its safety margins)."""
    reported, A, L, base_l = int(reported), int(A), int(L), int(base_l)
    smv = sum(int(x) for x in ssum)
    room, c, scale = None, 0, 0
    if not 0 <= reported <= u.NO_DEBT:
        room = D(0)
    elif reported == u.NO_DEBT:
        room = None if smv == 0 else D(0)
    elif base_l <= 0 and smv > 0:
        room = D(0)
    else:
        rooms = []
        if reported > u.FORCED_LIQUIDATION:
            lo = _line_for(reported, row)
            rooms.append(D(A * S - lo * L))
            c = lo
        if reported < u.WITHDRAWABLE:
            hi = _line_for(reported + 1, row) + int(band)
            rooms.append(D(hi * L - A * S))
            c = max(c, hi)
        room = max(min(rooms), D(0))
        scale = abs(A) * S + c * abs(L)
    dg = [D(int(x)) * S + c * D(int(y)) for x, y in zip(lsum, ssum, strict=True)]
    total = sum(dg)
    if room is None or total <= 0:
        return INF, [255.0] * len(dg), 0.0
    reach = float(ref.div(room, total))
    return reach, [float(ref.div(x * 255, total)) for x in dg], (2e-9 * scale + 2) / float(total)


def _reach_ok(got, reach, slack):
    if reach == INF:
        return got == INF
    return reach * (1 - 1e-5) - slack <= got <= reach * (1 + 1e-7)


def _share_ok(got, share, d_zero):
    """Shares are rounded up by the kernel (at most one unit over, capped at 255)."""
    if d_zero:
        return got == 0
    lo = min(int(np.ceil(share - 1e-9)), 255)
    return lo <= got <= min(lo + 1, 255)


def reach_of(reported, A, L, base_l, lmv, smv, row, band):
    return exact_bound(reported, A, L, base_l, [lmv, 0, 0, 0], [smv, 0, 0, 0], row, band)


def check_reach_of(args, got, ref_args, want):
    reach, _, slack = want
    assert _reach_ok(got, reach, slack), (got, reach, slack)


def bound_of(reported, A, L, base_l, lsum, ssum, row, band):
    return exact_bound(reported, A, L, base_l, lsum, ssum, row, band)


def check_bound_of(args, got, ref_args, want):
    reach, shares, slack = want
    assert _reach_ok(float(got[0]), reach, slack), (got, want)
    lsum, ssum = args[4], args[5]
    for g, sh in enumerate(shares):
        if reach == INF:
            assert got[1][g] == 255
        else:
            assert _share_ok(int(got[1][g]), sh, lsum[g] == 0 and ssum[g] == 0), (g, got, want)


def update_deltas(secs, n, price, price_class, ref_price, deltas):
    """Each chunk's largest relative move per class, exact (the kernel rounds it up)."""
    for c in range(deltas.shape[0]):
        for s in secs[:n]:
            r = int(ref_price[c, s])
            dev = float(ref.div(D(abs(int(price[s]) - r)), D(r)))
            g = price_class[s]
            deltas[c, g] = max(deltas[c, g], dev)


def check_update_deltas(args, got, ref_args, want):
    d, w = args[5], ref_args[5]
    assert np.all(d >= w) and np.all(d <= w * (1 + 1e-8) + 1e-300), (d, w)


def _class_sums(a, price, price_class, lptr, lsec, lqty, sptr, ssec, sqty):
    lsum, ssum = [0] * 4, [0] * 4
    for ptr, sec, qty, out in ((lptr, lsec, lqty, lsum), (sptr, ssec, sqty, ssum)):
        for j in range(ptr[a], ptr[a + 1]):
            out[price_class[sec[j]]] += int(qty[j]) * int(price[sec[j]])
    return lsum, ssum


def _rebase(a, price, price_class, csr, ba, bl, prof, lines, band, reported):
    """Exact values of account a at `price`, its next tier, and its exact bound there."""
    lsum, ssum = _class_sums(a, price, price_class, *csr)
    A, L = int(ba[a]) + sum(lsum), int(bl[a]) + sum(ssum)
    row = lines[prof[a]]
    t = next_tier(int(reported[a]), A, L, row, band)
    return sum(lsum), sum(ssum), t, exact_bound(t, A, L, bl[a], lsum, ssum, row, band)


def refresh_range(lo, hi, price, price_class, lptr, lsec, lqty, sptr, ssec, sqty, ba, bl,
                  prof, lines, band, long_mv, short_mv, reported, reach, share, previous_out,
                  changed_out, k):
    bounds = {}
    csr = (lptr, lsec, lqty, sptr, ssec, sqty)
    for a in range(lo, hi):
        lmv, smv, t, bounds[a] = _rebase(a, price, price_class, csr, ba, bl, prof, lines, band,
                                         reported)
        long_mv[a], short_mv[a] = lmv, smv
        if t != reported[a]:
            changed_out[k], previous_out[k] = a, reported[a]
            reported[a] = t
            k += 1
    return k, bounds


def _check_bounds(reach, share, ref_reach, ref_share, bounds, class_sums):
    for a in range(reach.shape[0]):
        if a not in bounds:
            assert reach[a] == ref_reach[a] and np.array_equal(share[a], ref_share[a]), a
            continue
        r, sh, slack = bounds[a]
        assert _reach_ok(float(reach[a]), r, slack), (a, reach[a], bounds[a])
        lsum, ssum = class_sums(a)
        for g in range(4):
            if r == INF:
                assert share[a, g] == 255, (a, g)
            else:
                assert _share_ok(int(share[a, g]), sh[g], lsum[g] == 0 and ssum[g] == 0), (
                    a, g, share[a], sh)


def _equal_except(args, ref_args, skip):
    for i, (x, y) in enumerate(zip(args, ref_args, strict=True)):
        if i not in skip and isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f"argument {i}")


def check_refresh_range(args, got, ref_args, want):
    k, bounds = want
    assert got == k
    _equal_except(args, ref_args, {18, 19})
    _check_bounds(args[18], args[19], ref_args[18], ref_args[19], bounds,
                  lambda a: _class_sums(a, args[2], args[3], *args[4:10]))


def rebase_all(n_chunks, chunk, price, price_class, lptr, lsec, lqty, sptr, ssec, sqty, ba, bl,
               prof, lines, band, reported, reach, share):
    csr = (lptr, lsec, lqty, sptr, ssec, sqty)
    n = reach.shape[0]
    return {a: _rebase(a, price, price_class, csr, ba, bl, prof, lines, band, reported)[3]
            for a in range(min(n, n_chunks * chunk))}


def check_rebase_all(args, got, ref_args, want):
    assert got is None
    _equal_except(args, ref_args, {16, 17})
    _check_bounds(args[16], args[17], ref_args[16], ref_args[17], want,
                  lambda a: _class_sums(a, args[2], args[3], *args[4:10]))


def scan_range(lo, hi, deltas_c, reach, share, price, lptr, lsec, lqty, sptr, ssec, sqty, ba,
               bl, prof, lines, band, reported, previous_out, changed_out, k, cand, stage):
    """With sound bounds, what evaluating every account exactly at `price` reports."""
    for a in range(lo, hi):
        r = int(reported[a])
        lmv = _sums(lptr, lsec, lqty, price, [a])[0]
        smv = _sums(sptr, ssec, sqty, price, [a])[0]
        t = next_tier(r, int(ba[a]) + lmv, int(bl[a]) + smv, lines[prof[a]], band)
        if t != r:
            changed_out[k], previous_out[k] = a, r
            reported[a] = t
            k += 1
    return k, hi - lo


def check_scan_range(args, got, ref_args, want):
    k, most = want
    assert got[0] == k, (got, want)
    assert k - args[20] <= got[1] <= most, (got, want)  # evaluated: at least every change
    _equal_except(args, ref_args, {21, 22})  # candidate list and staging are scratch


# ------------------------------------------------------------------------------ desk


def crowding(move, lptr, lsec, lqty, sptr, ssec, sqty, assets, liabilities, profile_of,
             profile_lines, out_holders, out_count, out_debt):
    """Per security s alone falling by move[s]: its long holders, and those at or above each
    of the normal / warning / margin-call lines now and below it after (reference.tier's
    R < b), with their liabilities now. A short in s shrinks the liabilities by the same move."""
    out_holders[:] = 0
    out_count[:] = 0
    out_debt[:] = 0
    for a in range(assets.shape[0]):
        A, L = int(assets[a]), int(liabilities[a])
        lines = _lines(profile_lines[profile_of[a]])
        shorts = {int(ssec[i]): int(sqty[i]) for i in range(sptr[a], sptr[a + 1])}
        for j in range(lptr[a], lptr[a + 1]):
            s, q = int(lsec[j]), int(lqty[j])
            if q <= 0:
                continue
            out_holders[s] += 1
            if L <= 0:
                continue
            A2 = A - q * int(move[s])
            L2 = L - shorts.get(s, 0) * int(move[s])
            for k, key in enumerate(("normal", "warning", "margin_call")):
                if A >= lines[key] * L and A2 < lines[key] * L2:
                    out_count[s, k] += 1
                    out_debt[s, k] += L


def shift_all(delta, lptr, lsec, lqty, sptr, ssec, sqty, assets, liabilities, profile_of,
              profile_lines, out_assets, out_liabilities, out_tier_now, out_tier_after):
    da = _sums(lptr, lsec, lqty, delta)
    dl = _sums(sptr, ssec, sqty, delta)
    for a in range(assets.shape[0]):
        row = profile_lines[profile_of[a]]
        A, L = int(assets[a]), int(liabilities[a])
        out_assets[a], out_liabilities[a] = A + da[a], L + dl[a]
        out_tier_now[a] = tier_code(A, L, row)
        out_tier_after[a] = tier_code(A + da[a], L + dl[a], row)


def shift_holders(secs, delta, lhptr, lhacct, lhqty, shptr, shacct, shqty, out_assets,
                  out_liabilities):
    for s in secs:
        for hptr, hacct, hqty, out in ((lhptr, lhacct, lhqty, out_assets),
                                       (shptr, shacct, shqty, out_liabilities)):
            for j in range(hptr[s], hptr[s + 1]):
                out[hacct[j]] += int(hqty[j]) * int(delta[s])


def account_shift(accounts, delta, lptr, lsec, lqty, sptr, ssec, sqty, out_assets,
                  out_liabilities):
    out_assets[:] = _sums(lptr, lsec, lqty, delta, accounts)
    out_liabilities[:] = _sums(sptr, ssec, sqty, delta, accounts)


def tally(tier_now, tier_after, liab_now, liab_after, out_count, out_debt_now, out_debt_after):
    for i, j, ln, la in zip(tier_now, tier_after, liab_now, liab_after, strict=True):
        out_count[i, j] += 1
        out_debt_now[i, j] += ln
        out_debt_after[j] += la


# ------------------------------------------------------------------------------ concentration


def band_caps(assets, liabilities, below, single, group, board, n_bands):
    """CreditRef.caps on bp arrays: the first band whose `below` line the ratio is under."""
    prof = {"concentration_caps": [
        {"below": D(int(below[k])) / S, **{key: D(int(arr[k])) / S for key, arr in
                                           (("single", single), ("group", group),
                                            ("board", board)) if arr[k] >= 0}}
        for k in range(n_bands)]}
    rf = CreditRef.__new__(CreditRef)
    rf.profiles = {"p": prof}
    caps = rf.caps({"profile": "p"}, D(int(assets)), D(int(liabilities)))
    return tuple(int(caps[key] * S) if key in caps else -1 for key in ("single", "group", "board"))


def account_items(a, assets, price, lptr, lsec, lqty, sec_group, sec_board, cap_single,
                  cap_group, cap_board, tol_bp, out_kind, out_item, out_mv, out_cap, gid, gmv,
                  bmv):
    """CreditRef.items on flat arrays, keeping those above cap − tol_bp: holdings in row
    order, then groups in order of their first holding, then boards in code order."""
    if lptr[a + 1] == lptr[a] or assets <= 0:
        return 0
    rows, groups, boards = [], {}, {}
    for j in range(lptr[a], lptr[a + 1]):
        s = int(lsec[j])
        mv = int(lqty[j]) * int(price[s])
        if mv <= 0:
            continue
        rows.append((s, mv))
        if sec_group[s] >= 0:
            groups[int(sec_group[s])] = groups.get(int(sec_group[s]), 0) + mv
        boards[int(sec_board[s])] = boards.get(int(sec_board[s]), 0) + mv
    items = []
    for kind, cap, vals in ((0, cap_single, rows), (1, cap_group, list(groups.items())),
                            (2, cap_board, sorted(boards.items()))):
        if cap >= 0:
            items += [(kind, x, mv, cap) for x, mv in vals if mv * S > (cap - tol_bp) * assets]
    items = items[:out_kind.shape[0]]
    for i, (kind, x, mv, cap) in enumerate(items):
        out_kind[i], out_item[i], out_mv[i], out_cap[i] = kind, x, mv, cap
    return len(items)


def _mix(key: int) -> int:
    """splitmix64's finaliser, in Python integers mod 2^64."""
    z = (key + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def set_fingerprint(kinds, items):
    return _signed(sum(_mix(((int(k) << 32) | int(i)) & M64) for k, i in zip(kinds, items,
                                                                            strict=True)))


def concentration_fingerprints(accounts, assets, liabilities, profile_of, band_below,
                               band_single, band_group, band_board, n_bands, price, lptr, lsec,
                               lqty, sec_group, sec_board, tol_bp, out_over, out_near):
    buf = [np.zeros(64, dtype=np.int64) for _ in range(4)]
    for i, a in enumerate(accounts):
        p = profile_of[a]
        caps = band_caps(assets[i], liabilities[i], band_below[p], band_single[p],
                         band_group[p], band_board[p], n_bands[p])
        out_over[i] = out_near[i] = 0
        if max(caps) < 0:
            continue
        scratch = [np.zeros(1, dtype=np.int64)] * 3
        n = account_items(a, int(assets[i]), price, lptr, lsec, lqty, sec_group, sec_board,
                          *caps, tol_bp, *buf, *scratch)
        kind, item, mv, cap = (x[:n] for x in buf)
        over = [k for k in range(n) if mv[k] * S > cap[k] * assets[i]]
        out_near[i] = set_fingerprint(kind, item)
        out_over[i] = set_fingerprint(kind[over], item[over])


def line_use(accounts, pos_ptr, pos_kind, pos_cost, out_financed, out_short):
    """CreditRef.line_use: financed principal and short-sale amount outstanding."""
    for i, a in enumerate(accounts):
        rows = range(pos_ptr[a], pos_ptr[a + 1])
        out_financed[i] = sum(int(pos_cost[j]) for j in rows if pos_kind[j] == u.FINANCED)
        out_short[i] = sum(int(pos_cost[j]) for j in rows if pos_kind[j] == u.SHORT)


def line_levels(used, line, thresholds_bp, n_thresholds):
    """Alert thresholds reached (`used >= t·line`); no line (-1): 0; a zero line with any use
    reaches them all."""
    if line < 0:
        return 0
    reached = [k + 1 for k in range(n_thresholds)
               if used * S >= thresholds_bp[k] * line and (line > 0 or used > 0)]
    return max(reached, default=0)


def line_levels_many(accounts, used_fin, used_short, fin_line, short_line, profile_of,
                     thresholds_bp, n_thresholds, out_fin, out_short):
    for i, a in enumerate(accounts):
        p = profile_of[a]
        out_fin[i] = line_levels(used_fin[i], fin_line[a], thresholds_bp[p], n_thresholds[p])
        out_short[i] = line_levels(used_short[i], short_line[a], thresholds_bp[p],
                                   n_thresholds[p])


# ------------------------------------------------------------------------------ liquidation

_STATUS = {name: code for code, name in enumerate(u.STATUS_NAMES)}


def liquidation_status(assets, liabilities, target_bp):
    return _STATUS[ref.liquidation_status(D(int(assets)), D(int(liabilities)),
                                          D(int(target_bp)) / S)]


def liquidation_value(assets, liabilities, target_bp, sell_cost, buy_cost):
    """reference.liquidation_value; with costs, §4's closed form with them."""
    A, L, T = D(int(assets)), D(int(liabilities)), D(int(target_bp)) / S
    x = ref.liquidation_value(A, L, T)
    if x is None:
        return np.nan
    if x == 0 or (sell_cost == 0 and buy_cost == 0):
        return float(x)
    sell, buy = D(repr(float(sell_cost))), D(repr(float(buy_cost)))
    den = T - 1 - buy if buy > 0 else T * (1 - sell) - 1
    return np.nan if den <= 0 else float(ref.div(T * L - A, den))


def _securities(price, prev_close, haircut, lot=None, step=None, sell_blocked=None,
                buy_blocked=None):
    """reference.py securities (duck-typed), prices in yuan; blocked flags as given."""
    out = []
    for s in range(price.shape[0]):
        sec = SimpleNamespace(prev_close=D(int(prev_close[s])) / 1000,
                              haircut=D(repr(float(haircut[s]))))
        if lot is not None:
            sec.lot, sec.step = int(lot[s]), int(step[s])
            sec.sell_blocked = (lambda px, f=bool(sell_blocked[s]): f)
            sec.buy_blocked = (lambda px, f=bool(buy_blocked[s]): f)
        out.append(sec)
    return out


def plan_order(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost, price, prev_close, haircut,
               group_rank):
    secs = _securities(price, prev_close, haircut)
    px = {s: D(int(p)) / 1000 for s, p in enumerate(price)}
    pos = _positions(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost,
                     np.zeros(pos_qty.shape[0]), secs)
    for p in pos:
        p.cost = p.cost / 1000
    return np.array([p.row for p in ref.policy_order(pos, px, tuple(int(g) for g in group_rank))],
                    dtype=np.int64)


def plan_account(a, cash, accrued, other_debt, other_collateral, target_bp, pos_ptr, pos_sec,
                 pos_kind, pos_qty, pos_cost, price, prev_close, haircut, lot, step,
                 sell_blocked, buy_blocked, sell_cost, buy_cost, group_rank, use_free_cash,
                 out_sec, out_side, out_qty, out_value):
    """reference.plan on the account's cash, in yuan (fees round up to the li)."""
    secs = _securities(price, prev_close, haircut, lot, step, sell_blocked, buy_blocked)
    px = {s: D(int(p)) / 1000 for s, p in enumerate(price)}
    pos = _positions(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost,
                     np.zeros(pos_qty.shape[0]), secs)
    for p in pos:
        p.cost = p.cost / 1000
    m = {"cash": D(int(cash)) / 1000, "accrued": D(int(accrued)) / 1000,
         "other_debt": D(int(other_debt)) / 1000, "other_coll": D(int(other_collateral)) / 1000,
         "positions": pos, "financed": sum((p.cost for p in pos if p.kind == "financed"), D(0)),
         "long_mv": sum((p.qty * px[p.symbol] for p in pos if not p.is_short), D(0)),
         "short_mv": sum((p.qty * px[p.symbol] for p in pos if p.is_short), D(0)),
         "short_proceeds": sum((p.cost for p in pos if p.is_short), D(0))}
    A = max(m["cash"], 0) + m["other_coll"] + m["long_mv"]
    L = (m["financed"] + m["accrued"] + m["other_debt"] + m["short_mv"]
         + max(-m["cash"], D(0)))
    rows, A2, L2, repaid = ref.plan(m, px, A, L, D(int(target_bp)) / S,
                                    D(repr(float(sell_cost))), D(repr(float(buy_cost))),
                                    tuple(int(g) for g in group_rank), bool(use_free_cash))
    for r, row in enumerate(rows):
        out_sec[r] = row["symbol"]
        out_side[r] = u.SIDE_BUY_TO_COVER if row["side"] == "buy_to_cover" else u.SIDE_SELL
        out_qty[r] = row["qty"]
        out_value[r] = int(row["value"] * 1000)
    return len(rows), int(A2 * 1000), int(L2 * 1000), int(repaid * 1000)


def cash_repayment_of(cash, accrued, principal, proceeds, assets, liabilities, target_bp, full):
    """reference.cash_repayment, in money units."""
    C, I, F = D(int(cash)), D(int(accrued)), D(int(principal))
    # the amounts as given: A and L (what is not cash or I + F is other collateral / debt)
    acct = ref.Account(cash=C, accrued=I, principal=F,
                       other_debt=D(int(liabilities)) - I - F - max(-C, D(0)),
                       other_coll=D(int(assets)) - max(C, D(0)), long_mv=D(0), short_mv=D(0))
    x = ref.cash_repayment(acct, D(int(proceeds)), D(int(target_bp)) / S, bool(full))
    return int(x)


def blocked_flags(price, limit_down, limit_up, has_limit, suspended, sell_blocked, buy_blocked):
    """reference.Security.sell_blocked / buy_blocked per security."""
    for s in range(price.shape[0]):
        lim = bool(has_limit[s])
        sec = SimpleNamespace(suspended=bool(suspended[s]),
                              limit_down=int(limit_down[s]) if lim else None,
                              limit_up=int(limit_up[s]) if lim else None)
        sell_blocked[s] = ref.Security.sell_blocked(sec, int(price[s]))
        buy_blocked[s] = ref.Security.buy_blocked(sec, int(price[s]))


# ------------------------------------------------------------------------------ bands


def _li(x: D) -> int:
    return int(x * 1000)


def limit_prices(prev_close, band_bp, tick, down, up):
    """reference.limit_price (Decimal, half up to the tick); without a limit the guard band
    [tick, NO_LIMIT_CEILING × prev_close]."""
    for s in range(prev_close.shape[0]):
        pc, t = D(int(prev_close[s])) / 1000, D(int(tick[s])) / 1000
        if band_bp[s] < 0:
            down[s] = int(tick[s])
            up[s] = max(int(prev_close[s]) * bands.NO_LIMIT_CEILING, int(tick[s]))
            continue
        band = D(int(band_bp[s])) / S
        down[s] = max(_li(ref.limit_price(pc, band, False, t)), 0)
        up[s] = _li(ref.limit_price(pc, band, True, t))


def stress_prices(price, band_bp, limit_down, limit_up, tick, shock_bp, down, up):
    """reference.Security.stress_prices, with the kernel's shock."""
    for s in range(price.shape[0]):
        if band_bp[s] >= 0:
            down[s], up[s] = int(limit_down[s]), int(limit_up[s])
            continue
        sec = SimpleNamespace(band=None, tick=D(int(tick[s])) / 1000)
        d, u_ = ref.Security.stress_prices(sec, D(int(price[s])) / 1000, D(int(shock_bp)) / S)
        down[s], up[s] = _li(d), _li(u_)
