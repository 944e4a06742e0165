"""The one list of the ``COINS_SYNC_*`` environment variables coins-sync reads.

Secrets come from these variables only, never from files or options; the variables in
:data:`SECRETS` are scrubbed from every output (see :mod:`coins_sync.redact`).
"""

from __future__ import annotations

from typing import Final

#: A ready bearer token for the API (instead of the OAuth four below).
TOKEN: Final = "COINS_SYNC_TOKEN"
#: OAuth password grant: client id and secret (also the AES body key's source), user, password.
CLIENT_ID: Final = "COINS_SYNC_CLIENT_ID"
CLIENT_SECRET: Final = "COINS_SYNC_CLIENT_SECRET"
USERNAME: Final = "COINS_SYNC_USERNAME"
PASSWORD: Final = "COINS_SYNC_PASSWORD"
#: A Cookie header some gateways want.
COOKIE: Final = "COINS_SYNC_COOKIE"
#: The PostgreSQL connection string of a ``backend = "postgres"`` environment.
PG_DSN: Final = "COINS_SYNC_PG_DSN"
#: The environment to use when ``--env`` is not given.
ENV: Final = "COINS_SYNC_ENV"
#: The git branch that holds the state (``git-lease``).
STATE_BRANCH: Final = "COINS_SYNC_STATE_BRANCH"

#: The variables whose values are secret on their own. The client id and user name are
#: not; with the client secret the id forms the Basic value, which is scrubbed too. The
#: DSN's password is scrubbed by the postgres backend, which parses it out.
SECRETS: Final = (TOKEN, CLIENT_SECRET, PASSWORD, COOKIE)
#: The OAuth password grant needs all four.
OAUTH: Final = (CLIENT_ID, CLIENT_SECRET, USERNAME, PASSWORD)
#: Every variable coins-sync reads.
ALL: Final = (
    TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    USERNAME,
    PASSWORD,
    COOKIE,
    PG_DSN,
    ENV,
    STATE_BRANCH,
)
