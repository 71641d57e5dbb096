"""ACME certificates: ordered through DNS-01 answered by sipzone's own DNS, renewed by `serve`.

Theory of operation.  :class:`Issuer` runs one order (RFC 8555) with certbot's ``acme`` library:
it registers an account at the CA the first time (an EC P-256 key, kept in the store and never
printed; External Account Binding when the CA asks for it), makes a fresh key of the asked type
and a CSR for the domains, and for each authorisation still pending takes the ``dns-01``
challenge: its TXT value at ``_acme-challenge.D`` is written to the store, so every node's DNS
answers it (a base name and its wildcard put two values at one name, answered together) and
secondaries get NOTIFY like for any change.  The CA is told to look only once every DNS server
given (``--dns``, one per node; ``serve`` gives its own listener and the secondaries it sends
NOTIFY to, :func:`challenge_servers`) answers every value: a server that does not see the
record yet (a secondary still transferring) delays the answer instead of failing the order.
Then the order is finalised, the certificate stored through ``Store.add_certificate`` (the
same validation as ``cert add``, and every node's TLS picks it up live), and the challenge
records withdrawn, also when anything failed.  A failure raises :class:`AcmeFailed` and stores no
certificate: the one in service stays.

Renewal (:func:`renew_due`) runs in ``serve`` every ``check`` seconds: a certificate is due
when the CA's renewal information (ARI, RFC 9773) says, if its directory offers
``renewalInfo`` (asked again only after the CA's Retry-After), else at two thirds of its
lifetime; one node at a time renews (a lease row in the store), and a failure is retried after a
doubling, capped back-off kept in the store, with a log line and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge
from sqlalchemy.exc import SQLAlchemyError

from sipzone.eventlog import EventLog
from sipzone.model.acme import (
    AcmeAccount,
    AcmePlan,
    AcmeState,
    backoff,
    challenge_name,
    check_answerable,
    renewal_due,
)
from sipzone.model.certificates import Certificate
from sipzone.model.errors import AcmeFailed, ChallengeNotSeen, ProofFailed

if TYPE_CHECKING:
    from acme import challenges, client, messages
    from josepy.jwk import JWK

    from sipzone.store.repository import Store

log = logging.getLogger("sipzone.acme")
events = EventLog(log)  # a lost store: one line a minute, not one a check

HTTP_TIMEOUT = 30  # seconds per request to the CA
ORDER_TIMEOUT = 120.0  # seconds for the CA to validate and issue
SEEN_TIMEOUT = 60.0  # seconds for every DNS server to answer the published values
SEEN_POLL = 0.2
LEASE = 600.0  # seconds a renewing node holds the lease (released when done)
ARI_RETRY = timedelta(hours=6)  # renewal information asked again after this without Retry-After

LAST_RENEWAL = Gauge(
    "sipzone_acme_last_renewal_timestamp_seconds",
    "When an ACME certificate was last issued or renewed (Unix time).",
    ["certificate"],
    multiprocess_mode="livemax",
)
DAYS_LEFT = Gauge(
    "sipzone_acme_days_left",
    "Days until an ACME certificate expires.",
    ["certificate"],
    multiprocess_mode="livemin",
)
FAILURES = Gauge(
    "sipzone_acme_renewal_failures",
    "Failed renewals in a row of an ACME certificate (0 after a success).",
    ["certificate"],
    multiprocess_mode="livemax",
)
ATTEMPTS = Counter(
    "sipzone_acme_renewal_attempts",
    "Renewals this process tried, by result.",
    ["certificate", "result"],
)


def new_key(key_type: str) -> str:
    """A fresh private key (PEM): ``ec256`` (P-256) or ``rsa2048``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _failure(exc: Exception) -> str:
    """What went wrong at the CA, in its own words where it gave some."""
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        reasons = [
            f"{authz.body.identifier.value}: {challb.error.detail or challb.error.typ}"
            for authz in exc.failed_authzrs
            for challb in authz.body.challenges
            if challb.error is not None
        ]
        return "validation failed (" + "; ".join(reasons or ["no reason given"]) + ")"
    if isinstance(exc, messages.Error):
        return f"{exc.detail or exc.typ}"
    return str(exc) or type(exc).__name__


