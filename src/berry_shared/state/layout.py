"""Where things live in the state table (``pk``, ``sk`` strings; TTL attribute ``ttl``).

pk="backend"          sk=<provider:model>  opened_at, trial_until   (control: conditional)
pk="backend"          sk="~rollup"         at, n, b, rate, lease, lease_by, v (map)
pk="stats#<shard>"    sk=<provider:model>  conf, requests, failures, consec, batches (ADD);
                                           last_success_at, last_failure_at, last_error,
                                           latency_ms, latency_at, cooldown_until (SET)
pk="<pk>#<shard>"     sk=<sk>              any counters added with add_counters
pk="receipt#<token>"  sk="-"               one per applied batch, expires after 2 days
pk="rate#<user>"      sk=<window>#<index>  c (requests counted in that window)
pk="usage#<shard>"    sk=<day>#<user>#<model>  requests, prompt, completion, cached, cost
                                           (ADD; user and model also as attributes), 400 days
pk="limits#<shard>"   sk=spend#<month>#<user>  v: nano-dollars spent (budgets)
                      sk=tokens#<window>#<index>#<user>  v: tokens (token limits)
                                           both summed into the rollup, whole-fleet
"""

from __future__ import annotations

import time

from .counters import AttributeValue, number

CONTROL_PK = "backend"
STATS_PK = "stats"
USAGE_PK = "usage"
LIMITS_PK = "limits"
# Usage is kept about 400 days; a month's spend until the month after it has ended.
USAGE_TTL_SECONDS = 400 * 86400
SPEND_TTL_SECONDS = 62 * 86400


def usage_sk(day: str, user_id: str, model_key: str) -> str:
    return f"{day}#{user_id}#{model_key}"


def spend_sk(month: str, user_id: str) -> str:
    return f"spend#{month}#{user_id}"


def tokens_sk(window: int, index: int, user_id: str) -> str:
    return f"tokens#{window}#{index}#{user_id}"


def limit_is_current(sk: str, month: str, now: float) -> bool:
    """Whether a limits item still matters: this month's spend, or the current and the
    previous fixed window of a token limit (what a sliding window reads)."""
    kind, _, rest = sk.partition("#")
    if kind == "spend":
        return rest.startswith(month + "#")
    if kind == "tokens":
        window, _, rest = rest.partition("#")
        index, _, _ = rest.partition("#")
        if window.isdigit() and index.isdigit():
            return int(index) >= int(now // int(window)) - 1
    return False


# Backend items are kept 30 days after their last write (TTL); rate windows and receipts
# have their own, shorter expiry.
ITEM_TTL_SECONDS = 30 * 86400


def item_ttl() -> AttributeValue:
    return number(int(time.time() + ITEM_TTL_SECONDS))
