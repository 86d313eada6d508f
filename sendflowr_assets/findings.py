"""A core Finding (sendflowr.findings) as Dagster shows it: nothing to check is a warning that says why, never a
pass."""

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from sendflowr.findings import Finding


def check_result(found: Finding, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
                 check_name: str | None = None) -> AssetCheckResult:
    """`check_name` for a check reported by its asset (check_specs); a separate @asset_check knows its own."""
    metadata = {name: value if isinstance(value, bool | int | float | str) else MetadataValue.json(value)
                for name, value in found.facts.items()}
    if found.skipped:
        return AssetCheckResult(check_name=check_name, passed=False, severity=AssetCheckSeverity.WARN,
                                description=found.skipped,
                                metadata={"skipped": MetadataValue.text(found.skipped), **metadata})
    return AssetCheckResult(check_name=check_name, passed=found.passed, severity=severity,
                            description=found.summary or None, metadata=metadata)