def _connect(directory_url: str, key_pem: str) -> tuple[client.ClientV2, JWK]:
    """A client of the CA at ``directory_url`` signing with the EC key ``key_pem``."""
    from acme import client
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from josepy.jwa import ES256
    from josepy.jwk import JWKEC

    private = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    jwk = JWKEC(key=private)
    net = client.ClientNetwork(jwk, alg=ES256, user_agent="sipzone", timeout=HTTP_TIMEOUT)
    return client.ClientV2(client.ClientV2.get_directory(directory_url, net), net), jwk


def _utc(when: datetime) -> datetime:
    """``when`` in UTC; the acme library gives some times naive, in local time."""
    return when.astimezone(UTC)


class Issuer:
    """Orders certificates for ``store`` and waits for ``dns_servers`` (HOST:PORT each) to
    answer the challenges before the CA is told to look."""

    def __init__(
        self, store: Store, dns_servers: Sequence[str], seen_timeout: float = SEEN_TIMEOUT
    ) -> None:
        self.store = store
        self.dns_servers = tuple(dns_servers)
        self.seen_timeout = seen_timeout
        # (certificate name, serial) -> (when the CA says to renew or None, when to ask again)
        self._ari: dict[tuple[str, int], tuple[datetime | None, datetime]] = {}

    def issue(
        self, name: str, plan: AcmePlan, eab: tuple[str, str] | None = None
    ) -> tuple[Certificate, int]:
        """Order ``plan`` and store the certificate as ``name``; the certificate and revision.
        Raises :class:`AcmeFailed` (nothing stored) when the CA or the DNS does not play."""
        import requests
        from acme import crypto_util, errors, messages

        zones = self.store.list_zones()
        for domain in plan.domains:  # before asking the CA for anything
            check_answerable(challenge_name(domain), zones)
        try:
            acme, account = self._client(plan, eab)
            key_pem = new_key(plan.key_type)
            csr = crypto_util.make_csr(key_pem.encode("ascii"), list(plan.domains))
            order = acme.new_order(csr)
            records, answers = self._challenges(order, account)
            published = self.store.publish_challenges(name, records) if records else 0
            try:
                self._wait_seen(records, published)
                for challb, response in answers:
                    acme.answer_challenge(challb, response)
                deadline = datetime.now() + timedelta(seconds=ORDER_TIMEOUT)
                order = acme.poll_and_finalize(order, deadline)
            finally:
                self.store.clear_challenges(name)
        except (errors.Error, messages.Error, requests.RequestException, ValueError) as exc:
            raise AcmeFailed(
                f"ACME order for {', '.join(plan.domains)} at {plan.directory} failed: "
                f"{_failure(exc)}; no certificate was stored"
            ) from None
        cert, rev, _ = self.store.add_certificate(name, order.fullchain_pem, key_pem, acme=plan)
        return cert, rev

    def _client(self, plan: AcmePlan, eab: tuple[str, str] | None) -> tuple[client.ClientV2, JWK]:
        """A client at ``plan``'s CA with its account (registered now if there is none)."""
        from acme import messages

        account = self.store.acme_account(plan.directory, plan.email)
        key_pem = account.key_pem if account else new_key("ec256")
        acme, jwk = _connect(plan.directory, key_pem)
        net, directory = acme.net, acme.directory
        if account is not None:
            net.account = messages.RegistrationResource(
                body=messages.Registration(), uri=account.url
            )
            try:
                acme.query_registration(net.account)
                return acme, jwk
            except messages.Error as exc:
                if exc.code != "accountDoesNotExist":
                    raise
            # The CA forgot the account (a reset test CA): register the same key anew.
            log.warning(
                "acme: account of %s unknown at %s; registering anew", plan.email, plan.directory
            )
            net.account = None
        binding = None
        if eab is not None:
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(),
                kid=eab[0],
                hmac_key=eab[1],
                directory=directory,
            )
        elif acme.external_account_required():
            raise AcmeFailed(
                f"the CA at {plan.directory} requires an external account binding: give "
                "--eab-kid and --eab-hmac"
            )
        regr = acme.new_account(
            messages.NewRegistration.from_data(
                email=plan.email, terms_of_service_agreed=True, external_account_binding=binding
            )
        )
        self.store.save_acme_account(AcmeAccount(plan.directory, plan.email, key_pem, regr.uri))
        return acme, jwk

    def suggested_renewal(
        self, plan: AcmePlan, cert: Certificate, now: datetime
    ) -> datetime | None:
        """When the CA's renewal information (RFC 9773) says to renew ``cert``; None when its
        directory offers none, or it could not be had (then two thirds of the lifetime stand).
        The answer is kept until the CA's Retry-After, so a check a minute asks it rarely."""
        key = (cert.name, cert.serial)
        known = self._ari.get(key)
        if known is None or now >= known[1]:
            known = self._ask_ari(plan, cert, now)
            self._ari = {k: v for k, v in self._ari.items() if k[0] != cert.name}  # replaced
            self._ari[key] = known
        return known[0]

    @staticmethod
    def _ask_ari(
        plan: AcmePlan, cert: Certificate, now: datetime
    ) -> tuple[datetime | None, datetime]:
        import requests
        from acme import errors, messages

        try:
            # Renewal information is public (a plain GET): any key opens the client.
            acme, _ = _connect(plan.directory, new_key("ec256"))
            when, again = acme.renewal_time(cert.chain_pem.encode("ascii"))
        except (errors.Error, messages.Error, requests.RequestException, ValueError) as exc:
            events.warning(
                f"ari {cert.name}",
                "acme: no renewal information for certificate %s from %s (%s); it renews at "
                "two thirds of its lifetime",
                cert.name,
                plan.directory,
                _failure(exc),
            )
            retry = getattr(exc, "retry_after", None)
            return None, _utc(retry) if isinstance(retry, datetime) else now + ARI_RETRY
        return (None if when is None else _utc(when)), _utc(again)

    @staticmethod
    def _challenges(
        order: messages.OrderResource, account_key: JWK
    ) -> tuple[
        list[tuple[str, str]], list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]]
    ]:
        """The TXT records to publish and the answers to give, for each pending authorisation
        (one the CA already holds valid needs nothing)."""
        from acme import challenges, messages

        records: list[tuple[str, str]] = []
        answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            domain = authz.body.identifier.value
            challb = next(
                (c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01)), None
            )
            if challb is None:
                raise AcmeFailed(f"the CA offers no dns-01 challenge for {domain}")
            response, validation = challb.response_and_validation(account_key)
            records.append((challb.chall.validation_domain_name(domain), str(validation)))
            answers.append((challb, response))
        return records, answers

    def _wait_seen(self, records: Sequence[tuple[str, str]], published: int) -> None:
        """Return once every DNS server answers every record's value and every live node (its
        heartbeat in the store is fresh) has applied ``published``, the revision that wrote
        them, so its DNS answers them too; raise :class:`ChallengeNotSeen` after
        ``seen_timeout`` seconds."""
        deadline = time.monotonic() + self.seen_timeout
        waiting = [(server, name, value) for server in self.dns_servers for name, value in records]
        while True:
            # One whole pass after the deadline: a lookup may itself take seconds.
            expired = time.monotonic() > deadline
            waiting = [(s, n, v) for s, n, v in waiting if not _answers(s, n, v)]
            behind = self._nodes_behind(published) if records else []
            if not waiting and not behind:
                return
            if expired and not waiting:
                raise ChallengeNotSeen(
                    f"node {', '.join(behind)} had not applied revision {published}, which "
                    f"published the challenge, within {self.seen_timeout:g} s; its DNS would "
                    "not answer the CA (a live node whose feed is stuck: see `sipzone status`)"
                )
            if expired:
                servers = ", ".join(dict.fromkeys(server for server, _, _ in waiting))
                raise ChallengeNotSeen(
                    f"the DNS at {servers} did not answer the challenge at {waiting[0][1]} "
                    f"within {self.seen_timeout:g} s; is `sipzone serve --dns` running there on "
                    "this store, or, for a secondary, does it take our NOTIFY and transfers?"
                )
            time.sleep(SEEN_POLL)

    def _nodes_behind(self, revision: int) -> list[str]:
        """The live nodes whose last heartbeat reports a revision below ``revision`` (a node
        beats every few seconds; one gone quiet is not waited for)."""
        now = datetime.now(UTC)
        return [n.name for n in self.store.list_nodes() if n.alive(now) and n.revision < revision]


