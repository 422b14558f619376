"""gradaudit: how much of a federated-learning client's private data can be rebuilt from its update.

The flow is one-way (see docs/architecture): data -> models -> threat (client -> update) -> defenses ->
Observation -> attacks -> Reconstruction -> metrics -> evaluation -> report -> cli. An attack only ever sees an
:class:`~gradaudit.threat.Observation`, never the private batch.
"""

__version__ = "0.1.0"
