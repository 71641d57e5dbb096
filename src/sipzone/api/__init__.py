"""The REST API under ``/api/v1``: tenants, domains, sites, zones, the email domain, checks,
revision and node status, the audit trail; and the web console at ``/`` (``sipzone.web``).

Theory of operation:

- ``sipzone serve --api HOST:PORT`` runs uvicorn *inside each worker's event loop*, next to
  the SIP edge and the DNS (see :mod:`sipzone.api.service`).  The endpoints are plain functions
  FastAPI runs in its thread pool: every store call blocks on the database, and the event loop
  that answers SIP and DNS must never wait for it.  With ``--workers N`` each worker serves the
  API on the same port (SO_REUSEPORT), as it does SIP.
- Every request names its caller with a bearer token (:mod:`sipzone.api.auth`); the token's
  tenant becomes the store's actor, so every write goes through the same repository functions
  and rules as the CLI, bumps the revision and lands in the change log with who (tenant and
  token label), from where (client address), what, before and after.
- A tenant's token sees its own subtree only.  Whatever lies outside reads as absent (404, a
  page without it), and an error message that would name a tenant outside the caller's chain
  and subtree names "another tenant" instead (:meth:`Caller.hide`).
- Errors are RFC 9457 problem documents with the CLI's words as ``detail``
  (:mod:`sipzone.api.problems`).
- Lists page with opaque cursors over an index (keyset), so page 10 000 costs what page 1
  does.
"""

from __future__ import annotations

from dataclasses import dataclass

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class ApiConfig:
    listen: str  # HOST:PORT
    # The resolver that checks the TXT proofs of claimed names (HOST:PORT); None: the
    # system's (/etc/resolv.conf).
    proof_resolver: str | None = None
    auth_failures: int = 10  # failed authentications one client address may make ...
    auth_window: float = 60.0  # ... within this many seconds; then 429 until they age out
    site: str | None = None  # the site this node runs at: its voicemail store comes first
    # True: HTTPS with the store's certificates, chosen by the name the client asks for (SNI);
    # the email domain's certificate serves its voicemail pages.
    tls: bool = False
    # PEM file of the CAs the voicemail store's IMAP certificate chains to; None: the system's.
    mail_ca: str | None = None
