"""Audit the federated run you already have: Flower strategies and Opacus-private models.

* :mod:`.audit` - framework-free core: weights -> :class:`~gradaudit.threat.Observation`, the
  :class:`~.audit.Auditor` that attacks / scores / stores one captured update, and the ``audit`` table of the
  results store (:class:`~.audit.AuditStore`).
* :mod:`.flower` - :class:`~.flower.AuditingStrategy`, a wrapper around any Flower strategy (needs ``flwr``).
* :mod:`.opacus` - :class:`~.opacus.OpacusClient`, a client whose DP-SGD runs in Opacus (needs ``opacus``).
* the per-round leakage table and its HTML page: :mod:`gradaudit.report.audit`.

``flwr`` and ``opacus`` are optional (``pip install 'gradaudit[integrations]'``); importing this package never
imports them.
"""
