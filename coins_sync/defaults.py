"""The default of every safety setting, written once.

Settings, the rule loader, the schema and the plan's safety rules all read these, so a
default can never differ between the setting a user leaves out and the check that
enforces it. The shipped ``coins_sync/schemas/rules.schema.json`` repeats
:data:`MAX_AMOUNT` for editors; ``tests/test_defaults.py`` holds the two equal.
"""

from __future__ import annotations

from typing import Final

#: Amounts above this are refused by validate and by every plan (``max_amount``).
MAX_AMOUNT: Final = 10_000
#: Rule files larger than this are refused before parsing (``max_file_bytes``).
MAX_FILE_BYTES: Final = 10 * 1024 * 1024
#: A plan updating more than this share of the managed entries is refused...
UPDATE_THRESHOLD: Final = 0.3
#: ...once at least this many entries are managed (``update_threshold_min_entries``).
UPDATE_THRESHOLD_MIN_ENTRIES: Final = 10
#: Requests in flight during apply and refresh (``parallelism``).
PARALLELISM: Final = 8
#: Seconds the pauses for the server's rate limit (429) may add up to in one run.
MAX_WAIT: Final = 600.0
#: Seconds to wait for a connection to the API, and for each answer.
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 30.0
#: Seconds to wait for the state lock (0: fail at once, naming the holder).
LOCK_TIMEOUT: Final = 0.0
#: Apply folds its journal into the state after this many results.
FOLD_EVERY: Final = 500
