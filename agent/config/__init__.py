"""Configuration: one TOML file, validated once at the edge into frozen typed objects."""

from agent.config.load import ConfigError, Problem, from_mapping, load
from agent.config.model import (
    AgentSettings,
    Config,
    Destination,
    Equipment,
    HardwareSettings,
    Peer,
    TlsSettings,
    TuiSettings,
    WorklistSettings,
)

__all__ = [
    "AgentSettings",
    "Config",
    "ConfigError",
    "Destination",
    "Equipment",
    "HardwareSettings",
    "Peer",
    "Problem",
    "TlsSettings",
    "TuiSettings",
    "WorklistSettings",
    "from_mapping",
    "load",
]
