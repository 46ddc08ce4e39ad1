"""The core's front door: `Commons`, one object per archive that the HTTP adapters and the CLI
call. It holds the catalogue, the result store, keyset pages, page tokens, accounts and search,
and applies the visibility rule (visibility.py) to every answer it gives a caller."""

from __future__ import annotations

from functools import cached_property

from ..config import Archive
from .accounts import Accounts, User
from .catalog import Catalog, NothingPublished
from .descriptions import AnalysisResult, Collection, DataVersion, Descriptions, ListedAttribute
from .dicom_query import DicomQuery, Found
from .dicom_query import search as dicom_search
from .keyset import KeysetPages
from .pages import AnyPage, Pager
from .paging import PageTokens
from .query import Compiled
from .results import ResultStore
from .sign_ins import SignInThrottle
from .visibility import hidden_collections


class Commons:
    def __init__(self, archive: Archive):
        self.archive = archive
        self.catalog = Catalog(archive)
        self.results = ResultStore(self.catalog)
        self.keyset = KeysetPages(self.catalog)
        self.pager = Pager(self.catalog, self.results, self.keyset)
        self.descriptions = Descriptions(self.catalog)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.archive.database_url, token_lifetime_s=self.archive.token_lifetime_s)

    @cached_property
    def sign_ins(self) -> SignInThrottle:
        return SignInThrottle(self.archive.login_free_failures, self.archive.login_max_delay_s)

    def sign_in(self, username: str, password: str, address: str | None) -> User | None:
        """The user a password signs in, or None; raises TooManyAttempts, unchecked, while
        the name or the caller's address must wait after too many wrong passwords."""
        self.sign_ins.check(username, address)
        user = self.accounts.authenticate(username, password)
        if user is None:
            self.sign_ins.failed(username, address)
        else:
            self.sign_ins.succeeded(username)
        return user

    @cached_property
    def search(self):
        """The NBIA search core; its per-version indexes are built once per process."""
        from .search import CatalogSearch

        return CatalogSearch(self)

    def warm_up(self) -> None:
        """Open the active version's search index before the first request needs it (a server
        calls this in the background at start). Also run one query with a parameter: DuckDB's
        first imports pandas (~0.2 s), which the first request would otherwise wait for."""
        self.catalog.connection().execute("SELECT ?::INTEGER", [0]).fetchall()
        try:
            self.search.index(self.catalog.active_version())
        except NothingPublished:
            return  # nothing published yet: nothing to warm

    @cached_property
    def tokens(self) -> PageTokens:
        return PageTokens(self.archive.secret(), self.accounts)

    def hidden_collections(self, user: User | None, version: int) -> frozenset[str]:
        """Restricted collections of a version that the caller has no grant for."""
        return hidden_collections(self.catalog, self.accounts, user, version)

    # ----- what the archive tells of itself -------------------------------------------------
    def versions(self) -> list[DataVersion]:
        return self.descriptions.versions()

    def collections(self, version: int, user: User | None) -> list[Collection]:
        """Collections of a version the caller may see."""
        return self.descriptions.collections(version, self.hidden_collections(user, version))

    def analysis_results(self, version: int) -> list[AnalysisResult]:
        return self.descriptions.analysis_results(version)

    def attributes(self, version: int) -> list[ListedAttribute]:
        return self.descriptions.attributes(version)

    def find_dicom(self, query: DicomQuery, user: User | None) -> Found:
        """The studies, series or instances of the active version a DICOM query matches, as
        the caller may see them."""
        version = self.catalog.active_version()
        return dicom_search(self.catalog, version, query, self.hidden_collections(user, version))

    # ----- paged requests ---------------------------------------------------------------------
    def compile_state(self, state: dict, user: User | None) -> Compiled:
        """A paged request's state compiled for this caller (see Pager.compile)."""
        return self.pager.compile(state, self.hidden_collections(user, state["version"]))

    def page(self, state: dict, user: User | None, page_size: int,
             deadline_s: float | None) -> AnyPage:
        """One page of a paged request as this caller may see it (see Pager.page)."""
        return self.pager.page(state, self.hidden_collections(user, state["version"]),
                               page_size, deadline_s)
