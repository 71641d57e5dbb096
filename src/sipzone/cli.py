"""The `sipzone` command: operators' hands on the store, and `serve` to run the services.

Exit codes scripts rely on: 0 done; 1 `check` found no rule admitting the name; 2 bad input,
with the reason on stderr as ONE line, ``sipzone: REASON``, and nothing changed.  That holds for
usage errors too (an unknown option, ``--weight ten``): :func:`main` runs Click without its
standalone mode and says each failure in that one line.  A traceback means a bug of ours.

A simple command must start quickly (scripts call it thousands of times): this module imports
no database layer, web framework or server at import time.  Each command imports what it uses
(``store()`` loads SQLAlchemy), Typer's plain values skip Pydantic (``sipzone.cliparams``), and
help is plain Click text, which wraps rather than cuts at the width of a terminal or 80
columns, and saves importing Rich.  ``bench/cli/start.sh`` measures it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

os.environ.setdefault("TYPER_USE_RICH", "0")  # read when Typer is imported: plain Click help
import typer

from sipzone import cliparams
from sipzone.model.errors import InvalidName, SipzoneError
from sipzone.model.names import parse_domain, parse_rule
from sipzone.model.tenancy import PROVIDER
from sipzone.store.url import DEFAULT_URL, ENV_URL_FILE, read_url_file

if TYPE_CHECKING:
    from sipzone.model.debug import DebugSwitch
    from sipzone.model.names import RuleName
    from sipzone.store.repository import Store

cliparams.install()

if TYPE_CHECKING:
    from sipzone.sip.tls import TlsPolicy

app = typer.Typer(
    help="Run a SIP platform under domain names: tenants, SIP domains, sites, zones, DNS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tenant_app = typer.Typer(help="The reseller chain: provider, resellers, customers.")
domain_app = typer.Typer(help="SIP domains: exact names and *.BASE wildcards.")
site_app = typer.Typer(help="Sites of the installation: virtual IPs, region, networks.")
zone_app = typer.Typer(help="DNS zones sipzone is authoritative for.")
email_app = typer.Typer(help="The installation's one email domain (voicemail access).")
nameserver_app = typer.Typer(
    help="The hosts that answer DNS for the zones (sipzone nodes, secondaries): every zone's NS."
)
for sub, name in (
    (tenant_app, "tenant"),
    (domain_app, "domain"),
    (site_app, "site"),
    (zone_app, "zone"),
    (nameserver_app, "nameserver"),
    (email_app, "email-domain"),
):
    app.add_typer(sub, name=name, no_args_is_help=True)
sip_app = typer.Typer(help="The SIP edge's installation-wide state.")
app.add_typer(sip_app, name="sip", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: each acts as one tenant, over its subtree only.")
app.add_typer(token_app, name="token", no_args_is_help=True)
cert_app = typer.Typer(help="TLS certificates for SIP over TLS, chosen by the server name (SNI).")
app.add_typer(cert_app, name="cert", no_args_is_help=True)
trunk_app = typer.Typer(
    help="Trunks to external SIP services (Microsoft Teams Direct Routing): kept alive by OPTIONS."
)
app.add_typer(trunk_app, name="trunk", no_args_is_help=True)
db_app = typer.Typer(help="The store's schema: its version, and upgrades to this sipzone's.")
app.add_typer(db_app, name="db", no_args_is_help=True)
debug_app = typer.Typer(
    help="Log every SIP message or DNS query of one peer or name, on every node, for a while."
)
app.add_typer(debug_app, name="debug", no_args_is_help=True)

Db = Annotated[
    str,
    typer.Option(
        "--db", envvar="SIPZONE_DB", help="Store URL (sqlite:///FILE or postgresql://...)."
    ),
]
As = Annotated[str, typer.Option("--as", help="Act as this tenant (default: the provider).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable).")]

T = TypeVar("T")
HELP_WIDTH = 120  # columns of help text at most (Click's default is 80)


def say(message: str) -> None:
    """Write ``sipzone: MESSAGE`` to stderr as one line, whatever the message holds."""
    typer.echo("sipzone: " + " ".join(message.splitlines()), err=True)


def fail(message: str, code: int = 2) -> NoReturn:
    say(message)
    raise typer.Exit(code)


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn every sipzone error into exit 2 with the reason on stderr."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except SipzoneError as exc:
            fail(str(exc))
        except OSError as exc:  # a store URL file, an output file
            fail(str(exc))
        except Exception as exc:
            sa_exc = sys.modules.get("sqlalchemy.exc")  # loaded if the command used the store
            if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
                raise  # not the database's answer: a bug of ours, worth its traceback
            from sipzone.store.repository import store_error

            cause = getattr(exc, "orig", None) or exc
            if isinstance(exc, sa_exc.IntegrityError):
                fail(f"conflicting change, nothing was written: {cause}")
            fail(str(store_error(resolve_db(kwargs.get("db", DEFAULT_URL)), exc)))

    return wrapper


def resolve_db(db: str) -> str:
    """The store URL: ``--db`` or ``SIPZONE_DB`` as given, else the first line of the file
    ``SIPZONE_DB_FILE`` names, else the default (see sipzone.store.url)."""
    if db == DEFAULT_URL and os.environ.get(ENV_URL_FILE):
        return read_url_file(os.environ[ENV_URL_FILE])
    return db


def store(db: str, actor: str = PROVIDER) -> Store:
    """The store at ``db`` acting as ``actor``; its connections close when the command ends
    (see :func:`_leave`)."""
    import atexit

    from sipzone.store.repository import Store

    user = os.environ.get("USER", "unknown")
    repo = Store(
        resolve_db(db),
        actor=actor,
        via=f"cli:{user}",
        principal=f"shell user {user}",
        origin="shell",
    )
    atexit.register(repo.close)
    return repo


def emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def given_fields(given: dict[str, Any]) -> dict[str, Any]:
    """The options of a `set` command that were given (not None); exit 2 if none was."""
    fields = {k: v for k, v in given.items() if v is not None}
    if not fields:
        fail("nothing to change: give at least one option")
    return fields


def done(as_json: bool, message: str, **data: Any) -> None:
    """What a write did: one line for people, or with ``--json`` the same as an object."""
    if as_json:
        emit(data)
    else:
        typer.echo(message)


# ---------------------------------------------------------------------------- init


@app.command()
@guarded
def init(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """Create the store or migrate it to the current schema."""
    from sipzone.sip import BRANCH_SECRET
    from sipzone.store.url import redacted

    repo = store(db)
    repo.init()
    repo.ensure_secret(BRANCH_SECRET)
    rev, where = repo.revision(), redacted(repo.url)
    done(as_json, f"store ready at {where} (revision {rev})", store=where, revision=rev)


@sip_app.command("rotate-secret")
@guarded
def sip_rotate_secret(db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False) -> None:
    """Replace the key that signs the SIP edge's Via branches (the value is never shown).

    The previous key stays valid for responses to requests it signed until the next rotation,
    so rotate at most once per a few minutes (the longest INVITE transaction).
    """
    from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS

    rev = store(db, actor).rotate_secret(BRANCH_SECRET, BRANCH_SECRET_PREVIOUS)
    done(
        as_json,
        f"SIP branch secret rotated; the previous one is still accepted (revision {rev})",
        revision=rev,
    )


# ---------------------------------------------------------------------------- debug

Peer = Annotated[str | None, typer.Option(help="Only messages from or to this IP address.")]
Named = Annotated[str | None, typer.Option("--name", help="Only messages naming this domain.")]
For = Annotated[str, typer.Option("--for", help="How long: 90s, 10m, 2h (at most 24h).")]
Full = Annotated[bool, typer.Option(help="Log whole messages, not only a summary line.")]


def _switch_json(switch: DebugSwitch) -> dict[str, Any]:
    from datetime import UTC, datetime

    until = datetime.fromtimestamp(switch.until, UTC).isoformat(timespec="seconds")
    return {
        "kind": switch.kind,
        "peer": switch.peer,
        "name": switch.name,
        "full": switch.full,
        "until": until,
    }


def _debug_command(kind: str, doc: str) -> None:
    """Register `debug KIND`: the same options for SIP and DNS."""

    def switch_on(
        peer: Peer = None,
        name: Named = None,
        duration: For = "10m",
        full: Full = False,
        db: Db = DEFAULT_URL,
        actor: As = PROVIDER,
        as_json: Json = False,
    ) -> None:
        import time

        from sipzone.model.debug import new_switch, parse_duration

        seconds = parse_duration(duration)
        switch = new_switch(kind, time.time(), seconds, peer=peer, name=name, full=full)
        rev = store(db, actor).set_debug(switch)
        data = _switch_json(switch)
        line = f"{kind.upper()} debug logging on until {data['until']} (revision {rev})"
        done(as_json, line, **data, revision=rev)

    switch_on.__doc__ = doc
    debug_app.command(kind)(guarded(switch_on))


_debug_command(
    "sip",
    """Log each SIP message from or to one peer, or naming one domain (in its URIs), and what
    the edge sent for it: at DEBUG whatever the log level, on every node, until it ends.""",
)
_debug_command(
    "dns",
    """Log each DNS query from one client, or for one name and the names under it, with its
    answer: at DEBUG whatever the log level, on every node, until it ends.""",
)


@debug_app.command("off")
@guarded
def debug_off(
    kind: Annotated[str | None, typer.Argument(help="sip or dns (default: both).")] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Turn debug logging off before its time."""
    from sipzone.model.debug import KINDS, setting_key

    kinds = KINDS if kind is None else (kind,)
    for each in kinds:
        setting_key(each)  # an unknown kind says so before anything is written
    rev = store(db, actor).debug_off(kinds)
    done(
        as_json,
        f"debug logging off: {', '.join(kinds)} (revision {rev})",
        off=list(kinds),
        revision=rev,
    )


