"""Accounts shared by the IDC-API and NBIA-REST front ends, in one transactional store
(SQLite or PostgreSQL): users and passwords (`users`), bearer tokens (`tokens`), collection
grants (`grants`), saved cohorts (`cohorts`), shared carts (`carts`) and the paging states too
large for a next_page token (`page_states`). `Accounts` (`store`) is all of them over one
database."""

from .carts import SharedList
from .cohorts import MAX_COHORT_ID, OWNER, READER, Cohort, CohortDeletion
from .store import Accounts
from .tokens import InvalidToken, TokenPair
from .users import GUEST_USERNAME, User

__all__ = ["GUEST_USERNAME", "MAX_COHORT_ID", "OWNER", "READER", "Accounts", "Cohort",
           "CohortDeletion", "InvalidToken", "SharedList", "TokenPair", "User"]
