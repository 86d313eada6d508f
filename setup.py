"""Only what pyproject.toml cannot say: the top-level sql/ folder ships inside the package as `sendflowr._sql`
(package-dir needs an explicit package list, which `packages.find` cannot extend), so that a wheel carries the
migrations and queries and sendflowr.sql_files finds them through importlib.resources, installed or editable."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["sendflowr*", "sendflowr_assets*", "sendflowr_api*", "sendflowr_webhooks*"]),
              "sendflowr._sql"],
    package_dir={"sendflowr._sql": "sql"},
)
