"""POST /webhooks/{sendgrid,mailgun,ses,klaviyo,events}: verify, normalize, produce with confirmed
delivery, then answer. All decisions live in sendflowr.connectors; this module maps them to HTTP.

Status codes: 200 events confirmed by Kafka (body counts accepted/skipped/rejected records; a bad record
never costs the good ones in its batch), 400 unreadable body, 401 signature missing, 403 signature bad,
stale or replayed, 413 body too large, 422 no record in the body could be used, 503 Kafka did not
confirm every event (the provider retries; dedup by event_id makes that harmless).
"""

import gc
import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from sendflowr import __version__
from sendflowr.connectors import FORMATS, Normalized
from sendflowr.connectors.common import ConnectorError, serialize
from sendflowr.connectors.produce import ConfirmingProducer
from sendflowr.connectors.signatures import KlaviyoVerifier, MailgunVerifier, SendgridVerifier, SignatureRejected
from sendflowr.connectors.sns import SnsVerifier, parse_envelope
from sendflowr.kafka_io import KafkaUnavailable, ensure_topic
from sendflowr.settings import Settings, get_settings

log = logging.getLogger("sendflowr.webhooks")
GC_GEN0_THRESHOLD = 50_000


class Rejected(Exception):
    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


class Receiver:
    """Per-process state: settings, verifiers built from them, and the one producer."""

    def __init__(self, settings: Settings, sns_fetch: Callable[[str], bytes] | None = None,
                 sns_confirm: Callable[[str], Any] | None = None):
        self.settings = settings
        age = settings.webhooks_signature_max_age_seconds
        key = settings.sendgrid_verification_key
        self.sendgrid = SendgridVerifier(key, age) if key else None
        self.mailgun = MailgunVerifier(settings.mailgun_signing_key, age) if settings.mailgun_signing_key else None
        secret = settings.klaviyo_webhook_secret
        self.klaviyo = KlaviyoVerifier(secret, age) if secret else None
        hooks = {k: v for k, v in (("fetch", sns_fetch), ("confirm", sns_confirm)) if v is not None}
        arns = tuple(a.strip() for a in settings.sns_topic_arns.split(",") if a.strip())
        self.sns = SnsVerifier(arns, **hooks) if settings.sns_verify_signatures else None
        self.producer = ConfirmingProducer(settings, timeout_seconds=settings.webhooks_produce_timeout_seconds)

    def close(self) -> None:
        self.producer.close()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing anything over `limit` bytes before reading it all (413)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body: invalid JSON ({exc})") from None


async def deliver(receiver: Receiver, provider: str, result: Normalized) -> JSONResponse:
    rejected = [{"index": i, "reason": r} for i, r in result.rejects]
    if rejected:
        log.warning("%s: %d record(s) rejected: %s", provider, len(rejected), dict(result.rejects_by_reason()))
    if not result.events and rejected:
        raise Rejected(422, "no record in the body could be used", rejected=rejected)
    try:
        await receiver.producer.produce_async(serialize(result.events))
    except KafkaUnavailable as exc:
        log.error("%s: %s", provider, exc)
        raise Rejected(503, f"events not confirmed by Kafka, retry later: {exc}") from None
    return JSONResponse({"accepted": len(result.events), "skipped": dict(result.skipped), "rejected": rejected})


