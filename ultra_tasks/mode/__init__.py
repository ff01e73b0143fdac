"""The global operation mode (NORMAL / DEGRADED / EMERGENCY), its policy and its listeners."""

from ultra_tasks.mode.operation_mode import SystemOperationMode
from ultra_tasks.mode.policy import ComponentState, Mode, evaluate

__all__ = ["ComponentState", "Mode", "SystemOperationMode", "evaluate"]
