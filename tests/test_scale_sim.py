"""bench/scale_sim.py, short: ten containers with injected faults lose and double nothing,
and the same run with a store stripped of its idempotency does."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from berry_shared.state.counters import Transaction
from berry_shared.state.dynamo import DynamoStateStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scale_sim import simulate  # noqa: E402

LAST_LINE = re.compile(
    r"containers=(\d+) requests=(\d+) counted=(\d+) lost=(\d+) doubled=(\d+) "
    r"conflicts=(\d+) throttled=(\d+)"
)


async def test_ten_containers_with_faults_lose_and_double_nothing(dynamodb_local) -> None:
    result = await simulate(10, 10, dynamodb_local.endpoint, fault_rate=0.05, seed=11)
    assert result.undrained == 0
    assert result.requests > 50
    assert (result.lost, result.doubled) == (0, 0), result.report
    assert result.counted == result.requests
    assert result.tokens_counted == result.tokens_expected > 0
    assert result.cost_error == pytest.approx(0, abs=1e-9)
    # The faults happened and were survived: not a run that had nothing to lose.
    assert sum(result.injected.values()) > 0
    assert result.conflicts + result.throttled > 0
    match = LAST_LINE.fullmatch(result.last_line)
    assert match is not None
    assert match.group(1, 4, 5) == ("10", "0", "0")


class ForgetfulStore(DynamoStateStore):
    """The store without its kept token and receipt: each retry is a new call (botocore then
    makes up a new token), and a batch still failing after three calls is dropped."""

    def _transact(self, transaction: Transaction) -> None:
        for _ in range(3):
            with contextlib.suppress(Exception):
                self._client.transact_write_items(TransactItems=transaction.items[:-1])
                return


async def test_the_same_faults_break_a_store_without_idempotency(dynamodb_local) -> None:
    """The control: a store that resends without its token and receipt loses or doubles
    counts. Faults are random (a few lost answers per run): up to three runs must show it."""
    for seed in (5, 6, 7):
        result = await simulate(
            4, 5, dynamodb_local.endpoint, fault_rate=0.5, store_class=ForgetfulStore, seed=seed
        )
        assert result.requests > 10
        if result.lost + result.doubled > 0:
            return
    raise AssertionError(f"no count lost or doubled without idempotency:\n{result.report}")


def test_the_command_line_ends_with_the_summary_line(dynamodb_local) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale_sim.py"),
            "--containers",
            "2",
            "--seconds",
            "2",
            "--idle-seconds",
            "0",
            "--rollup-seconds",
            "1",
            "--endpoint",
            dynamodb_local.endpoint,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.rstrip("\n").splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match is not None, last
    assert match.group(1, 4, 5) == ("2", "0", "0")
    assert "| containers | shards |" in run.stdout  # the cost model came first