def create_app(settings: Settings | None = None, sns_fetch: Callable[[str], bytes] | None = None,
               sns_confirm: Callable[[str], Any] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        receiver = Receiver(settings or get_settings(), sns_fetch, sns_confirm)
        app.state.receiver = receiver
        # A batch allocates thousands of short-lived, acyclic containers (parsed records, events) that reference
        # counting frees; at the default gen-0 threshold (700) the cycle collector ran several times per request,
        # walking the live batch each time, and now and then the whole framework heap (~15% of the receiver's
        # CPU under bench/connectors.py). Frozen start-up objects are never walked again.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
        try:  # best effort: a broker that is down now may be up by the first webhook
            await run_in_threadpool(ensure_topic, receiver.settings, None, None, 10.0)
        except KafkaUnavailable as exc:
            log.warning("could not check the events topic at start-up: %s", exc)
        unsigned = [name for name, v in (("sendgrid", receiver.sendgrid), ("mailgun", receiver.mailgun),
                                          ("klaviyo", receiver.klaviyo), ("ses", receiver.sns)) if v is None]
        if unsigned:
            log.warning("webhook signatures NOT verified for: %s (configure keys, docs/CONNECTORS.md)", unsigned)
        yield
        receiver.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()

    app = FastAPI(title="SendFlowr webhook receiver", version=__version__, lifespan=lifespan,
                  description="ESP event webhooks into SendFlowr's Kafka topic, signatures verified.")

    @app.exception_handler(Rejected)
    async def rejected_handler(_request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)

    @app.exception_handler(SignatureRejected)
    async def signature_handler(_request: Request, exc: SignatureRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=401 if exc.missing else 403)

    def receiver_of(request: Request) -> Receiver:
        return request.app.state.receiver

    @app.get("/healthz", summary="Liveness: the process is up.")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.post("/webhooks/sendgrid", summary="SendGrid Event Webhook (JSON array of events).")
    async def sendgrid(request: Request) -> JSONResponse:
        receiver = receiver_of(request)
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)
        if receiver.sendgrid is not None:
            receiver.sendgrid.verify(body, request.headers.get(SendgridVerifier.SIGNATURE_HEADER),
                                     request.headers.get(SendgridVerifier.TIMESTAMP_HEADER))
        records = parse_json(body)
        if not isinstance(records, list):
            raise Rejected(400, "body: SendGrid posts a JSON array of events")
        return await deliver(receiver, "sendgrid", FORMATS["sendgrid"](records))

    @app.post("/webhooks/mailgun", summary="Mailgun webhook (JSON with signature and event-data).")
    async def mailgun(request: Request) -> JSONResponse:
        receiver = receiver_of(request)
        payload = parse_json(await read_body(request, receiver.settings.webhooks_max_body_bytes))
        if not isinstance(payload, dict) or not isinstance(payload.get("event-data"), dict):
            raise Rejected(400, "body: Mailgun posts a JSON object with `signature` and `event-data`")
        if receiver.mailgun is not None:
            receiver.mailgun.verify(payload.get("signature"))
        return await deliver(receiver, "mailgun", FORMATS["mailgun"]([payload]))

    @app.post("/webhooks/ses", summary="Amazon SES event publishing through an SNS HTTPS subscription.")
    async def ses(request: Request) -> Response:
        receiver = receiver_of(request)
        try:
            envelope = parse_envelope(await read_body(request, receiver.settings.webhooks_max_body_bytes))
        except ConnectorError as exc:
            raise Rejected(400, str(exc)) from None
        if receiver.sns is not None:
            try:  # in a worker thread: the first message of a certificate fetches it over https
                await run_in_threadpool(receiver.sns.verify, envelope)
                if envelope["Type"] == "SubscriptionConfirmation":
                    await run_in_threadpool(receiver.sns.confirm_subscription, envelope)
            except OSError as exc:  # SNS resends the confirmation: answer so it does
                raise Rejected(503, f"could not visit SubscribeURL: {exc}") from None
        if envelope["Type"] != "Notification":
            log.info("SNS %s for %s", envelope["Type"], envelope["TopicArn"])
            confirmed = receiver.sns is not None and envelope["Type"] == "SubscriptionConfirmation"
            return JSONResponse({"accepted": 0, "sns": envelope["Type"], "confirmed": confirmed})
        return await deliver(receiver, "ses", FORMATS["ses"]([envelope]))

    @app.post("/webhooks/klaviyo", summary="Klaviyo system webhook (data array of events).")
    async def klaviyo(request: Request) -> JSONResponse:
        receiver = receiver_of(request)
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)
        if receiver.klaviyo is not None:
            receiver.klaviyo.verify(body, request.headers.get(KlaviyoVerifier.SIGNATURE_HEADER),
                                    request.headers.get(KlaviyoVerifier.TIMESTAMP_HEADER))
        payload = parse_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise Rejected(400, "body: Klaviyo posts a JSON object with a `data` array")
        webhook_id = request.headers.get("Klaviyo-Webhook-Id")
        meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
        meta_id = meta.get("klaviyo_webhook_id")
        if webhook_id and meta_id and webhook_id != meta_id:
            raise Rejected(403, "meta.klaviyo_webhook_id does not match the Klaviyo-Webhook-Id header")
        return await deliver(receiver, "klaviyo", FORMATS["klaviyo"](payload["data"]))

    @app.post("/webhooks/events", summary="Events in SendFlowr's own contract (one object or an array).")
    async def events(request: Request) -> JSONResponse:
        receiver = receiver_of(request)
        token = receiver.settings.webhooks_events_token
        if token:
            given = request.headers.get("authorization", "")
            if not given:
                raise Rejected(401, "missing Authorization: Bearer <SENDFLOWR_WEBHOOKS_EVENTS_TOKEN>")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Rejected(403, "wrong bearer token")
        payload = parse_json(await read_body(request, receiver.settings.webhooks_max_body_bytes))
        records = payload if isinstance(payload, list) else [payload]
        return await deliver(receiver, "events", FORMATS["native"](records))

    return app


app = create_app()
