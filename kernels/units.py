"""Units and money representation: defined here once, used everywhere.

Money and prices are int64 fixed point in thousandths of a yuan (li, 厘): A-share prices move in
0.01 or 0.001 steps, so `qty * price` is exact, sums are exact, and an incremental update
`qty * (new - old)` never drifts. Ratios and lines are int64 basis points (1.30 -> 13000), so
`R < b` is decided exactly as `assets * 10_000 < b_bp * liabilities`, with no division and no
float noise. Floats appear only at the edges (reported ratios, haircuts, margin ratios).

Headroom: an account's assets or liabilities must stay below MAX_ACCOUNT_MONEY so that
`assets * RATIO_SCALE` fits in int64; books beyond it are rejected at load.
"""

import numpy as np

MONEY_SCALE = 1000  # int units per yuan (li)
PRICE_SCALE = MONEY_SCALE  # prices share the money unit, so qty * price is money
RATIO_SCALE = 10_000  # basis points per 1.00 (100%)

MONEY_DTYPE = np.int64
PRICE_DTYPE = np.int64
QTY_DTYPE = np.int64
INDEX_DTYPE = np.int32  # dense account / security / position indices
PTR_DTYPE = np.int64  # CSR / CSC offsets
TIER_DTYPE = np.int8
BP_DTYPE = np.int64

# |assets| and |liabilities| per account, in money units: 9.2e18 / 1e4 / 10 (a 10x margin for
# intraday moves). About 92 billion yuan per account.
MAX_ACCOUNT_MONEY = np.iinfo(np.int64).max // RATIO_SCALE // 10

# Bounds on what enters a live book (book load, account events, pre-trade requests); the table
# is in docs/reliability.md ("Poison input"). Every running balance of an account is held under
# one bound, its gross amount
#
#     G = |cash| + accrued + other_debt + other_collateral
#         + sum over positions of (|cost| + qty * max(price, limit_up))
#
# G <= MAX_ACCOUNT_MONEY (checked at load and before every account event is applied), so at any
# price the tick guard accepts (never above limit_up): cash, accrued interest, every position's
# principal or short-sale amount and market value, and the account's assets A and liabilities L
# are each <= MAX_ACCOUNT_MONEY. Then A * RATIO_SCALE <= 9.2e17 and (line + hysteresis) * L <=
# 2 * MAX_LINE_BP * MAX_ACCOUNT_MONEY <= int64 max, and a plan's qty * price and
# A * RATIO_SCALE >= target * L products fit too.
MAX_EVENT_MONEY = MAX_ACCOUNT_MONEY  # amount or fee of one event, qty * price of one fill
MAX_PRICE = 10_000_000 * MONEY_SCALE  # a fill's price: 10 million yuan per share
MAX_FILL_QTY = 10**12  # shares in one fill (or pre-trade action)
MAX_RATE_BP = 10 * RATIO_SCALE  # financing / short-fee rate (per year), margin ratio: <= 10.00
RATE_DIGITS = 8  # interest rates are taken to 8 decimal places (half up)
MAX_ACCRUAL_DAYS = 366  # days of one interest accrual
MAX_LINE_BP = 5 * RATIO_SCALE  # a line profile's lines and target: <= 5.00 (500%)
MAX_HYSTERESIS_BP = MAX_LINE_BP  # so (line + hysteresis) * L fits in int64
# account-event `ts`: integer ns, not before 2000-01-01T00:00:00Z and not beyond the clock +
# the allowed skew (the monitor's `max_tick_skew_s`, default 5 s, also bounds tick times)
MIN_EVENT_TS_NS = 946_684_800 * 10**9
DEFAULT_MAX_SKEW_NS = 5 * 10**9

# Tiers, worst first: a larger code is a better tier, so "worse" is "<".
FORCED_LIQUIDATION = 0
MARGIN_CALL = 1
WARNING = 2
NORMAL = 3
WITHDRAWABLE = 4
NO_DEBT = 5
TIER_NAMES = ("FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING", "NORMAL", "WITHDRAWABLE", "NO_DEBT")
TIER_CODES = {name: code for code, name in enumerate(TIER_NAMES)}
UNSET_TIER = -1  # no tier reported yet (start of a run)

# Profile line columns (basis points): the four lines of margin-rules.md §2 and the target.
LINE_WITHDRAWABLE = 0
LINE_NORMAL = 1
LINE_WARNING = 2
LINE_MARGIN_CALL = 3
LINE_TARGET = 4
N_LINES = 5
LINE_NAMES = ("withdrawable", "normal", "warning", "margin_call", "target")
DEFAULT_LINES_BP = (30_000, 15_000, 13_000, 11_500, 15_000)
DEFAULT_HYSTERESIS_BP = 50  # 0.5 percentage points

# Position kinds.
COLLATERAL = 0
FINANCED = 1
SHORT = 2
KIND_NAMES = ("collateral", "financed", "short")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}

# Boards and their default lot (the daily price limits by board and date: kernels/bands.py).
BOARD_MAIN = 0
BOARD_CHINEXT = 1
BOARD_STAR = 2
BOARD_BSE = 3
BOARD_ST = 4
BOARD_NAMES = ("main", "chinext", "star", "bse", "st")
BOARD_CODES = {name: code for code, name in enumerate(BOARD_NAMES)}
BOARD_DEFAULT_LOT = np.array([100, 100, 200, 100, 100], dtype=np.int64)
# STAR: at least `lot` (200) shares per order, then any whole share above it.
BOARD_STEP = np.array([100, 100, 1, 1, 100], dtype=np.int64)
# The price tick of stocks (0.01; funds trade in 0.001: kernels/bands.py).
LIMIT_TICK = MONEY_SCALE // 100

# Liquidation status.
NOT_REQUIRED = 0
REQUIRED = 1
UNREACHABLE_FULL_LIQUIDATION = 2
STATUS_NAMES = ("NOT_REQUIRED", "REQUIRED", "UNREACHABLE_FULL_LIQUIDATION")

# Plan sides.
SIDE_SELL = 0
SIDE_BUY_TO_COVER = 1
SIDE_NAMES = ("sell", "buy_to_cover")


def money_to_float(x):
    """Integer money units -> yuan as float (for reporting only)."""
    return x / MONEY_SCALE
