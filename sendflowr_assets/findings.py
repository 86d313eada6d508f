"""A core Finding (sendflowr.findings) as Dagster shows it: nothing to check is a warning that says why, never a
pass; and an asset check that is one core check."""

from collections.abc import Callable

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, MetadataValue, asset_check

from sendflowr.findings import Finding
from sendflowr_assets.resources import SendflowrResource


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


def core_check(asset: str, check: Callable[..., Finding], *, name: str | None = None,
               severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
               args: Callable[[SendflowrResource], tuple] = lambda r: (r.client(), r.clickhouse_database),
               ) -> AssetChecksDefinition:
    """An asset check that is one core check: `check(*args(resource))`, described by its docstring."""

    @asset_check(asset=asset, name=name or check.__name__, description=check.__doc__)
    def _check(sendflowr: SendflowrResource) -> AssetCheckResult:
        return check_result(check(*args(sendflowr)), severity)

    return _check
