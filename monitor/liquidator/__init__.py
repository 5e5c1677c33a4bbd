"""Automated forced liquidation (强制平仓): a Redis Streams worker that turns the monitor's
FORCED_LIQUIDATION, CALL_EXPIRED and CONTRACT_EXPIRED alerts into orders for the broker's
order system, at least once and idempotent (docs/liquidation.md).

- :class:`Liquidator` (worker.py): the consumer-group worker behind ``margin-monitor liquidator``.
- :class:`LiquidationControl` (control.py): approvals and the kill switch, for the CLI and the
  risk desk.
- hooks.py: where orders go (Redis stream, signed webhook, Python function); ``verify`` for
  webhook receivers.
- repricer.py: fresh plans from the running monitor when a trigger's plan is too old.
- outbound.py: the pooled keep-alive HTTP client (httpx) of the webhook and the repricer.
"""

from monitor.liquidator.config import LiquidatorConfig, load_liquidator_config
from monitor.liquidator.control import ControlError, LiquidationControl
from monitor.liquidator.hooks import HookError, PermanentHookError, sign, verify
from monitor.liquidator.orders import Keys, build_orders, order_id
from monitor.liquidator.repricer import HttpRepricer, PermanentRepriceError, RepriceError, Repricer
from monitor.liquidator.worker import Liquidator

__all__ = [
    "ControlError", "HookError", "HttpRepricer", "Keys", "LiquidationControl", "Liquidator",
    "LiquidatorConfig", "PermanentHookError", "PermanentRepriceError", "RepriceError",
    "Repricer", "build_orders", "load_liquidator_config", "order_id", "sign", "verify",
]
