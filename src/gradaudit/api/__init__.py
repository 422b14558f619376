"""The Python API behind every command: one function per behaviour, outputs included.

The CLI (:mod:`gradaudit.cli`) only parses options and prints; what a command does and writes lives here, so
anything the command line does can be done from Python with the same checks:

* :func:`audit_deployment` - ``gradaudit audit`` (a whole deployment: victim, risk, attacks, utility, verdict);
* :func:`audit_runs` / :func:`attack_captured` / :func:`run_demo` - ``gradaudit attack`` and ``demo``;
* :func:`export_observation` / :func:`inspect_observation` / :func:`validate_observation` - ``observation``;
* :func:`vulnerability_ranking` - ``gradaudit vulnerability`` (the ranking and its files);
* :func:`utility_from_sweep` - ``gradaudit utility --sweep`` (a sweep's defenses, data and model).

Every function checks all of its input (:mod:`gradaudit.checks`) before any work or any file is created.
"""

from .attack import (RUN_FILES, DemoResult, attack_captured, audit_runs, check_run_output, demo_configs,
                     run_demo)
from .audit import AuditResult, audit_deployment
from .observation import export_observation, inspect_observation, validate_observation
from .utility import utility_from_sweep
from .vulnerability import VULNERABILITY_FILES, vulnerability_ranking, vulnerability_validation

__all__ = ["AuditResult", "DemoResult", "audit_deployment", "RUN_FILES", "VULNERABILITY_FILES", "attack_captured", "audit_runs", "check_run_output",
           "demo_configs", "export_observation", "inspect_observation", "run_demo", "utility_from_sweep",
           "validate_observation", "vulnerability_ranking", "vulnerability_validation"]