def challenge_servers(own: tuple[str, int], secondaries: Sequence[str]) -> list[str]:
    """The DNS servers a renewal in ``serve`` waits for: this node's listener ``own`` (a
    wildcard address asked on loopback) and each secondary it sends NOTIFY to (HOST:PORT),
    which publish the zone too and may lag behind by a transfer."""
    host, port = own
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    mine = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return list(dict.fromkeys((mine, *secondaries)))


def _answers(server: str, name: str, value: str) -> bool:
    """Whether the DNS at ``server`` answers ``value`` among the TXT values at ``name``."""
    from sipzone.api.proof import txt_strings

    try:
        return value in txt_strings(name, server)
    except ProofFailed:  # not reachable (yet): not answering
        return False


# ------------------------------------------------------------------------ renewal in serve


Suggested = Callable[[AcmePlan, Certificate, datetime], datetime | None]


def is_due(
    state: AcmeState, cert: Certificate | None, now: datetime, suggested: Suggested | None = None
) -> bool:
    """Whether ``state``'s certificate (``cert``: as stored, None if gone) is renewed now: at
    the time ``suggested`` gives (the CA's renewal information), else at two thirds of its
    lifetime; never while a failure's back-off lasts."""
    if state.next_attempt is not None and now < state.next_attempt:
        return False
    if cert is None:
        return True
    when = suggested(state.plan, cert, now) if suggested else None
    return now >= (when or renewal_due(cert.not_before, cert.not_after))


