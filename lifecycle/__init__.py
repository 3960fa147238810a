"""The experiment core: configuration, allocation, rollout, kill switch, audit log, monitors."""

from lifecycle.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
