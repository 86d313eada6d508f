"""POST /webhooks/{sendgrid,mailgun,ses,klaviyo,events}: verify, normalize, produce with confirmed
delivery, then answer. All decisions live in sendflowr.connectors; this module maps them to HTTP.

Status codes: 200 events confirmed by Kafka (body counts accepted/skipped/rejected records; a bad record
never costs the good ones in its batch), 400 unreadable body, 401 signature missing, 403 signature bad,
stale or replayed (or a web page's request, or an unauthenticated route on a public address), 404 a route
not in SENDFLOWR_WEBHOOKS_ROUTES, 413 body or record count too large, 422 no record in the body could be
used, 503 Kafka did not confirm every event (the provider retries; dedup by event_id makes that harmless).

Closed by default (docs/SECURITY.md): the receiver refuses to start on a non-loopback address while a served
route has no key, SNS accepts only the topics of SENDFLOWR_SNS_TOPIC_ARNS, and parsing and mapping run in a
worker thread on bodies bounded before they are read, so no request can stall the others.
"""

import gc
import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from sendflowr import __version__
from sendflowr.asgi_guard import RequestGuard, over_the_network
from sendflowr.clickhouse import is_loopback
from sendflowr.connectors import FORMATS, Normalized, native
from sendflowr.connectors.common import ConnectorError, serialize
from sendflowr.connectors.produce import ConfirmingProducer
from sendflowr.connectors.signatures import KlaviyoVerifier, MailgunVerifier, SendgridVerifier, SignatureRejected
from sendflowr.connectors.sns import SnsVerifier, parse_envelope
from sendflowr.errors import SendflowrError
from sendflowr.kafka_io import KafkaUnavailable, ensure_topic
from sendflowr.settings import Settings, get_settings, reveal

log = logging.getLogger("sendflowr.webhooks")
GC_GEN0_THRESHOLD = 50_000
ROUTES = ("sendgrid", "mailgun", "ses", "klaviyo", "events")
LISTED_REJECTS = 100  # an answer lists this many rejects (and counts all), however many the body held
LISTED_REASONS = 20
# Event-id namespaces of the connectors: /webhooks/events may not claim them (it would pre-empt their events).
PROVIDER_NAMESPACES = tuple(name for name in FORMATS if name != "native")


class Rejected(Exception):
    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


class Receiver:
    """Per-process state: settings, verifiers built from them, and the one producer."""

    def __init__(self, settings: Settings, sns_fetch: Callable[[str], bytes] | None = None,
                 sns_confirm: Callable[[str], Any] | None = None,
                 sns_roots: tuple[x509.Certificate, ...] | None = None):
        self.settings = settings
        self.routes = frozenset(r.strip() for r in settings.webhooks_routes.split(",") if r.strip())
        unknown = self.routes - set(ROUTES)
        if unknown:
            raise SendflowrError(f"SENDFLOWR_WEBHOOKS_ROUTES names unknown routes {sorted(unknown)}; "
                                 f"choose from {', '.join(ROUTES)}")
        age = settings.webhooks_signature_max_age_seconds
        key = settings.sendgrid_verification_key
        self.sendgrid = SendgridVerifier(key, age) if key else None
        mailgun_key = reveal(settings.mailgun_signing_key)
        self.mailgun = (MailgunVerifier(mailgun_key, age, settings.home / "webhooks" / "mailgun-tokens.sqlite3")
                        if mailgun_key else None)
        secret = reveal(settings.klaviyo_webhook_secret)
        self.klaviyo = KlaviyoVerifier(secret, age) if secret else None
        self.events_token = reveal(settings.webhooks_events_token)
        hooks = {k: v for k, v in (("fetch", sns_fetch), ("confirm", sns_confirm), ("roots", sns_roots))
                 if v is not None}
        arns = tuple(a.strip() for a in settings.sns_topic_arns.split(",") if a.strip())
        self.sns_topics = SnsVerifier(arns, **hooks)  # the allow-list holds even with signatures off
        self.sns = self.sns_topics if settings.sns_verify_signatures else None
        self.producer = ConfirmingProducer(settings, timeout_seconds=settings.webhooks_produce_timeout_seconds)
        self.open_routes = frozenset(self.unauthenticated())

    def unauthenticated(self) -> list[str]:
        """Served routes on which anyone who can reach the receiver could post."""
        open_routes = {"sendgrid": self.sendgrid is None, "mailgun": self.mailgun is None,
                       "klaviyo": self.klaviyo is None, "events": not self.events_token,
                       "ses": self.sns is None or not self.sns.topic_arns}
        return [route for route in ROUTES if route in self.routes and open_routes[route]]

    def close(self) -> None:
        self.producer.close()
        if self.mailgun is not None:
            self.mailgun.close()