def renew_due(
    store: Store, issuer: Issuer, holder: str, retry: timedelta, now: datetime | None = None
) -> list[str]:
    """Renew the ACME certificates due now, if this node (``holder``) gets the lease; the names
    renewed.  A failure is logged and retried after :func:`backoff` from ``retry``."""
    now = now or datetime.now(UTC)
    states = store.acme_certificates()
    certs = {c.name: c for c in store.list_certificates()}
    for state in states:
        _measure(state, certs.get(state.name), now)
    due = [s for s in states if is_due(s, certs.get(s.name), now, issuer.suggested_renewal)]
    if not due or not store.take_lease(holder, LEASE):
        return []
    renewed = []
    try:
        for state in due:
            try:
                cert, rev = issuer.issue(state.name, state.plan)
            except SQLAlchemyError:
                raise  # the store is away: the loop says so, the lease times out
            except Exception as exc:  # refused, or a bug: back off either way, never spin
                failures = state.failures + 1
                wait = backoff(failures, retry)
                store.record_renewal(state.name, str(exc), now + wait)
                ATTEMPTS.labels(state.name, "failed").inc()
                FAILURES.labels(state.name).set(failures)
                log.warning(
                    "acme: renewing certificate %s failed (%d in a row); the one in service "
                    "stays, next try in %d s: %s",
                    state.name,
                    failures,
                    wait.total_seconds(),
                    exc,
                )
                continue
            store.record_renewal(state.name)
            ATTEMPTS.labels(state.name, "renewed").inc()
            FAILURES.labels(state.name).set(0)
            LAST_RENEWAL.labels(state.name).set(time.time())
            DAYS_LEFT.labels(state.name).set(round(cert.days_left(), 2))
            log.info(
                "acme: certificate %s renewed (revision %d): %s, valid until %s",
                state.name,
                rev,
                ", ".join(cert.names),
                cert.not_after.isoformat(),
            )
            renewed.append(state.name)
    finally:
        store.release_lease(holder)
    return renewed


def _measure(state: AcmeState, cert: Certificate | None, now: datetime) -> None:
    FAILURES.labels(state.name).set(state.failures)
    if state.last_renewal is not None:
        LAST_RENEWAL.labels(state.name).set(state.last_renewal.timestamp())
    if cert is not None:
        DAYS_LEFT.labels(state.name).set(round(cert.days_left(now), 2))


async def renew_forever(
    store: Store, issuer: Issuer, holder: str, check: float, retry: timedelta
) -> None:
    """Run :func:`renew_due` every ``check`` seconds on a thread (it blocks on the CA and the
    store), until cancelled; a lost store is logged (rate-limited, one line) and tried again."""
    from sipzone.store.feed import first_line

    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(None, renew_due, store, issuer, holder, retry)
        except SQLAlchemyError as exc:  # the store away: the feed says so too
            events.warning("store", "acme: renewal check skipped (%s)", first_line(exc))
        except Exception:  # a bug: never the server
            log.exception("acme: renewal check failed")
        await asyncio.sleep(check)
