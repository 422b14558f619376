"""Threat model: clients that produce updates, and the Observation the server holds."""

from .aggregation import aggregate
from .client import Client, ServerKnowledge, batch_statistics, batchnorm_layers
from .observation import DataSpec, Observation
from .threat_model import AttackThreat, ThreatModel, applies

__all__ = ["aggregate", "Client", "ServerKnowledge", "DataSpec", "Observation", "batch_statistics", "batchnorm_layers",
           "AttackThreat", "ThreatModel", "applies"]