@debug_app.command("show")
@guarded
def debug_show(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """The debug switches that are on."""
    import time

    from sipzone.model.debug import KINDS, switch_of

    settings = store(db).settings()
    on = [s for s in (switch_of(settings, kind) for kind in KINDS) if s and s.until > time.time()]
    if as_json:
        emit([_switch_json(switch) for switch in on])
        return
    for switch in on:
        typer.echo(f"{switch.describe()} until {_switch_json(switch)['until']}")
    if not on:
        typer.echo("no debug switch is on")


@app.command()
@guarded
def status(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """What the store holds (revision, schema, counts, sites, the last change) and the nodes
    serving it (revision, lag, last seen, site, store reachability, their views of sites,
    their upstreams' targets)."""
    from sipzone.health.status import node_json
    from sipzone.store.url import redacted

    repo = store(db)
    data = {"store": redacted(repo.url), "schema": repo.schema_version(), **repo.status()}
    views = repo.site_views(fresh_within=None)
    upstreams = repo.upstream_states()
    data["nodes"] = nodes = [node_json(n, views, upstreams) for n in repo.list_nodes()]
    if as_json:
        emit(data)
        return
    last = data["last_change"]
    lines = [
        f"store      {data['store']} (schema {data['schema']})",
        f"revision   {data['revision']}"
        + (f" ({last['op']} by {last['actor']} at {last['at']})" if last else ""),
        f"tenants    {data['tenants']}",
        f"domains    {data['domains']} exact, {data['wildcards']} wildcard",
        f"zones      {data['zones']}",
        f"sites      {', '.join(data['sites']) or '(none)'}",
    ]
    if not nodes:
        lines.append("nodes      no node has reported yet (nodes report while serve runs)")
    for r in nodes:
        seen = f"seen {r['seconds_since_seen']:g} s ago" + ("" if r["alive"] else " (gone?)")
        store_state = "store down since " + r["store_down_since"] if r["store_down_since"] else ""
        sites = " ".join(f"{k}={v}" for k, v in sorted(r["sites"].items()))
        lines.append(
            f"node       {r['name']}\trevision {r['revision']} ({r['behind']} behind)\t{seen}\t"
            f"site {r['site'] or '-'}\t{sites}\t{store_state}".rstrip()
        )
        lines.extend(
            f"  upstream {u['upstream']}\t{u['target']}\tpriority {u['priority']} weight "
            f"{u['weight']}\t{u['state']}{' (in use)' if u['in_use'] else ''}"
            for u in r["upstreams"]
        )
    typer.echo("\n".join(lines))


@app.command("systemd-unit")
def systemd_unit() -> None:
    """Print the systemd unit sipzone ships (Type=notify, its own user, hardened)."""
    from importlib.resources import files

    sys.stdout.write(files("sipzone").joinpath("deploy/sipzone.service").read_text())


# ---------------------------------------------------------------------------- schema, backup


@db_app.command("version")
@guarded
def db_version(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """The store's schema version and this sipzone's; exit 0 when they match, 1 when not."""
    from sipzone.store.repository import schema_head, schema_revisions

    current, head = store(db).schema_version(), schema_head()
    if current == head:
        state = "current"
    elif current is None:
        state = "none"
    elif current in schema_revisions():
        state = "behind"
    else:
        state = "ahead"
    advice = {
        "current": "up to date",
        "none": "no schema yet: run `sipzone init`",
        "behind": "older than this sipzone's: run `sipzone db upgrade`",
        "ahead": "newer than this sipzone knows: upgrade sipzone before using it here",
    }[state]
    if as_json:
        emit({"store": current, "sipzone": head, "state": state})
    else:
        typer.echo(f"store schema {current}, sipzone schema {head}: {advice}")
    raise typer.Exit(0 if state == "current" else 1)


@db_app.command("upgrade")
@guarded
def db_upgrade(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """Migrate the store's schema to this sipzone's (see the README on upgrading node by node)."""
    before, after = store(db).upgrade()
    what = "already at" if before == after else f"upgraded from {before} to"
    done(as_json, f"store schema {what} {after}", before=before, after=after)


@app.command("dump")
@guarded
def dump_command(
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE (mode 600) instead of stdout."),
    ] = None,
    with_secrets: Annotated[
        bool, typer.Option("--with-secrets", help="Include the secret settings (SIP keys).")
    ] = False,
    db: Db = DEFAULT_URL,
) -> None:
    """The whole store as JSON: tenants, domains, sites, zones, settings (secrets on request)."""
    from sipzone.store.backup import dump, to_text

    text = to_text(dump(store(db), with_secrets=with_secrets))
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@app.command("restore")
@guarded
def restore_command(
    file: Annotated[str, typer.Argument(help="A file `sipzone dump` wrote ('-': stdin).")],
    db: Db = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Fill an empty store (just `sipzone init`) from a dump, all or nothing."""
    from sipzone.store.backup import is_secret, parse

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file!r}: {getattr(exc, 'strerror', None) or exc}")
    document = parse(text)
    rev = store(db).restore(document, is_secret)
    keyless = [c["name"] for c in document["certificates"] if "key_pem" not in c]
    if keyless:
        say(
            f"note: certificate(s) {', '.join(map(str, keyless))} not restored: the dump holds "
            "no keys (dump --with-secrets); add them again with `sipzone cert add`"
        )
    n = len(document["domains"])
    done(
        as_json, f"restored {len(document['tenants'])} tenants, {n} domains (revision {rev})",
        tenants=len(document["tenants"]), domains=n, sites=len(document["sites"]),
        zones=len(document["zones"]), trunks=len(document["trunks"]), revision=rev,
    )  # fmt: skip


# ---------------------------------------------------------------------------- tenants


@tenant_app.command("add")
@guarded
def tenant_add(
    name: str,
    parent: Annotated[str, typer.Option(help="Parent tenant.")] = PROVIDER,
    brand_name: Annotated[str | None, typer.Option(help="Display name of the brand.")] = None,
    support_email: Annotated[str | None, typer.Option(help="Support address.")] = None,
    web_url: Annotated[str | None, typer.Option(help="Web site URL.")] = None,
    logo_url: Annotated[str | None, typer.Option(help="Logo URL.")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="SIP URI of the core for this tenant's traffic.")
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Add a tenant under PARENT (the provider by default)."""
    rev = store(db, actor).add_tenant(
        name,
        parent,
        brand_name=brand_name,
        support_email=support_email,
        web_url=web_url,
        logo_url=logo_url,
        upstream=upstream,
    )
    done(
        as_json, f"tenant {name} added under {parent} (revision {rev})",
        tenant=name, parent=parent, revision=rev,
    )  # fmt: skip


@tenant_app.command("set")
@guarded
def tenant_set(
    name: str,
    brand_name: Annotated[str | None, typer.Option(help="Display name; '' inherits.")] = None,
    support_email: Annotated[str | None, typer.Option(help="Support address; '' inherits.")] = None,
    web_url: Annotated[str | None, typer.Option(help="Web site URL; '' inherits.")] = None,
    logo_url: Annotated[str | None, typer.Option(help="Logo URL; '' inherits.")] = None,
    upstream: Annotated[str | None, typer.Option(help="Core SIP URI; '' inherits.")] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Change a tenant's brand fields or upstream; an empty value inherits from the parent."""
    given = {
        "brand_name": brand_name,
        "support_email": support_email,
        "web_url": web_url,
        "logo_url": logo_url,
        "upstream": upstream,
    }
    rev = store(db, actor).update_tenant(name, **given_fields(given))
    done(as_json, f"tenant {name} changed (revision {rev})", tenant=name, revision=rev)


@tenant_app.command("remove")
@guarded
def tenant_remove(
    name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False
) -> None:
    """Remove a tenant that owns nothing (no SIP domain, no tenant below it)."""
    rev = store(db, actor).remove_tenant(name)
    done(as_json, f"tenant {name} removed (revision {rev})", tenant=name, revision=rev)


@tenant_app.command("list")
@guarded
def tenant_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List tenants with the brand and upstream they inherit."""
    from sipzone.api.views import tenant_json

    tree = store(db).tenants()
    ordered = sorted(tree, key=lambda t: tree.view(t.name).chain[::-1])
    rows = [tenant_json(tree, tenant.name) for tenant in ordered]
    if as_json:
        emit(rows)
        return
    for row in rows:
        indent = "  " * (len(row["chain"]) - 1)
        extra = f"  brand={row['brand_name']}" if row["brand_name"] else ""
        typer.echo(f"{indent}{row['name']}{extra}")


# ---------------------------------------------------------------------------- domains


@domain_app.command("add")
@guarded
def domain_add(
    name: str,
    owner: Annotated[str | None, typer.Option(help="Owning tenant (default: the actor).")] = None,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="The same rule with the same owner is no error.")
    ] = False,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Add an exact SIP domain (voip.acme.example) or a wildcard (*.teams.example.com)."""
    repo = store(db, actor)
    if exist_ok:
        rule, rev, added = repo.ensure_domain(name, owner)
    else:
        (rule, rev), added = repo.add_domain(name, owner), True
    what = "added" if added else "already present"
    done(
        as_json, f"{rule.text} {what} for {owner or actor} (revision {rev})",
        domain=rule.text, owner=owner or actor, added=added, revision=rev,
    )  # fmt: skip


@domain_app.command("remove")
@guarded
def domain_remove(
    name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False
) -> None:
    """Remove a SIP domain; the edge and DNS stop serving it at once."""
    rule, rev = store(db, actor).remove_domain(name)
    done(as_json, f"{rule.text} removed (revision {rev})", domain=rule.text, revision=rev)


@domain_app.command("list")
@guarded
def domain_list(
    owner: Annotated[str | None, typer.Option(help="Only this tenant's domains.")] = None,
    db: Db = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """List SIP domains: name, owner, wildcard, revision added, status (pending claims)."""
    from sipzone.api.views import domain_json

    rows = store(db).list_domains(owner)
    if as_json:
        emit([domain_json(r) for r in rows])
        return
    for r in rows:
        typer.echo(f"{r.name}\t{r.owner}" + ("\tpending" if r.pending else ""))


def _read_import(path: Path) -> list[tuple[int, RuleName, str | None]]:
    """Lines of ``NAME [OWNER]`` (space, tab or comma separated) in UTF-8; '#' starts a
    comment.  Every bad line is reported, up to IMPORT_ERRORS_SHOWN of them."""
    from sipzone.store.repository import IMPORT_ERRORS_SHOWN, import_refusal

    entries: list[tuple[int, RuleName, str | None]] = []
    errors: list[str] = []
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    errors.append(
                        f"line {lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1})"
                    )
                    line = ""
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte order mark some editors write
                text = line.split("#", 1)[0].replace(",", " ").split()
                if len(text) > 2:
                    errors.append(f"line {lineno}: expected NAME [OWNER], got {len(text)} fields")
                elif text:
                    try:
                        entries.append(
                            (lineno, parse_rule(text[0]), text[1] if len(text) == 2 else None)
                        )
                    except InvalidName as exc:
                        errors.append(f"line {lineno}: {exc}")
                if len(errors) >= IMPORT_ERRORS_SHOWN:
                    break
    except OSError as exc:
        fail(f"cannot read {str(path)!r}: {exc.strerror or exc}")
    if errors:
        fail(import_refusal(errors))
    return entries


@domain_app.command("import")
@guarded
def domain_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    owner: Annotated[str | None, typer.Option(help="Owner for lines without one.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows per INSERT statement.")] = 20_000,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Load many domains from FILE (one per line, optional owner column), all or nothing.

    The file is checked whole, then validated and written in ONE transaction against the
    store as it is then: on any bad line or conflict nothing is added (exit 2, the lines
    named).  Names already present with the same owner are skipped, so an import can be re-run.
    """
    entries = _read_import(file)
    repo = store(db, actor)
    with _progress(len(entries)) as progress:
        report = repo.import_domains(entries, owner, batch=batch, progress=progress)
    rev = repo.revision()
    done(
        as_json,
        f"read {report.read}, added {report.added}, already present {report.unchanged} "
        f"(revision {rev})",
        read=report.read, added=report.added, unchanged=report.unchanged, revision=rev,
    )  # fmt: skip


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal's stderr, started at the first step (after validation);
    nothing at all when stderr is not a terminal, so a script sees only the one error line."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with contextlib.ExitStack() as stack:
        bar: Any = None

        def step(n: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(
                    typer.progressbar(
                        length=total, label="importing", file=sys.stderr, show_pos=True
                    )
                )
            bar.update(n)

        yield step


@app.command()
@guarded
def check(name: str, db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """Is NAME admitted?  Exit 0 with the rule and owner if so, 1 if not."""

    from sipzone.api.views import check_json

    key = parse_domain(name).text
    match, revision = store(db).check(key)
    if as_json:
        emit(check_json(key, match, revision))
    elif match is not None:
        typer.echo(f"{key} admitted by {match.rule} (owner {match.owner.name})")
    else:
        typer.echo(f"{key} not admitted: no exact or wildcard rule covers it")
    raise typer.Exit(0 if match else 1)


# ---------------------------------------------------------------------------- sites


@site_app.command("add")
@guarded
def site_add(
    name: str,
    vip: Annotated[list[str], typer.Option(help="Virtual IP (v4 or v6); repeat for more.")],
    region: Annotated[str, typer.Option(help="Region this site serves first.")],
    network: Annotated[
        list[str] | None, typer.Option(help="Client network (CIDR) served first; repeatable.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="SIP host name (SRV target).")] = None,
    weight: Annotated[int, typer.Option(help="Capacity weight (SRV weight).")] = 100,
    order: Annotated[int | None, typer.Option(help="Position among other regions.")] = None,
    port_udp: Annotated[int, typer.Option(help="SIP over UDP port; 0: not offered.")] = 5060,
    port_tcp: Annotated[int, typer.Option(help="SIP over TCP port; 0: not offered.")] = 5060,
    port_tls: Annotated[int, typer.Option(help="SIP over TLS port; 0 (default): not offered.")] = 0,
    upstream: Annotated[str | None, typer.Option(help="Default SIP core URI.")] = None,
    check_interval: CheckInterval = None,
    check_timeout: CheckTimeout = None,
    check_failures: CheckFailures = None,
    check_successes: CheckSuccesses = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Add a site of the installation."""
    from sipzone.model.health import HealthCheck

    check = HealthCheck.checked(check_interval, check_timeout, check_failures, check_successes)
    rev = store(db, actor).add_site(
        name,
        vips=vip,
        region=region,
        networks=network or (),
        host=host,
        weight=weight,
        order=order,
        ports={"udp": port_udp, "tcp": port_tcp, "tls": port_tls},
        upstream=upstream,
        check=check,
    )
    done(as_json, f"site {name} added (revision {rev})", site=name, revision=rev)
    if port_tls and not store(db).list_certificates():
        say(
            f"note: the DNS now sends phones to TLS port {port_tls}, but the store holds no "
            "TLS certificate yet: add one with `sipzone cert add`"
        )


@site_app.command("set")
@guarded
def site_set(
    name: str,
    vip: Annotated[
        list[str] | None, typer.Option(help="Virtual IPs (replace the list); repeat for more.")
    ] = None,
    region: Annotated[str | None, typer.Option(help="Region this site serves first.")] = None,
    network: Annotated[
        list[str] | None, typer.Option(help="Client networks (replace the list); repeatable.")
    ] = None,
    no_networks: Annotated[
        bool, typer.Option("--no-networks", help="Serve no client network first.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="SIP host name; '' for <site>.<zone>.")] = None,
    weight: Annotated[int | None, typer.Option(help="Capacity weight (SRV weight).")] = None,
    order: Annotated[int | None, typer.Option(help="Position among other regions.")] = None,
    port_udp: Annotated[int | None, typer.Option(help="SIP over UDP port; 0: not offered.")] = None,
    port_tcp: Annotated[int | None, typer.Option(help="SIP over TCP port; 0: not offered.")] = None,
    port_tls: Annotated[int | None, typer.Option(help="SIP over TLS port; 0: not offered.")] = None,
    upstream: Annotated[str | None, typer.Option(help="Default SIP core URI; '' clears.")] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Change a site's fields; those not given stay as they are.  Provider only."""
    if network and no_networks:
        fail("give --network or --no-networks, not both")
    ports = {
        t: p for t, p in (("udp", port_udp), ("tcp", port_tcp), ("tls", port_tls)) if p is not None
    }
    given: dict[str, Any] = {
        "vips": vip or None,
        "region": region,
        "networks": [] if no_networks else network or None,
        "host": host,
        "weight": weight,
        "order": order,
        "ports": ports or None,
        "upstream": upstream,
    }
    rev = store(db, actor).update_site(name, **given_fields(given))
    done(as_json, f"site {name} changed (revision {rev})", site=name, revision=rev)


@site_app.command("remove")
@guarded
def site_remove(
    name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False
) -> None:
    """Remove a site; the DNS stops naming it at once.  Provider only."""
    rev = store(db, actor).remove_site(name)
    done(as_json, f"site {name} removed (revision {rev})", site=name, revision=rev)


@site_app.command("health")
@guarded
def site_health(
    name: str,
    state: Annotated[str, typer.Argument(help="up or down")],
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Mark a site up or down; a down site drops out of DNS answers.  Provider only."""
    if state not in ("up", "down"):
        fail(f"state must be 'up' or 'down', not {state!r}")
    rev = store(db, actor).set_site_health(name, state == "up")
    done(
        as_json, f"site {name} is {state} (revision {rev})",
        site=name, healthy=state == "up", revision=rev,
    )  # fmt: skip


@site_app.command("list")
@guarded
def site_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List sites: name, region, virtual IPs, up or down (--json: every field)."""
    from sipzone.api.views import site_json
    from sipzone.health.status import site_state

    st = store(db)
    views = st.site_views()
    rows = [{**site_json(s), **site_state(s, views)} for s in st.list_sites()]
    if as_json:
        emit(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']}\t{r['region']}\t{','.join(r['vips'])}\t{r['state']}")


# Health-check settings, shared by `site add` and `site health-check`: None keeps the current
# value (the default for a new site: 5 s, 2 s, 3, 2).
CheckInterval = Annotated[
    float | None, typer.Option(help="Seconds between health probes of the site (default 5).")
]
CheckTimeout = Annotated[
    float | None, typer.Option(help="Seconds a probe waits for a final response (default 2).")
]
CheckFailures = Annotated[
    int | None, typer.Option(help="Failed probe rounds in a row that make it down (default 3).")
]
CheckSuccesses = Annotated[
    int | None, typer.Option(help="Good probe rounds in a row that make it up (default 2).")
]


@site_app.command("health-check")
@guarded
def site_health_check(
    name: str,
    interval: CheckInterval = None,
    timeout: CheckTimeout = None,
    failures: CheckFailures = None,
    successes: CheckSuccesses = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Change how nodes probe a site (OPTIONS over its transports); unset values stay."""
    check, rev = store(db, actor).set_site_check(
        name, interval=interval, timeout=timeout, failures=failures, successes=successes
    )
    typer.echo(
        f"site {name} probed every {check.interval:g} s, timeout {check.timeout:g} s, down after "
        f"{check.failures} failures, up after {check.successes} successes (revision {rev})"
    )


@site_app.command("drain")
@guarded
def site_drain(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER) -> None:
    """Take a site out of DNS answers for maintenance, whatever its probes say."""
    rev = store(db, actor).set_site_drained(name, True)
    typer.echo(f"site {name} drained (revision {rev})")


@site_app.command("undrain")
@guarded
def site_undrain(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER) -> None:
    """Put a drained site back; it serves again when its probes say it is up."""
    rev = store(db, actor).set_site_drained(name, False)
    typer.echo(f"site {name} undrained (revision {rev})")


# ---------------------------------------------------------------------------- certificates


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read the {what} file {str(path)!r}: {exc.strerror}")


@cert_app.command("add")
@guarded
def cert_add(
    name: str,
    cert: Annotated[Path, typer.Option(help="PEM file: the certificate, then its chain.")],
    key: Annotated[Path, typer.Option(help="PEM file: its private key (unencrypted).")],
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Store a certificate and its key under NAME (the same NAME again replaces it).

    Refused, with nothing changed: a key that does not match, a chain out of order (leaf first,
    each certificate followed by its issuer), a certificate outside its validity.  Running
    edges use it for new handshakes once they see the change; open connections keep theirs.
    """
    added, rev, replaced = store(db, actor).add_certificate(
        name, _read_pem(cert, "certificate"), _read_pem(key, "key")
    )
    done = "replaced" if replaced else "added"
    typer.echo(
        f"certificate {added.name} {done}: {', '.join(added.names)}, valid until "
        f"{added.not_after:%Y-%m-%d} (revision {rev})"
    )


@cert_app.command("acme")
@guarded
def cert_acme(
    name: str,
    domain: Annotated[
        list[str], typer.Option(help="A name to cover (exact or *.BASE); repeat for more.")
    ],
    directory: Annotated[str, typer.Option(help="The ACME CA's directory URL.")],
    email: Annotated[str, typer.Option(help="Contact address of the ACME account.")],
    eab_kid: Annotated[
        str | None, typer.Option(help="External account binding: key id from the CA.")
    ] = None,
    eab_hmac: Annotated[
        str | None, typer.Option(help="External account binding: HMAC key (base64url).")
    ] = None,
    key_type: Annotated[str, typer.Option(help="The certificate's key: ec256 or rsa2048.")] = (
        "ec256"
    ),
    dns: Annotated[
        list[str] | None,
        typer.Option(
            help="A node's DNS listener (HOST:PORT) that must answer the challenge before the "
            "CA is told to look; repeat once per node.  Default 127.0.0.1:53."
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the DNS to answer the challenge.")
    ] = 60.0,
    db: Db = DEFAULT_URL,
) -> None:
    """Order a certificate for NAME from an ACME CA, answering DNS-01 with sipzone's own DNS.

    Registers an account the first time (its key stays in the store), publishes each
    _acme-challenge TXT value through the store (every node's DNS answers it), waits until
    every --dns server answers them, lets the CA validate, stores the certificate like
    `cert add` and withdraws the challenge records.  `serve` renews it at two thirds of its
    lifetime.  On any failure nothing is stored and the certificate in service stays.
    """
    from sipzone.acme import Issuer
    from sipzone.model.acme import (
        AcmePlan,
        parse_account_email,
        parse_acme_domains,
        parse_directory,
        parse_key_type,
    )
    from sipzone.model.certificates import parse_cert_name
    from sipzone.net import split_hostport

    parse_cert_name(name)
    plan = AcmePlan(
        parse_directory(directory),
        parse_account_email(email),
        parse_acme_domains(domain),
        parse_key_type(key_type),
    )
    if (eab_kid is None) != (eab_hmac is None):
        fail("give --eab-kid and --eab-hmac together, or neither")
    servers = dns or ["127.0.0.1:53"]
    for server in servers:
        try:
            split_hostport(server)
        except ValueError as exc:
            fail(f"--dns {server!r}: {exc}")
    eab = (eab_kid, eab_hmac) if eab_kid is not None and eab_hmac is not None else None
    cert, rev = Issuer(store(db), servers, wait).issue(name, plan, eab)
    typer.echo(
        f"certificate {cert.name} issued: {', '.join(cert.names)}, valid until "
        f"{cert.not_after:%Y-%m-%d %H:%M} UTC; renews itself (revision {rev})"
    )


@cert_app.command("remove")
@guarded
def cert_remove(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER) -> None:
    """Remove a certificate; if it was the default, the first added becomes the default."""
    rev = store(db, actor).remove_certificate(name)
    typer.echo(f"certificate {name} removed (revision {rev})")


@cert_app.command("default")
@guarded
def cert_default(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER) -> None:
    """Answer handshakes without a server name, or with one no certificate covers, with NAME."""
    rev = store(db, actor).set_default_certificate(name)
    typer.echo(f"certificate {name} is the default (revision {rev})")


@cert_app.command("list")
@guarded
def cert_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List certificates, the default first: names covered, issuer, not-after, days left
    (--json: also subject, serial, not-before, SHA-256 fingerprint; never the key)."""
    from sipzone.api.views import certificate_json, renewal_json

    stored = store(db)
    acme = {state.name: state for state in stored.acme_certificates()}
    rows = [
        certificate_json(c, i == 0) | renewal_json(acme.get(c.name))
        for i, c in enumerate(stored.list_certificates())
    ]
    if as_json:
        emit(rows)
        return
    for r in rows:
        mark = " (default)" if r["default"] else ""
        renewal = r["renewal"]
        how = r["managed"]
        if renewal and renewal["failures"]:
            how += f" ({renewal['failures']} renewals failed, next try {renewal['next_attempt']})"
        typer.echo(
            f"{r['name']}{mark}\t{','.join(r['names'])}\t{r['issuer']}\t"
            f"{r['not_after'][:10]}\t{r['days_left']} days left\t{how}"
        )


# ---------------------------------------------------------------------------- trunks


@trunk_app.command("add")
@guarded
def trunk_add(
    name: str,
    target: Annotated[
        list[str],
        typer.Option(help="A target SIP URI; repeat, in failover order (the first up is used)."),
    ],
    base: Annotated[str, typer.Option(help="The carrier FQDN our OPTIONS carry in Contact.")],
    options_interval: Annotated[
        int, typer.Option(help="Seconds between OPTIONS to each target (jittered).")
    ] = 60,
    profile: Annotated[
        str, typer.Option(help="sip, or teams (Microsoft Teams Direct Routing rules).")
    ] = "sip",
    sbc_header: Annotated[
        str | None, typer.Option(help="X-MS-SBC value (vendor/model/version).")
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Store a trunk (the same NAME again replaces it); running edges start keeping its targets
    alive as soon as they see the change, presenting the certificate that covers --base."""
    trunk, rev, replaced = store(db, actor).add_trunk(
        name, target, base, options_interval, profile, sbc_header
    )
    done = "replaced" if replaced else "added"
    typer.echo(
        f"trunk {trunk.name} {done}: {', '.join(trunk.targets)} as {trunk.base} "
        f"(profile {trunk.profile}, revision {rev})"
    )


@trunk_app.command("remove")
@guarded
def trunk_remove(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER) -> None:
    """Remove a trunk; edges stop sending it OPTIONS and calls."""
    rev = store(db, actor).remove_trunk(name)
    typer.echo(f"trunk {name} removed (revision {rev})")


@trunk_app.command("list")
@guarded
def trunk_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List trunks with each target's state as the edges last saw it (up/down, last response,
    round-trip time, per node)."""
    from sipzone.model.trunks import trunk_json

    st = store(db)
    rows = [trunk_json(t, st.trunk_states()) for t in st.list_trunks()]
    if as_json:
        emit(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']}\t{r['profile']}\t{r['base']}\tevery {r['options_interval']} s")
        for t in r["targets"]:
            seen = t["state"] or [{"node": "-", "state": "unknown", "last_response": "-"}]
            for s in seen:
                rtt = f"{s['latency_ms']:.1f} ms" if s.get("latency_ms") is not None else "-"
                typer.echo(f"  {t['uri']}\t{s['node']}\t{s['state']}\t{s['last_response']}\t{rtt}")


# ---------------------------------------------------------------------------- zones, email


@zone_app.command("add")
@guarded
def zone_add(name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False) -> None:
    """Add a zone sipzone is authoritative for (example.com)."""
    repo = store(db, actor)
    zone, rev = repo.add_zone(name)
    if not repo.nameservers():
        typer.echo(
            f"sipzone: no name server is stored: zone {zone.text} lists the sites' SIP hosts "
            f"(or serve --nameserver) as NS until `sipzone nameserver add ns1.{zone.text} "
            "--address IP` names the hosts that run its DNS",
            err=True,
        )
    done(as_json, f"zone {zone.text} added (revision {rev})", zone=zone.text, revision=rev)


@zone_app.command("remove")
@guarded
def zone_remove(
    name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False
) -> None:
    """Remove a zone; the DNS stops answering for it at once.  Provider only."""
    rev = store(db, actor).remove_zone(name)
    done(as_json, f"zone {name} removed (revision {rev})", zone=name, revision=rev)


@zone_app.command("list")
@guarded
def zone_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List the zones sipzone is authoritative for."""
    names = store(db).list_zones()
    if as_json:
        emit(names)
    else:
        for n in names:
            typer.echo(n)


@nameserver_app.command("add")
@guarded
def nameserver_add(
    name: str,
    address: Annotated[
        list[str] | None,
        typer.Option(
            help="Its IPv4 or IPv6 address (repeatable); needed when NAME is inside one of "
            "the zones, which then publish it."
        ),
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Add a host that runs sipzone's DNS on port 53 (or a secondary): every zone lists it
    as NS, the first added as the SOA's primary.  Provider only."""
    rev = store(db, actor).add_nameserver(name, address or ())
    server = parse_domain(name).text
    done(
        as_json, f"name server {server} added (revision {rev})",
        nameserver=server, addresses=address or [], revision=rev,
    )  # fmt: skip


@nameserver_app.command("remove")
@guarded
def nameserver_remove(
    name: str, db: Db = DEFAULT_URL, actor: As = PROVIDER, as_json: Json = False
) -> None:
    """Remove a name server (not the last one while there are zones).  Provider only."""
    rev = store(db, actor).remove_nameserver(name)
    done(as_json, f"name server {name} removed (revision {rev})", nameserver=name, revision=rev)


@nameserver_app.command("list")
@guarded
def nameserver_list(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List the name servers with their addresses, the SOA's primary first."""
    servers = store(db).nameservers()
    if as_json:
        emit([{"name": s.name, "addresses": [str(a) for a in s.addresses]} for s in servers])
    else:
        for s in servers:
            typer.echo(" ".join((s.name, *map(str, s.addresses))))


@email_app.command("set")
@guarded
def email_set(
    name: str,
    mx: Annotated[str | None, typer.Option(help="MX target (default: the domain itself).")] = None,
    imap: Annotated[
        list[str] | None,
        typer.Option(
            help="The voicemail store's IMAP over TLS, [SITE=][HOST:]PORT (a bare PORT: each "
            "site's own host); once for every site, again per site where it differs."
        ),
    ] = None,
    submission: Annotated[
        list[str] | None,
        typer.Option(help="Its mail submission over TLS, [SITE=][HOST:]PORT, as --imap."),
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
    as_json: Json = False,
) -> None:
    """Set the installation's email domain; a second set replaces the first (endpoints too)."""
    domain, rev = store(db, actor).set_email_domain(name, mx, imap or (), submission or ())
    done(
        as_json, f"email domain is {domain.text} (revision {rev})",
        email_domain=domain.text, mx=mx, revision=rev,
    )  # fmt: skip


@email_app.command("show")
@guarded
def email_show(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """Show the installation's email domain, its MX target and its voicemail endpoints."""
    from sipzone.api.views import email_json

    data = email_json(store(db).settings())
    if as_json:
        emit(data)
    else:
        typer.echo(data["email_domain"] or "(none)")
        for service in ("imap", "submission"):
            if data[service]:
                typer.echo(f"  {service}: {' '.join(data[service])}")


@zone_app.command("export")
@guarded
def zone_export(
    name: str,
    fmt: Annotated[str, typer.Option("--format", help="Only 'bind' for now.")] = "bind",
    region: Annotated[
        str | None, typer.Option(help="Answers as clients of this region see them.")
    ] = None,
    db: Db = DEFAULT_URL,
) -> None:
    """Write ZONE as a zone file (named-checkzone accepts it) to stdout."""
    from sipzone.dns.export import zone_file
    from sipzone.dns.xfr import Omissions

    if fmt != "bind":
        fail(f"format {fmt!r} is not supported; use 'bind'")
    snapshot = store(db).load_snapshot()
    zone = parse_domain(name).text
    if zone not in snapshot.zones:
        fail(f"zone {zone!r} is not one of ours (sipzone zone add {zone})")
    omitted = Omissions(zone)
    try:
        for text in zone_file(snapshot, zone, region=region, omitted=omitted):
            sys.stdout.write(text)  # piece by piece: a big zone never sits in memory whole
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    if omitted.count:
        typer.echo(
            f"sipzone: left out {omitted.count} records whose names exceed 255 octets", err=True
        )


# ---------------------------------------------------------------------------- API: tokens, grants


@token_app.command("create")
@guarded
def token_create(
    tenant: Annotated[str, typer.Option(help="The tenant the token acts as.")],
    name: Annotated[str | None, typer.Option("--name", help="A label to tell it apart.")] = None,
    expires: Annotated[
        int | None, typer.Option(help="Days until it expires (default: never).")
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Make an API token for TENANT; its text is the last line, shown this once only."""
    row, secret = store(db, actor).create_token(tenant, name, expires)
    until = f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""
    typer.echo(f"token #{row.id} {row.label!r} for tenant {row.tenant}{until}")
    typer.echo("keep it now: sipzone stores only its hash and cannot show it again")
    typer.echo(secret)


@token_app.command("list")
@guarded
def token_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's tokens.")] = None,
    db: Db = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """List tokens: id, tenant, label, created, expires, revoked (never their text)."""
    from sipzone.api.views import token_json

    rows = [token_json(t) for t in store(db).list_tokens(tenant)]
    if as_json:
        emit(rows)
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else f"expires {r['expires_at'] or 'never'}"
        typer.echo(f"{r['id']}\t{r['tenant']}\t{r['label']}\t{state}")


@token_app.command("revoke")
@guarded
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (token list).")],
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Revoke a token: the next request with it is refused."""
    rev = store(db, actor).revoke_token(token_id)
    typer.echo(f"token #{token_id} revoked (revision {rev})")


@tenant_app.command("grant")
@guarded
def tenant_grant(
    name: str,
    namespace: Annotated[str, typer.Option(help="A name inside the provider's zones.")],
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Let tenant NAME create rules within NAMESPACE (and below it)."""
    granted, rev = store(db, actor).grant_namespace(name, namespace)
    typer.echo(f"tenant {name} may create rules within {granted.text} (revision {rev})")


@tenant_app.command("grants")
@guarded
def tenant_grants(db: Db = DEFAULT_URL, as_json: Json = False) -> None:
    """List namespace grants: tenant, namespace."""
    rows = [{"tenant": t, "namespace": n} for t, n in store(db).list_grants()]
    if as_json:
        emit(rows)
        return
    for r in rows:
        typer.echo(f"{r['tenant']}\t{r['namespace']}")


@domain_app.command("verify")
@guarded
def domain_verify(
    name: str,
    resolver: Annotated[
        str | None, typer.Option(help="Resolver HOST:PORT (default: the system's).")
    ] = None,
    db: Db = DEFAULT_URL,
    actor: As = PROVIDER,
) -> None:
    """Look up the TXT proof of a pending claim; exit 0 once it is active, 1 while pending."""
    from sipzone.api.proof import challenge_name, txt_strings

    repo = store(db, actor)
    row = repo.domain(name)
    if row.pending:
        where = challenge_name(row.name)
        row, _rev = repo.prove_domain(row.name, txt_strings(where, resolver))
        if row.pending:
            typer.echo(f"{row.name} still pending: no TXT {row.challenge!r} at {where}")
            raise typer.Exit(1)
    typer.echo(f"{row.name} is active (owner {row.owner})")


@app.command()
@guarded
def audit(
    tenant: Annotated[
        str | None, typer.Option(help="Only entries about this tenant's subtree.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time (ISO 8601) or age (30m, 12h, 7d) on.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 100,
    db: Db = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """The audit trail, newest first: when, what, who (tenant, token or shell user), from where."""
    from sipzone.api.views import audit_json, parse_since

    repo = store(db)
    scope = repo.tenants().subtree(tenant) if tenant else None
    entries = repo.audit(scope, since=parse_since(since) if since else None, limit=limit)
    rows = [audit_json(e) for e in entries]
    if as_json:
        emit(rows)
        return
    for r in rows:
        who = f"{r['actor_tenant'] or '?'} ({r['principal'] or '?'}, {r['origin'] or '?'})"
        typer.echo(f"{r['at']}\t{r['revision']}\t{r['op']}\t{r['subject']}\t{who}")


def _check_site(site: str | None, names: list[str]) -> None:
    """The SIP edge must know its site once there is a choice: the site's upstream is where
    it sends calls, and a node that guessed would send them to another site's core."""
    if site is None and len(names) > 1:
        fail(
            f"the store has {len(names)} sites ({', '.join(names)}); say which one this node "
            "runs at with --site NAME"
        )
    if site is not None and site not in names:
        known = ", ".join(names) or "none yet"
        fail(f"site {site!r} is not in the store (sites: {known}); add it first: sipzone site add")


def _listen_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _tls_policy(
    ciphers: str | None, verify_client: str, client_ca: Path | None, upstream_ca: Path | None
) -> TlsPolicy:
    """The TLS policy the serve options ask for; ValueError naming what is wrong."""
    from sipzone.sip.tls import DEFAULT_CIPHERS, TlsPolicy

    policy = TlsPolicy(
        ciphers=ciphers or DEFAULT_CIPHERS,
        verify_client=verify_client,
        client_ca=str(client_ca) if client_ca else None,
        upstream_ca=str(upstream_ca) if upstream_ca else None,
    )
    policy.check()
    return policy


def _read_config(ctx: typer.Context, value: str | None) -> str | None:
    """``--config FILE``: the file's values become the defaults of serve's options, below the
    environment and the command line (see sipzone.config)."""
    if value:
        from sipzone.config import BadConfig, load

        try:
            values = load(value, _multiple_options(ctx))
        except BadConfig as exc:
            raise typer.BadParameter(str(exc)) from None
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _fixed_options(ctx: Any) -> list[str]:
    """serve's options set on the command line or in the environment: above the file."""
    from typer._click.core import ParameterSource

    above = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return [str(p.name) for p in ctx.command.params if ctx.get_parameter_source(p.name) in above]


def _multiple_options(ctx: Any) -> dict[str, bool]:
    """serve's options by parameter name, and whether each takes several values."""
    return {str(p.name): bool(getattr(p, "multiple", False)) for p in ctx.command.params if p.name}


@app.command(context_settings={"auto_envvar_prefix": "SIPZONE"})
@guarded
def serve(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="TOML file of serve's options (keys as the options: workers = 2); the "
            "environment (SIPZONE_WORKERS=4) and the command line override it.",
            is_eager=True,
            callback=_read_config,
        ),
    ] = None,
    sip: Annotated[
        str | None,
        typer.Option(help="SIP listeners, comma separated: udp:HOST:PORT,tcp:[::1]:PORT"),
    ] = None,
    dns: Annotated[str | None, typer.Option(help="DNS listener HOST:PORT (UDP and TCP).")] = None,
    metrics: Annotated[
        str | None,
        typer.Option(help="HTTP at HOST:PORT: /metrics (Prometheus), /healthz, /readyz."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="Started as root: run as this user once the ports are bound."),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            max=300,
            help="Seconds SIGTERM lets SIP TCP connections finish what is in flight.",
        ),
    ] = 5.0,
    ready_stale_after: Annotated[
        float,
        typer.Option(min=1, help="Seconds without the store before /readyz says not ready."),
    ] = 30.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    site: Annotated[
        str | None,
        typer.Option(help="The site this node runs at (required once the store has several)."),
    ] = None,
    drop_unknown: Annotated[
        bool, typer.Option(help="Drop requests for unserved domains instead of 403.")
    ] = False,
    tenant_header: Annotated[
        str, typer.Option(help="Header naming the owning tenant on forwarded requests.")
    ] = "X-Sipzone-Tenant",
    caller_tenant_header: Annotated[
        str, typer.Option(help="Header naming the caller's tenant (owner of the From name).")
    ] = "X-Sipzone-Caller-Tenant",
    advertise: Annotated[
        str | None,
        typer.Option(help="Host for our Via/Contact when listening on 0.0.0.0 or ::."),
    ] = None,
    tcp_idle_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds before an idle SIP TCP connection closes.")
    ] = 300.0,
    tcp_max_connections: Annotated[
        int | None,
        typer.Option(
            min=1, help="SIP TCP connections per worker (default: what the open-file limit allows)."
        ),
    ] = None,
    tcp_header_timeout: Annotated[
        float,
        typer.Option(
            min=0.01, help="Seconds from a SIP TCP message's first byte to its headers' end."
        ),
    ] = 5.0,
    tcp_message_timeout: Annotated[
        float,
        typer.Option(min=0.01, help="Seconds from a SIP TCP message's first byte to its end."),
    ] = 30.0,
    tcp_max_per_source: Annotated[
        int, typer.Option(min=1, help="SIP TCP connections one peer address may open, per worker.")
    ] = 256,
    allow_transfer: Annotated[
        list[str] | None, typer.Option(help="CIDR allowed to AXFR; repeatable.")
    ] = None,
    notify: Annotated[
        list[str] | None, typer.Option(help="Secondary HOST:PORT to NOTIFY; repeatable.")
    ] = None,
    naptr: Annotated[bool, typer.Option(help="Publish NAPTR records (RFC 3263).")] = True,
    nameserver: Annotated[
        list[str] | None,
        typer.Option(
            help="NS name of every zone, for a store without `sipzone nameserver add` entries "
            "(those win); repeatable."
        ),
    ] = None,
    ttl: Annotated[
        int, typer.Option(min=0, max=2**31 - 1, help="TTL of published records (RFC 2181 §8).")
    ] = 300,
    negative_ttl: Annotated[
        int,
        typer.Option(min=0, max=2**31 - 1, help="How long NXDOMAIN/NODATA may be cached."),
    ] = 60,
    dns_tcp_idle_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a DNS TCP client may go without a query answered."),
    ] = 10.0,
    dns_tcp_max_connections: Annotated[
        int | None,
        typer.Option(min=1, help="DNS TCP connections per worker (default: half the fd limit)."),
    ] = None,
    dns_tcp_max_per_source: Annotated[
        int, typer.Option(min=1, help="DNS TCP connections per IPv4 address or IPv6 /64.")
    ] = 32,
    dns_rrl: Annotated[
        int,
        typer.Option(min=0, help="UDP responses/s per client /24 or /56 and answer; 0: off."),
    ] = 0,
    dns_ixfr_history: Annotated[
        int,
        typer.Option(
            min=0, help="Records of recent changes kept per zone for IXFR; 0: AXFR always."
        ),
    ] = 100_000,
    dns_rrl_slip: Annotated[
        int,
        typer.Option(min=0, max=10, help="Send every Nth rate-limited response truncated."),
    ] = 2,
    batched_udp: Annotated[
        bool, typer.Option(help="recvmmsg/sendmmsg for UDP on Linux (SIP and DNS).")
    ] = True,
    tls_ciphers: Annotated[
        str | None,
        typer.Option(
            help="OpenSSL cipher list for TLS 1.2 (default: ECDHE with AES-GCM, ChaCha20)."
        ),
    ] = None,
    tls_verify_client: Annotated[
        str,
        typer.Option(help="Client certificates on SIP TLS: none, optional or required."),
    ] = "none",
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="PEM file of the CAs client certificates must chain to.")
    ] = None,
    tls_upstream_ca: Annotated[
        Path | None,
        typer.Option(
            help="PEM file of the CAs TLS upstreams' certificates chain to (default: the system's)."
        ),
    ] = None,
    sip_host: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=ADDRESS: a configured upstream or trunk target name pinned to an address "
            "ahead of the resolver; repeatable."
        ),
    ] = None,
    upstream_dns: Annotated[
        list[str] | None,
        typer.Option(
            help="Name server HOST:PORT the upstreams are located with (NAPTR, SRV, A/AAAA); "
            "repeatable (default: the system's)."
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Seconds between SQLite change checks where inotify cannot watch the store "
            "(with it: the look again after a file event; a safety check runs every second).",
        ),
    ] = 0.05,
    share_ports: Annotated[
        bool,
        typer.Option(help="Start even when another process holds the ports, sharing them."),
    ] = False,
    api: Annotated[
        str | None,
        typer.Option(help="REST API, web console, /healthz and /metrics at HOST:PORT."),
    ] = None,
    proof_resolver: Annotated[
        str | None,
        typer.Option(help="Resolver HOST:PORT that checks claim proofs (default: the system's)."),
    ] = None,
    api_tls: Annotated[
        bool,
        typer.Option(
            help="HTTPS on --api, the stored certificate chosen by SNI (the email domain's for "
            "its voicemail pages)."
        ),
    ] = False,
    mail_ca: Annotated[
        Path | None,
        typer.Option(
            help="PEM file of the CAs the voicemail store's IMAP certificate chains to "
            "(default: the system's)."
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error (SIGHUP re-reads it from --config).")
    ] = "info",
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object per line.")
    ] = "text",
    log_file: Annotated[
        str | None,
        typer.Option(help="Append the log to this file (SIGHUP reopens it) instead of stderr."),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the settings serve would run with (JSON) and exit; nothing starts.",
        ),
    ] = False,
    node_name: Annotated[
        str | None,
        typer.Option(help="This node's name in `sipzone status` and site views (default: host)."),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Where the node keeps its disk copy of the last snapshot, served when it "
            "starts without the store (default: $STATE_DIRECTORY, else beside a SQLite store, "
            "else /var/lib/sipzone).",
        ),
    ] = None,
    health_checks: Annotated[
        bool, typer.Option(help="Probe every site; off: only drain and `site health` decide.")
    ] = True,
    health_ttl: Annotated[
        int,
        typer.Option(
            min=0, max=2**31 - 1, help="TTL of answers health changed, while a site is out."
        ),
    ] = 30,
    acme_check: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds between checks for ACME certificates due (with --dns)."
        ),
    ] = 60.0,
    acme_retry: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds before retrying a failed ACME renewal (doubling)."),
    ] = 300.0,
    acme_wait: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds a renewal waits for this DNS and every --notify secondary to answer "
            "the challenge before the CA is told to look.",
        ),
    ] = 60.0,
    db: Db = DEFAULT_URL,
) -> None:
    """Run the SIP edge, the DNS authority and/or the API on the store, following it live.

    Every option may also come from the environment (SIPZONE_ and the option's name:
    SIPZONE_TCP_IDLE_TIMEOUT=60) or from a --config file (tcp-idle-timeout = 60); the command
    line overrides the environment, which overrides the file.  SIGHUP reopens the log file and
    re-reads the file: the log level and format change at once, other changes are logged as
    needing a restart.  With --dns, ACME certificates (`cert acme`) renew themselves at two
    thirds of their lifetime, one node at a time, the challenge checked against this node's DNS.
    """
    import ipaddress

    from sipzone import logs
    from sipzone.api import ApiConfig
    from sipzone.dns import DnsConfig
    from sipzone.net import split_hostport
    from sipzone.runtime import ServeConfig
    from sipzone.runtime import serve as run
    from sipzone.sip import SipConfig, check_tenant_headers, parse_host_pin, parse_listen
    from sipzone.store.diskcopy import copy_path, default_state_dir

    if not sip and not dns and not api:
        fail("nothing to serve: give --sip, --dns and/or --api")
    try:
        logs.level_of(log_level)
        logs.check_format(log_format)
        for item in _listen_list(sip or ""):
            parse_listen(item)
        check_tenant_headers(tenant_header, caller_tenant_header)
        for hp in [*(notify or []), *([dns] if dns else []), *([metrics] if metrics else [])]:
            split_hostport(hp)
        if api:
            split_hostport(api, allow_zero=True)
        if proof_resolver:
            split_hostport(proof_resolver)
        for cidr in allow_transfer or []:
            ipaddress.ip_network(cidr, strict=False)
        tls = _tls_policy(tls_ciphers, tls_verify_client, tls_client_ca, tls_upstream_ca)
        hosts = tuple(parse_host_pin(pin) for pin in sip_host or ())
        upstream_servers = tuple(split_hostport(hp) for hp in upstream_dns or ())
    except ValueError as exc:
        fail(str(exc))
    url = resolve_db(db)
    settings = ServeConfig(
        db=url,
        sip=SipConfig(
            listen=_listen_list(sip),
            site=site,
            drop_unknown=drop_unknown,
            tenant_header=tenant_header,
            caller_tenant_header=caller_tenant_header,
            advertise=advertise,
            tcp_idle_timeout=tcp_idle_timeout,
            tcp_header_timeout=tcp_header_timeout,
            tcp_message_timeout=tcp_message_timeout,
            tcp_max_connections=tcp_max_connections,
            tcp_max_per_source=tcp_max_per_source,
            batched_udp=batched_udp,
            tls=tls,
            hosts=hosts,
            upstream_dns=upstream_servers,
            probe_upstreams=health_checks,
        )
        if sip
        else None,
        dns=DnsConfig(
            listen=dns,
            allow_transfer=tuple(allow_transfer or ()),
            notify=tuple(notify or ()),
            naptr=naptr,
            ttl=ttl,
            negative_ttl=negative_ttl,
            tcp_idle_timeout=dns_tcp_idle_timeout,
            tcp_max_connections=dns_tcp_max_connections,
            tcp_max_per_source=dns_tcp_max_per_source,
            rrl=dns_rrl,
            rrl_slip=dns_rrl_slip,
            ixfr_history=dns_ixfr_history,
            nameservers=tuple(parse_domain(ns).text for ns in nameserver or ()),
            batched_udp=batched_udp,
            metrics=bool(metrics),
            health_ttl=health_ttl,
        )
        if dns
        else None,
        metrics=metrics,
        workers=workers,
        poll_interval=poll,
        share_ports=share_ports,
        api=ApiConfig(
            listen=api,
            proof_resolver=proof_resolver,
            site=site,
            tls=api_tls,
            mail_ca=str(mail_ca) if mail_ca else None,
        )
        if api
        else None,
        log_level=log_level,
        log_format=log_format,
        log_file=log_file,
        ready_stale_after=ready_stale_after,
        drain_timeout=drain_timeout,
        user=user,
        config_file=config,
        config_values=dict(ctx.default_map or {}),
        config_fixed=frozenset(_fixed_options(ctx)),
        config_known=tuple(_multiple_options(ctx).items()),
        node_name=_node_name(node_name),
        health_checks=health_checks,
        acme_check=acme_check,
        acme_retry=acme_retry,
        copy_path=copy_path(state_dir or default_state_dir(url), url),
        acme_wait=acme_wait,
    )
    if print_config:
        _print_settings(settings)
        return
    import sqlalchemy as sa

    from sipzone.runtime import check_user
    from sipzone.sip import BRANCH_SECRET
    from sipzone.store.repository import StoreBusy, StoreUnreachable

    if user is not None:
        check_user(user)
    repo = store(settings.db)
    try:
        repo.revision()
        repo.ensure_secret(BRANCH_SECRET)  # every worker and node signs with the store's key
        sites = [s.name for s in repo.list_sites()] if sip else []
    except (StoreUnreachable, StoreBusy, sa.exc.DBAPIError) as exc:
        # The workers serve the disk copy meanwhile, or wait for the store (sipzone.runtime).
        from sipzone.store.feed import first_line

        print(f"sipzone: the store is out of reach ({first_line(exc)}); starting without it",
              file=sys.stderr)  # fmt: skip
    else:
        if sip:
            _check_site(site, sites)
    finally:
        repo.close()  # the workers open their own connections
    run(settings)


def _print_settings(settings: Any) -> None:
    """What serve would run with, as JSON (the store URL without its password)."""
    import dataclasses

    from sipzone.store.url import redacted

    data = dataclasses.asdict(settings)
    data["db"] = redacted(data["db"])
    for key in ("config_values", "config_fixed", "config_known"):
        data.pop(key)
    emit(data)


def _command_tree(name: str) -> Any:
    """The Click command tree for a command line whose first word is ``name``: the one
    top-level command or group it names under the `sipzone` group, or the whole tree for
    anything else (help, a typo).  Building every command's parser costs more than a simple
    command's own work, and grows with every command added."""
    part = next((g for g in app.registered_groups if g.name == name), None)
    command = next(
        (
            c
            for c in app.registered_commands
            if (c.name or (c.callback.__name__ if c.callback else "").replace("_", "-")) == name
        ),
        None,
    )
    if part is None and command is None:
        return typer.main.get_command(app)
    tree = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    tree.callback(help=app.info.help)(_top)
    if part is not None:
        tree.registered_groups.append(part)
    if command is not None:
        tree.registered_commands.append(command)
    return typer.main.get_command(tree)


def _top() -> None:
    """The `sipzone` group's own step before a command: nothing."""


def _node_name(text: str | None) -> str | None:
    """A node name as given to --node-name: a word of at most 100 characters."""
    if text is None:
        return None
    from sipzone.model.snapshot import parse_region

    try:
        return parse_region(text)
    except SipzoneError:
        fail(f"node name {text!r} must be a word such as 'node1' or 'eu1-a'")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: runs the command, and says any failure as one line (exit 2).

    Called with ``argv`` (tests, embedding) it ends with SystemExit as usual; as the console
    script (no ``argv``) it ends the process at once (:func:`_leave`)."""
    import typer._click.exceptions as click_errors  # Typer bundles its own Click

    args = list(sys.argv[1:] if argv is None else argv)
    command = _command_tree(args[0] if args else "")
    # Help off a terminal (piped, in a pager, in CI logs) is not cut to 80 columns.
    width = None if sys.stdout.isatty() else HELP_WIDTH
    try:
        code = command.main(
            args=args,
            prog_name="sipzone",
            standalone_mode=False,
            terminal_width=width,
            max_content_width=HELP_WIDTH,
        )
    except typer.Abort:
        say("aborted")
        code = 2
    except click_errors.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            typer.echo(exc.ctx.get_help())
        say("missing command; the help above lists them")
        code = 2
    except click_errors.NoSuchOption as exc:
        path = exc.ctx.command_path if exc.ctx else "sipzone"
        if exc.option_name.startswith("--"):
            hint = f"'{path} --help' lists the options; they go after the command"
        else:  # a short option, or a value such as '-foo.example.com' taken for options
            hint = f"a value that starts with '-' goes after '--', as in: {path} -- -VALUE"
        say(f"{exc.format_message()}; {hint}")
        code = 2
    except click_errors.ClickException as exc:
        say(exc.format_message())
        code = 2
    code = code if isinstance(code, int) else 0
    if argv is None:
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> NoReturn:
    """End the console script without tearing the interpreter down.

    Freeing every module and object one by one at exit (SQLAlchemy's alone are tens of
    thousands) costs a simple command a fifth of its time (bench/cli/RESULTS.md).  What an
    exit must still do is done first: the atexit handlers (they close the store's connections
    and flush the logs) and the output streams.  A command that left a thread running (none
    does; serve stops its own) exits the ordinary way, which waits for it.
    """
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
