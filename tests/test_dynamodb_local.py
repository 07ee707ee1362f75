"""DynamoDB Local: the script in local/ and the fixtures in tests/dynamodb.py, with real boto3."""

# ruff: noqa: F811 - the fixtures imported from dynamodb are parameters of the tests

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from dynamodb import (  # noqa: F401 - fixtures
    DynamoDBEnv,
    DynamoDBLocal,
    DynamoDBLocalError,
    dynamodb_env,
    dynamodb_local,
    restartable_dynamodb,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "local" / "dynamodb_local.py"
FAST = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})


def client(endpoint: str | None = None, **kwargs: Any) -> Any:
    """A DynamoDB client; without arguments it is configured by the environment only."""
    if endpoint is None:
        endpoint = os.environ["DYNAMODB_ENDPOINT"]
    return boto3.client("dynamodb", endpoint_url=endpoint, config=FAST, **kwargs)


def create_table(ddb: Any, name: str) -> None:
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1})


def test_env_fixture_points_boto3_at_dynamodb_local(
    dynamodb_env: DynamoDBEnv, dynamodb_local: DynamoDBLocal
) -> None:
    assert dynamodb_env.endpoint == dynamodb_local.endpoint
    assert dynamodb_env.endpoint.startswith("http://127.0.0.1:")
    assert dynamodb_env.table.startswith("berry-test-")
    for name, value in dynamodb_env.env.items():
        assert os.environ[name] == value
    assert os.environ["BERRY_STATE_STORE"] == "dynamodb"
    assert os.environ["BERRY_STATE_TABLE"] == dynamodb_env.table

    ddb = client()  # region and credentials from the env the fixture set
    create_table(ddb, dynamodb_env.table)
    ddb.put_item(TableName=dynamodb_env.table, Item={"pk": {"S": "a"}, "n": {"N": "1"}})
    ddb.update_item(
        TableName=dynamodb_env.table,
        Key={"pk": {"S": "a"}},
        UpdateExpression="ADD n :d",
        ExpressionAttributeValues={":d": {"N": "41"}},
    )
    item = ddb.get_item(TableName=dynamodb_env.table, Key={"pk": {"S": "a"}}, ConsistentRead=True)
    assert item["Item"] == {"pk": {"S": "a"}, "n": {"N": "42"}}


def test_each_test_gets_a_fresh_table_on_the_shared_server(
    dynamodb_env: DynamoDBEnv, dynamodb_local: DynamoDBLocal
) -> None:
    names = client().list_tables()["TableNames"]
    assert dynamodb_env.table not in names
    assert dynamodb_local.running


def test_tables_are_shared_across_credentials_and_regions(dynamodb_env: DynamoDBEnv) -> None:
    """-sharedDb: a Berry process with other credentials or region sees the same tables."""
    create_table(client(), dynamodb_env.table)
    other = client(
        dynamodb_env.endpoint,
        region_name="eu-west-3",
        aws_access_key_id="someoneelse",
        aws_secret_access_key="whatever",
    )
    assert dynamodb_env.table in other.list_tables()["TableNames"]


def test_restart_keeps_data_and_port(restartable_dynamodb: DynamoDBLocal) -> None:
    server = restartable_dynamodb
    endpoint, port, pid = server.endpoint, server.port, server.pid
    ddb = client(
        endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    create_table(ddb, "outage")
    ddb.put_item(TableName="outage", Item={"pk": {"S": "kept"}})

    server.restart()

    assert (server.endpoint, server.port) == (endpoint, port)
    assert server.running and server.pid != pid
    item = ddb.get_item(TableName="outage", Key={"pk": {"S": "kept"}}, ConsistentRead=True)
    assert item["Item"] == {"pk": {"S": "kept"}}


def test_stop_makes_connections_fail_and_is_idempotent(
    restartable_dynamodb: DynamoDBLocal,
) -> None:
    server = restartable_dynamodb
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_install_prints_the_lib_dir() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "install"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lib_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (lib_dir / "DynamoDBLocal.jar").is_file()
    assert (lib_dir / "DynamoDBLocal_lib").is_dir()


def _read_env_line(process: subprocess.Popen[str], timeout: float = 60) -> dict[str, str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "DYNAMODB_ENDPOINT=" in line:
            return dict(pair.split("=", 1) for pair in line.split())
    raise AssertionError(f"no env line from the CLI (exit code {process.poll()})")


def test_cli_start_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "start", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        env = _read_env_line(process)
        assert env["BERRY_STATE_STORE"] == "dynamodb"
        assert env["BERRY_STATE_TABLE"] == "berry-state"
        ddb = client(
            env["DYNAMODB_ENDPOINT"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        assert ddb.list_tables()["TableNames"] == []
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        port = int(env["DYNAMODB_ENDPOINT"].rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (orphans may wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_the_python_process_that_started_it() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from dynamodb_local import DynamoDBLocal; "
        "s = DynamoDBLocal().start(); print(s.pid, s.log_path, flush=True); "
        "import time; time.sleep(120)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT / "local")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid_text, log_path = parent.stdout.readline().split(maxsplit=1)
        java_pid = int(pid_text)
        Path(log_path.strip()).unlink(missing_ok=True)  # nobody will stop() it cleanly
        assert _alive(java_pid)
        parent.kill()  # SIGKILL: no atexit, no stop(); only the kernel can clean up
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not _alive(java_pid):
                return
            time.sleep(0.05)
        os.kill(java_pid, signal.SIGKILL)
        pytest.fail("DynamoDB Local outlived the Python process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_start_on_a_busy_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DynamoDBLocalError, match=f"port {port} is already in use"):
            DynamoDBLocal(port=port, db_path=tmp_path / "data").start()
