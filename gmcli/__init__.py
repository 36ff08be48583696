"""gmcli: train, attack, audit and report image classifiers with the GM loss."""

from __future__ import annotations

__version__ = "0.1.0"
