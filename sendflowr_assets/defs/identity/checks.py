"""Checks beside the `identity_graph` asset; each is one function of sendflowr.identity.checks. Nothing to check
(no graph, no merge yet) is a warning that says why, never a pass."""

from sendflowr.identity import checks
from sendflowr_assets.findings import core_check

one_universal_id_per_identifier = core_check("identity_graph", checks.one_universal_id_per_identifier)
no_person_over_size_cap = core_check("identity_graph", checks.no_person_over_size_cap)
merge_log_acyclic = core_check("identity_graph", checks.merge_log_acyclic)

IDENTITY_CHECKS = [one_universal_id_per_identifier, no_person_over_size_cap, merge_log_acyclic]
