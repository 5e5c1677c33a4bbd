"""The HTTP and websocket edge: alert channel, desk API and static files, pre-trade."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"  # the risk desk screen