def check_exposure(settings: Settings, receiver: Receiver) -> None:
    """Refuse a non-loopback address while a served route has no key, unless the documented opt-out is set."""
    open_routes = receiver.unauthenticated()
    if not open_routes or is_loopback(settings.webhooks_host) or settings.webhooks_allow_unauthenticated:
        return
    raise SendflowrError(
        f"SENDFLOWR_WEBHOOKS_HOST is {settings.webhooks_host}, which is not loopback, and these routes would "
        f"accept unauthenticated posts: {', '.join(open_routes)}. Configure their keys (docs/CONNECTORS.md), "
        "leave them out of SENDFLOWR_WEBHOOKS_ROUTES, or (only behind something else that authenticates) set "
        "SENDFLOWR_WEBHOOKS_ALLOW_UNAUTHENTICATED=true.")


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


def bounded(records: list, settings: Settings) -> list:
    if len(records) > settings.webhooks_max_records:
        raise Rejected(413, f"{len(records)} records in one request; at most {settings.webhooks_max_records} "
                       "(SENDFLOWR_WEBHOOKS_MAX_RECORDS)")
    return records


def _reject_summary(result: Normalized) -> dict[str, Any]:
    """The rejects of a batch, bounded: the first LISTED_REJECTS with reasons, the total, the commonest reasons."""
    listed = [{"index": i, "reason": r} for i, r in result.rejects[:LISTED_REJECTS]]
    summary: dict[str, Any] = {"rejected": listed}
    if len(result.rejects) > LISTED_REJECTS:
        summary["rejected_total"] = len(result.rejects)
        summary["rejected_reasons"] = dict(result.rejects_by_reason().most_common(LISTED_REASONS))
    return summary


async def deliver(receiver: Receiver, provider: str, result: Normalized) -> Response:
    rejects = _reject_summary(result)
    if result.rejects:
        log.warning("%s: %d record(s) rejected: %s", provider, len(result.rejects),
                    dict(result.rejects_by_reason().most_common(LISTED_REASONS)))
    if result.trimmed:
        log.info("%s: optional fields fitted to the contract: %s", provider, dict(result.trimmed))
    if not result.events and result.rejects:
        raise Rejected(422, "no record in the body could be used", **rejects)
    try:
        await receiver.producer.produce_async(serialize(result.events))
    except KafkaUnavailable as exc:
        log.error("%s: %s", provider, exc)
        raise Rejected(503, f"events not confirmed by Kafka, retry later: {exc}") from None
    answer = {"accepted": len(result.events), "skipped": dict(result.skipped), **rejects}
    if result.trimmed:
        answer["trimmed"] = dict(result.trimmed)
    return Response(orjson.dumps(answer), media_type="application/json")


