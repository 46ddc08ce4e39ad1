"""The `imaging-commons` command line: build, publish and serve an archive; manage accounts."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .config import ARCHIVE_ENV, Archive
from .core.errors import CommonsError, NotFound


def _archive(ctx: click.Context) -> Archive:
    return ctx.obj["archive"]


def _commons(ctx: click.Context):
    from .core.front_door import Commons

    if "commons" not in ctx.obj:
        ctx.obj["commons"] = Commons(_archive(ctx))
    return ctx.obj["commons"]


def _fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """Turns the core's refusals (CommonsError), usage mistakes and storage faults (a
    read-only, full or forbidden archive disk: see core.storage) into one-line messages and a
    non-zero exit code (1: the command failed, 2: it was called wrong, settings included)."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            _fail("aborted")
        except click.UsageError as e:
            _fail(f"{e.format_message()} (see --help)", 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)

    def invoke(self, ctx):
        from .core.storage import storage_problem

        try:
            return super().invoke(ctx)
        except CommonsError as e:
            _fail(e.message)
        except Exception as e:
            archive = (ctx.obj or {}).get("archive")
            problem = storage_problem(e, archive.root if archive else None)
            if problem is None:
                raise
            _fail(problem)


@click.group(cls=_Cli)
@click.option("--archive", type=click.Path(file_okay=False), envvar=ARCHIVE_ENV,
              default="archive", show_default=True,
              help=f"Archive directory (or set {ARCHIVE_ENV}).")
@click.option("--accounts-url", envvar="IMAGING_COMMONS_ACCOUNTS_URL", default=None,
              help="SQLAlchemy URL of the accounts database (default: SQLite in the archive; "
                   "e.g. postgresql+psycopg://user@127.0.0.1:5432/db).")
@click.version_option(__version__)
@click.pass_context
def main(ctx, archive, accounts_url):
    """Imaging Commons: a self-hostable imaging data commons serving the IDC API v1 and
    the NBIA REST API over your own DICOM archive."""
    ctx.ensure_object(dict)
    try:
        ctx.obj["archive"] = Archive.from_env(archive, accounts_url=accounts_url)
    except ValueError as e:
        _fail(str(e), 2)


# ----- catalogue ---------------------------------------------------------------------------
@main.command("import-idc")
@click.pass_context
def import_idc_cmd(ctx):
    """Import the real IDC v25 catalogue from the idc-index-data package as versions 1..25."""
    from .core.idc_import import import_idc

    summary = import_idc(_commons(ctx).catalog, progress=lambda s: click.echo(f"importing {s}"))
    click.echo(f"imported {summary.series} current series, {summary.prior_series} prior-version "
               f"series, {summary.collections} collections, {summary.analysis_results} analysis "
               f"results, {summary.versions} versions (active: {summary.active})")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--collection", required=True, help="Collection ID (e.g. TCGA-LUAD).")
@click.option("--restricted", is_flag=True, help="Only users granted this collection see it.")
@click.option("--publish", "publish_now", is_flag=True, help="Publish the staged version after.")
@click.option("--description", help="Collection description (HTML allowed).")
@click.option("--doi", help="DOI of the collection.")
@click.option("--license", "license_short_name", help="License short name, e.g. 'CC BY 4.0'.")
@click.option("--species", help="Species, e.g. Human.")
@click.option("--cancer-type", help="Cancer type.")
@click.option("--program", help="Program the collection belongs to.")
@click.option("--tumor-location", help="Tumor location, e.g. Lung.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def ingest(ctx, paths, collection, restricted, publish_now, description, doi, license_short_name,
           species, cancer_type, program, tumor_location, no_progress):
    """Ingest DICOM files and folders into the staged next version."""
    from .core.ingest import ingest as run_ingest
    from .core.ingest import publish, writing

    meta = {"description": description, "doi": doi, "license_short_name": license_short_name,
            "species": species, "cancer_type": cancer_type, "program": program,
            "tumor_location": tumor_location}
    catalog = _commons(ctx).catalog
    with writing(catalog):  # held across both: no other writer's stage is published with ours
        report = run_ingest(catalog, paths, collection, restricted=restricted, metadata=meta,
                            progress=not no_progress)
        for line in report.lines():
            click.echo(line)
        if not publish_now:
            return
        if catalog.stage():
            click.echo(f"published version {publish(catalog)}")
            return
        # files all present already, nothing else staged: a new version would be a copy
        active = [v.version for v in catalog.versions() if v.active]
        click.echo("nothing new to publish: " + (f"version {active[0]} stays active"
                                                 if active else "no version is published yet"))


@main.command("publish")
@click.pass_context
def publish_cmd(ctx):
    """Publish what is staged as the next (active, immutable) version."""
    from .core.ingest import publish

    click.echo(f"published version {publish(_commons(ctx).catalog)}")


@main.command("clinical-import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", required=True, help="Collection the patients belong to.")
@click.option("--source", required=True, help="Data source name, e.g. tcga_clinical.")
@click.option("--patient-column", help="Column holding the PatientID (default: detected).")
@click.pass_context
def clinical_import(ctx, file, collection, source, patient_column):
    """Stage a clinical table (CSV or Parquet keyed by patient); its columns become filters."""
    from .core.ingest import stage_clinical

    staged = stage_clinical(_commons(ctx).catalog, file, collection, source, patient_column)
    click.echo(f"staged clinical source {staged.source} for {staged.collection_id}: "
               f"{', '.join(staged.columns)} (publish to make it visible)")


@main.command()
@click.option("--min-segments", default=2, show_default=True, type=click.IntRange(2),
              help="Merge only when at least this many small segments are there.")
