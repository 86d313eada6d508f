"""Connectors: ESP event formats (SendGrid, Mailgun, Amazon SES via SNS, Klaviyo, our own contract) mapped
to the event contract, signature verification, confirmed produce to Kafka and bulk import (docs/CONNECTORS.md).

No web framework here: sendflowr_webhooks is the HTTP adapter and `sendflowr import` the file adapter.
"""

from __future__ import annotations

from collections.abc import Callable

from sendflowr.connectors import klaviyo, mailgun, native, sendgrid, ses
from sendflowr.connectors.common import ConnectorError, Normalized

FORMATS: dict[str, Callable[..., Normalized]] = {
    "sendgrid": sendgrid.normalize,
    "mailgun": mailgun.normalize,
    "ses": ses.normalize,
    "klaviyo": klaviyo.normalize,
    "native": native.normalize,
}

__all__ = ["FORMATS", "ConnectorError", "Normalized"]
