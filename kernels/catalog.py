"""Every public kernel in one table: what it computes, its plain reference and its inputs.

One row per public `@njit` function of kernels/. The table drives both
tests/kernels/test_kernel_catalog.py (each kernel against its reference on the row's sample
inputs; every public kernel must have a row; signed kernels refuse a wrong dtype) and
bench/test_bench_catalog.py (a benchmark per row), so a new kernel gets a test and a benchmark by
adding its row, and cannot be added without a reference.

- `reference`: `module.function` of the reference the tests call with the kernel's own
  arguments (tests/kernel_reference.py); `basis`: the exact or plain reference it rests on.
- `make(seed, size)`: the argument tuple of one call (kernels/samples.py; `size` is accounts).
- `check`: for kernels that compute a rounded bound, the reference module's function that says
  how close it must be; otherwise outputs and return value must equal the reference's
  (floats within `tol` = (rtol, atol)).
- `scratch`: argument positions that are work space, not output (not compared).
- `stateful`: a call changes inputs a second call reads (the benchmark copies them per round).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import (
    bands,
    common,
    concentration,
    conflate,
    desk,
    incremental,
    liquidation,
    margin,
    ratios,
    reach,
    stress,
    totals,
)
from . import samples as s


@dataclass(frozen=True)
class Kernel:
    name: str
    kernel: Callable
    what: str
    reference: str
    basis: str
    make: Callable[[int, int], tuple]
    check: str | None = None
    tol: tuple[float, float] | None = None
    scratch: tuple[int, ...] = ()
    stateful: bool = False

    @property
    def signed(self) -> bool:
        """Compiled for its declared signature only (no new specialisation at a call)."""
        return not self.kernel._can_compile and len(self.kernel.signatures) == 1


R = "kernel_reference."
TIER = "reference.tier"
HYST = "reference.tier + hysteresis"
SUMS = "_baselines.segment_sums"

KERNELS: tuple[Kernel, ...] = (
    # common.py: the tier loop the sweep and the incremental re-tier share
    Kernel("common.line_mode", common.line_mode,
           "how the tier loop reads lines: select chain, packed words or table",
           R + "line_mode", "plain restatement", s.make_line_mode),
    Kernel("common.block_tiers", common.block_tiers,
           "next reported tier (hysteresis) of a block of aligned accounts",
           R + "block_tiers", "_baselines.numpy_tiers", s.make_block_tiers),
    Kernel("common.next_tier_branchless", common.next_tier_branchless,
           "next reported tier of one account, branch-free",
           R + "next_tier_branchless", HYST, s.make_next_tier_branchless),
    # ratios.py: the full sweep
    Kernel("ratios.tier_of", ratios.tier_of, "plain tier of one account, lines raised by a band",
           R + "tier_of", TIER, s.make_tier_of),
    Kernel("ratios.next_reported_tier", ratios.next_reported_tier,
           "hysteresis: the tier to report next, given the reported one",
           R + "next_reported_tier", HYST, s.make_next_reported_tier),
    Kernel("ratios.sweep", ratios.sweep,
           "long and short market value of every account (separate long / short prices)",
           R + "sweep", SUMS, s.make_sweep),
    Kernel("ratios.sweep_tiers", ratios.sweep_tiers,
           "full sweep: market values and next reported tier of every account",
           R + "sweep_tiers", "_baselines.numpy_sweep_tiers", s.make_sweep_tiers),
    Kernel("ratios.collect_changes", ratios.collect_changes,
           "list accounts whose candidate tier differs from the reported one; commit it",
           R + "collect_changes", "plain loop", s.make_collect_changes, stateful=True),
    Kernel("ratios.plain_tiers", ratios.plain_tiers, "plain tier of every account",
           R + "plain_tiers", TIER, s.make_plain_tiers),
    # incremental.py: price changes through the holder index
    Kernel("incremental.holders_touched", incremental.holders_touched,
           "holder rows an update of some securities walks (sweep-or-incremental cost)",
           R + "holders_touched", "plain loop", s.make_holders_touched),
    Kernel("incremental.apply_price_changes", incremental.apply_price_changes,
           "move prices, update the holders' market values, list touched accounts once",
           R + "apply_price_changes", "market values afresh at both prices",
           s.make_apply_price_changes, stateful=True),
    Kernel("incremental.retier_accounts", incremental.retier_accounts,
           "re-tier listed accounts with hysteresis, commit and list the changes",
           R + "retier_accounts", HYST, s.make_retier_accounts, stateful=True),
    # conflate.py: ticks into cycles
    Kernel("conflate.conflate", conflate.conflate,
           "fold ticks into the pending set (last price per symbol wins)",
           R + "conflate", "plain loop", s.make_conflate, stateful=True),
    Kernel("conflate.take_pending", conflate.take_pending,
           "move the pending set out, remembering each symbol's price before the cycle",
           R + "take_pending", "plain loop", s.make_take_pending, stateful=True),
    Kernel("conflate.triggers", conflate.triggers,
           "per account, the security whose move hurt it most (or helped it most)",
           R + "triggers", "plain loop", s.make_triggers),
    # totals.py
    Kernel("totals.tier_totals", totals.tier_totals,
           "accounts and liabilities per reported tier (the summary)",
           R + "tier_totals", "plain loop", s.make_tier_totals),
    # margin.py
    Kernel("margin.available_margin_balance_one", margin.available_margin_balance_one,
           "available margin balance of one account (margin-rules.md §3, float64)",
           R + "available_margin_balance_one", "reference.available_margin_balance",
           s.make_available_margin_balance_one, tol=(1e-12, 1.0)),
    Kernel("margin.available_margin_balance", margin.available_margin_balance,
           "available margin balance of listed accounts",
           R + "available_margin_balance", "reference.available_margin_balance",
           s.make_available_margin_balance, tol=(1e-12, 1.0)),
    Kernel("margin.free_cash", margin.free_cash,
           "cash less the short-sale proceeds of open shorts, at least 0 (margin-rules.md §1)",
           R + "free_cash", "reference.free_cash", s.make_free_cash),
    Kernel("margin.withdrawable_one", margin.withdrawable_one,
           "cash one account may withdraw: free cash, within AMB, staying at the line",
           R + "withdrawable_one", "reference.withdrawable", s.make_withdrawable_one),
    Kernel("margin.withdrawable", margin.withdrawable,
           "withdrawable cash of every listed account",
           R + "withdrawable", "reference.withdrawable", s.make_withdrawable),
    # stress.py
    Kernel("stress.stress_ratio", stress.stress_ratio,
           "ratio with longs at limit-down and shorts at limit-up",
           R + "stress_ratio", "Decimal A / L (reference.div)",
           s.make_stress_ratio, tol=(1e-15, 0.0)),
    Kernel("stress.distance_one", stress.distance_one,
           "uniform fall of long prices that brings one account to a line",
           R + "distance_one", "reference.distance", s.make_distance_one, tol=(0.0, 1e-9)),
    Kernel("stress.distances", stress.distances,
           "the falls to the normal, warning and margin-call lines of every account",
           R + "distances", "reference.distance", s.make_distances, tol=(0.0, 1e-9)),
    # reach.py: evaluate only what prices can have moved across a line
    Kernel("reach.account_values", reach.account_values,
           "exact long and short market values of listed accounts",
           R + "account_values", "plain loop", s.make_account_values),
    Kernel("reach.short_values", reach.short_values, "exact short market value of every account",
           R + "short_values", "plain loop", s.make_short_values),
    Kernel("reach.reach_of", reach.reach_of,
           "fraction every price may move before one account's tier can change",
           R + "reach_of", "exact bound (reach.py docstring, Decimal)", s.make_reach_of,
           check=R + "check_reach_of"),
    Kernel("reach.bound_of", reach.bound_of, "reach and class shares of one account",
           R + "bound_of", "exact bound (reach.py docstring, Decimal)", s.make_bound_of,
           check=R + "check_bound_of"),
    Kernel("reach.update_deltas", reach.update_deltas,
           "raise each chunk's per-class largest relative move by this cycle's moves",
           R + "update_deltas", "exact relative moves (Decimal)", s.make_update_deltas,
           check=R + "check_update_deltas"),
    Kernel("reach.refresh_range", reach.refresh_range,
           "exact values, tiers and bounds of a chunk at new reference prices",
           R + "refresh_range", HYST + ", exact bound", s.make_refresh_range,
           check=R + "check_refresh_range", stateful=True),
    Kernel("reach.rebase_all", reach.rebase_all, "the bound of every account at given prices",
           R + "rebase_all", "exact bound (reach.py docstring, Decimal)", s.make_rebase_all,
           check=R + "check_rebase_all"),
    Kernel("reach.scan_range", reach.scan_range,
           "re-tier exactly the accounts of a chunk the moves may have brought within reach",
           R + "scan_range", HYST + ", every account", s.make_scan_range,
           check=R + "check_scan_range", stateful=True),
    # desk.py: the risk desk's queries
    Kernel("desk.crowding", desk.crowding,
           "per security at limit-down: holders, accounts and debt crossing each line",
           R + "crowding", TIER, s.make_crowding),
    Kernel("desk.shift_all", desk.shift_all,
           "what-if: amounts and plain tiers after every price moves by a delta",
           R + "shift_all", TIER, s.make_shift_all),
    Kernel("desk.shift_holders", desk.shift_holders,
           "what-if, few securities: add the moves to their holders' amounts",
           R + "shift_holders", "plain loop", s.make_shift_holders),
    Kernel("desk.account_shift", desk.account_shift,
           "what the price moves added to listed accounts' assets and liabilities",
           R + "account_shift", "plain loop", s.make_account_shift),
    Kernel("desk.plain_tiers_of", desk.plain_tiers_of, "plain tier of every account (the desk's)",
           R + "plain_tiers", TIER, s.make_plain_tiers),
    Kernel("desk.tally", desk.tally, "tier-to-tier transition counts and debts",
           R + "tally", "plain loop", s.make_tally),
    # concentration.py: caps and credit lines
    Kernel("concentration.band_caps", concentration.band_caps,
           "single / group / board caps of the first band the ratio is under",
           R + "band_caps", "credit_reference.CreditRef.caps", s.make_band_caps),
    Kernel("concentration.account_items", concentration.account_items,
           "holdings, groups and boards of one account above their cap (less a tolerance)",
           R + "account_items", "credit_reference.CreditRef.items", s.make_account_items,
           scratch=(16, 17, 18)),
    Kernel("concentration.set_fingerprint", concentration.set_fingerprint,
           "order-free 64-bit fingerprint of a set of (kind, item) keys",
           R + "set_fingerprint", "splitmix64 sum, Python integers", s.make_set_fingerprint),
    Kernel("concentration.concentration_fingerprints", concentration.concentration_fingerprints,
           "per account, fingerprints of the items over their cap and near it",
           R + "concentration_fingerprints", "credit_reference.CreditRef.items",
           s.make_concentration_fingerprints),
    Kernel("concentration.line_use", concentration.line_use,
           "financed principal and short-sale amount outstanding per account",
           R + "line_use", "credit_reference.CreditRef.line_use", s.make_line_use),
    Kernel("concentration.line_levels", concentration.line_levels,
           "alert thresholds one credit line's use has reached",
           R + "line_levels", "plain loop", s.make_line_levels),
    Kernel("concentration.line_levels_many", concentration.line_levels_many,
           "alert levels of the financing and short lines of listed accounts",
           R + "line_levels_many", "plain loop", s.make_line_levels_many),
    # liquidation.py: sizing and the lot-rounded plan
    Kernel("liquidation.liquidation_status", liquidation.liquidation_status,
           "NOT_REQUIRED / REQUIRED / UNREACHABLE_FULL_LIQUIDATION of one account",
           R + "liquidation_status", "reference.liquidation_status", s.make_liquidation_status),
    Kernel("liquidation.liquidation_value", liquidation.liquidation_value,
           "market value to sell or buy back to reach the target (closed form, with costs)",
           R + "liquidation_value", "reference.liquidation_value", s.make_liquidation_value,
           tol=(1e-12, 1e-6)),
    Kernel("liquidation.plan_order", liquidation.plan_order,
           "position rows of one account in the default policy's order",
           R + "plan_order", "reference.policy_order", s.make_plan_order),
    Kernel("liquidation.plan_account", liquidation.plan_account,
           "lot-rounded liquidation plan of one account on its cash (free cash first, least "
           "liquidation), and A, L and the cash repayment after",
           R + "plan_account", "reference.plan", s.make_plan_account),
    Kernel("liquidation.cash_repayment_of", liquidation.cash_repayment_of,
           "free cash first: what free cash repays before any order, min(C_free, x*, I + F)",
           R + "cash_repayment_of", "reference.cash_repayment", s.make_cash_repayment_of),
    Kernel("liquidation.blocked_flags", liquidation.blocked_flags,
           "untradable securities: suspended, longs at limit-down, shorts at limit-up",
           R + "blocked_flags", "reference.Security.sell_blocked / buy_blocked",
           s.make_blocked_flags),
    # bands.py: daily price limits by trading date
    Kernel("bands.limit_prices", bands.limit_prices,
           "limit-down / limit-up of every security from its band and tick (half up)",
           R + "limit_prices", "reference.limit_price", s.make_limit_prices),
    Kernel("bands.stress_prices", bands.stress_prices,
           "one-day stress prices: the limits, or the shock for a security without one",
           R + "stress_prices", "reference.Security.stress_prices", s.make_stress_prices),
)

BY_NAME = {k.name: k for k in KERNELS}