@click.option("--grace", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a replaced segment is kept for the queries still reading it.")
@click.pass_context
def compact(ctx, min_segments, grace):
    """Merge the small segments that ingests added into one sorted segment (a server does this
    in the background every IMAGING_COMMONS_COMPACT_EVERY seconds); no version changes. Also
    writes what an archive of an earlier release lacks: each segment's key orders and
    granules, and each version's instance counts."""
    from .core.compaction import compact as run_compaction

    click.echo(run_compaction(_commons(ctx).catalog, min_segments=min_segments,
                              grace_s=grace).line())


@main.command()
@click.pass_context
def versions(ctx):
    """List the published data versions."""
    for v in _commons(ctx).catalog.versions():
        click.echo(f"{v.label}\t{v.date_active}\t{'active' if v.active else ''}")


# ----- serving -----------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.pass_context
def serve(ctx, host, port):
    """Serve the IDC API v1 (/v1, Swagger at /v1/swagger), the NBIA API (/nbia-api) and
    DICOMweb QIDO-RS (/dicomweb)."""
    import uvicorn

    from .api.app import create_app

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler
    # it found: this one turns it into a normal exit, so the exit handlers run (they remove
    # the process's scratch files) and the status still says SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    uvicorn.run(create_app(_archive(ctx)), host=host, port=port, log_level="info")


@main.command()
@click.option("--serve", "then_serve", is_flag=True, help="Serve the archive afterwards.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.pass_context
def demo(ctx, then_serve, port):
    """Build the demo archive on first run (IDC catalogue + pydicom's sample files)."""
    from .core.demo import build_demo

    build_demo(_commons(ctx), echo=click.echo)
    if then_serve:
        ctx.invoke(serve, port=port)


# ----- accounts ----------------------------------------------------------------------------
@main.group()
def users():
    """Manage user accounts and collection grants."""


@users.command("add")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--email")
@click.option("--admin", is_flag=True, help="Administrators see every restricted collection.")
@click.pass_context
def users_add(ctx, username, password, email, admin):
    """Create a user."""
    _commons(ctx).accounts.add_user(username, password, email=email, is_admin=admin)
    click.echo(f"user {username} created")


@users.command("password")
@click.argument("username")
@click.option("--password", prompt="New password", hide_input=True, confirmation_prompt=True)
@click.pass_context
def users_password(ctx, username, password):
    """Set a user's password; the user's tokens stop working (signed out everywhere)."""
    _commons(ctx).accounts.set_password(username, password)
    click.echo(f"password of {username} changed; their tokens are revoked")


@users.command("delete")
@click.argument("username")
@click.pass_context
def users_delete(ctx, username):
    """Delete a user with their tokens, grants and cohorts (shared lists they made stay)."""
    if not _commons(ctx).accounts.delete_user(username):
        raise NotFound(f"No user {username}")
    click.echo(f"user {username} deleted")


@users.command("list")
@click.pass_context
def users_list(ctx):
    """List users."""
    accounts = _commons(ctx).accounts
    for u in accounts.list_users():
        grants = ",".join(sorted(accounts.granted_collections(u)))
        click.echo(f"{u.username}\t{'admin' if u.is_admin else ''}\t{grants}")


@users.command("grant")
@click.argument("username")
@click.argument("collection")
@click.pass_context
def users_grant(ctx, username, collection):
    """Let a user see a restricted collection."""
    from .core.catalog import normalise_collection_id

    _commons(ctx).accounts.grant(username, normalise_collection_id(collection))
    click.echo(f"{username} may now see {normalise_collection_id(collection)}")


@users.command("revoke")
@click.argument("username")
@click.argument("collection")
@click.pass_context
def users_revoke(ctx, username, collection):
    """Take a restricted collection away from a user."""
    from .core.catalog import normalise_collection_id

    if not _commons(ctx).accounts.revoke_grant(username, normalise_collection_id(collection)):
        raise NotFound(f"{username} had no grant for {collection}")
    click.echo("revoked")


@main.group()
def cohorts():
    """Manage saved cohorts."""


@cohorts.command("share")
@click.argument("cohort_id", type=int)
@click.argument("username")
@click.option("--owner", required=True, help="The cohort's owner (who shares it).")
@click.pass_context
def cohorts_share(ctx, cohort_id, username, owner):
    """Give USERNAME read access (READER) to a cohort."""
    accounts = _commons(ctx).accounts
    owner_user = accounts.get_user(owner)
    if owner_user is None:
        raise NotFound(f"no such user: {owner}", not_found=[owner])
    accounts.share_cohort(owner_user, cohort_id, username)
    click.echo(f"cohort {cohort_id} shared with {username} (READER)")


@main.command()
@click.option("--server", default="http://127.0.0.1:8000", show_default=True)
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True)
@click.option("--credentials-file", type=click.Path(dir_okay=False),
              default=lambda: str(Path.home() / ".idc_credentials"),
              show_default="~/.idc_credentials")
def login(server, username, password, credentials_file):
    """Get a token and write the credentials file the IDC notebooks read
    (token_response.id_token)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode({"username": username, "password": password,
                                   "grant_type": "password", "client_id": "imaging-commons"})
    try:
        with urllib.request.urlopen(f"{server.rstrip('/')}/nbia-api/oauth/token",
                                    data=data.encode(), timeout=30) as resp:
            token = json.load(resp)
    except urllib.error.HTTPError as e:
        _fail(f"login refused ({e.code}): check the user name and password")
    except urllib.error.URLError as e:
        _fail(f"cannot reach {server}: {e.reason}")
    creds = {"token_response": {"id_token": token["access_token"], **token}}
    path = Path(credentials_file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=1)
    click.echo(f"credentials written to {path} (valid {token['expires_in']} s)")


if __name__ == "__main__":
    main()