def create_app(settings: Settings | None = None, sns_fetch: Callable[[str], bytes] | None = None,
               sns_confirm: Callable[[str], Any] | None = None,
               sns_roots: tuple[x509.Certificate, ...] | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        receiver = Receiver(settings, sns_fetch, sns_confirm, sns_roots)
        try:
            check_exposure(settings, receiver)
        except SendflowrError:
            receiver.close()
            raise
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
        unsigned = receiver.unauthenticated()
        if unsigned:
            log.warning("webhook posts NOT authenticated for: %s (loopback only; configure keys, "
                        "docs/CONNECTORS.md)", unsigned)
        yield
        receiver.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()

    app = FastAPI(title="SendFlowr webhook receiver", version=__version__, lifespan=lifespan,
                  description="ESP event webhooks into SendFlowr's Kafka topic, signatures verified.")
    # No ESP is a browser: any request a web page makes (Origin / Sec-Fetch-*) is refused, and a declared body
    # over the limit is refused before a byte of it is read.
    app.add_middleware(RequestGuard, browsers="refuse", loopback=is_loopback(settings.webhooks_host),
                       max_body_bytes=settings.webhooks_max_body_bytes)

    @app.exception_handler(Rejected)
    async def rejected_handler(_request: Request, exc: Rejected) -> Response:
        return Response(orjson.dumps({"detail": exc.detail, **exc.extra}), status_code=exc.status,
                        media_type="application/json")

    @app.exception_handler(SignatureRejected)
    async def signature_handler(_request: Request, exc: SignatureRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=401 if exc.missing else 403)

    def receiver_for(request: Request, route: str) -> Receiver:
        receiver: Receiver = request.app.state.receiver
        if route not in receiver.routes:
            raise Rejected(404, f"/webhooks/{route} is not served (SENDFLOWR_WEBHOOKS_ROUTES)")
        if (route in receiver.open_routes and not receiver.settings.webhooks_allow_unauthenticated
                and request.scope.get("server") and over_the_network(request.scope["server"][0])):
            raise Rejected(403, f"/webhooks/{route} has no key configured and is served on loopback only")
        return receiver

    @app.get("/healthz", summary="Liveness: the process is up.")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.post("/webhooks/sendgrid", summary="SendGrid Event Webhook (JSON array of events).")
    async def sendgrid(request: Request) -> Response:
        receiver = receiver_for(request, "sendgrid")
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)
        signature = request.headers.get(SendgridVerifier.SIGNATURE_HEADER)
        stamp = request.headers.get(SendgridVerifier.TIMESTAMP_HEADER)

        def work() -> Normalized:
            if receiver.sendgrid is not None:
                receiver.sendgrid.verify(body, signature, stamp)
            records = parse_json(body)
            if not isinstance(records, list):
                raise Rejected(400, "body: SendGrid posts a JSON array of events")
            return FORMATS["sendgrid"](bounded(records, receiver.settings))

        return await deliver(receiver, "sendgrid", await run_in_threadpool(work))

    @app.post("/webhooks/mailgun", summary="Mailgun webhook (JSON with signature and event-data).")
    async def mailgun(request: Request) -> Response:
        receiver = receiver_for(request, "mailgun")
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)

        def work() -> Normalized:
            payload = parse_json(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("event-data"), dict):
                raise Rejected(400, "body: Mailgun posts a JSON object with `signature` and `event-data`")
            if receiver.mailgun is not None:
                receiver.mailgun.verify(payload.get("signature"))
            return FORMATS["mailgun"]([payload])

        return await deliver(receiver, "mailgun", await run_in_threadpool(work))

    @app.post("/webhooks/ses", summary="Amazon SES event publishing through an SNS HTTPS subscription.")
    async def ses(request: Request) -> Response:
        receiver = receiver_for(request, "ses")
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)
        try:
            envelope = await run_in_threadpool(parse_envelope, body)
        except ConnectorError as exc:
            raise Rejected(400, str(exc)) from None
        receiver.sns_topics.allowed(envelope["TopicArn"])  # before anything is fetched or confirmed
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
        return await deliver(receiver, "ses", await run_in_threadpool(FORMATS["ses"], [envelope]))

    @app.post("/webhooks/klaviyo", summary="Klaviyo system webhook (data array of events).")
    async def klaviyo(request: Request) -> Response:
        receiver = receiver_for(request, "klaviyo")
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)
        headers = request.headers
        webhook_id = headers.get("Klaviyo-Webhook-Id")

        def work() -> Normalized:
            if receiver.klaviyo is not None:
                receiver.klaviyo.verify(body, headers.get(KlaviyoVerifier.SIGNATURE_HEADER),
                                        headers.get(KlaviyoVerifier.TIMESTAMP_HEADER))
            payload = parse_json(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
                raise Rejected(400, "body: Klaviyo posts a JSON object with a `data` array")
            meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
            meta_id = meta.get("klaviyo_webhook_id")
            # The id ties the signed body to the webhook that sent it: with verification on, both must be there.
            if receiver.klaviyo is not None and not (webhook_id and meta_id):
                raise SignatureRejected("Klaviyo-Webhook-Id header and meta.klaviyo_webhook_id are both required",
                                        missing=True)
            if (webhook_id or meta_id) and webhook_id != meta_id:
                raise Rejected(403, "meta.klaviyo_webhook_id does not match the Klaviyo-Webhook-Id header")
            return FORMATS["klaviyo"](bounded(payload["data"], receiver.settings))

        return await deliver(receiver, "klaviyo", await run_in_threadpool(work))

    @app.post("/webhooks/events", summary="Events in SendFlowr's own contract (one object or an array).")
    async def events(request: Request) -> Response:
        receiver = receiver_for(request, "events")
        token = receiver.events_token
        if token:
            given = request.headers.get("authorization", "")
            if not given:
                raise Rejected(401, "missing Authorization: Bearer <SENDFLOWR_WEBHOOKS_EVENTS_TOKEN>")
            if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), f"Bearer {token}".encode()):
                raise Rejected(403, "wrong bearer token")
        body = await read_body(request, receiver.settings.webhooks_max_body_bytes)

        def work() -> Normalized:
            payload = parse_json(body)
            records = bounded(payload if isinstance(payload, list) else [payload], receiver.settings)
            return native.normalize(records, reserved=PROVIDER_NAMESPACES)

        return await deliver(receiver, "events", await run_in_threadpool(work))

    return app





app = create_app()
