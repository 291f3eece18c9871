"""The `orchestrator` command as users run it: a subprocess against a real database."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

from orchestrator.settings import from_env

from . import pg


def run(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "NO_COLOR": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2  # argparse prints its usage line above the error
    for fragment in fragments:
        assert fragment in result.stderr


def test_grant_submit_status_jobs_and_audit_work_end_to_end(db_url: str):
    """The ledger commands do what they say, and the audit reports clean."""
    assert "balance 5" in run(db_url, "grant", "alice", "5").stdout
    assert "balance 8" in run(db_url, "grant", "alice", "3", "--plan", "pro").stdout
    job_id = uuid.UUID(
        run(db_url, "submit", "alice", "a lighthouse", "--outputs", "2").stdout.strip()
    )
    again = run(db_url, "submit", "alice", "a lighthouse", "--idempotency-key", "k1").stdout.strip()
    assert (
        run(db_url, "submit", "alice", "a lighthouse", "--idempotency-key", "k1").stdout.strip()
        == again
    )
    status = json.loads(run(db_url, "status", str(job_id), "--json").stdout)
    assert status["status"] == "queued"
    assert status["num_outputs"] == 2
    listed = [
        json.loads(line)
        for line in run(db_url, "jobs", "--user", "alice", "--json").stdout.splitlines()
    ]
    assert {row["id"] for row in listed} == {str(job_id), again}
    assert all("prompt" not in row for row in listed)
    accounts = json.loads(run(db_url, "accounts", "--user", "alice", "--json").stdout)
    assert accounts["balance"] == 8
    assert accounts["plan"] == "pro"
    # No daemon runs here: both jobs wait, and the account says for how long.
    assert accounts["jobs_by_status"] == {"queued": 2}
    assert 0 < accounts["oldest_queued_s"] < 60
    assert "queued for" in run(db_url, "accounts").stdout
    audit = run(db_url, "audit")
    assert "audit clean" in audit.stdout
    assert json.loads(run(db_url, "audit", "--json").stdout)["ok"] is True


def test_cancel_reports_whether_it_took(db_url: str):
    """A queued job's cancel is recorded; an unknown job is a one-line error."""
    run(db_url, "grant", "bob", "1")
    job_id = run(db_url, "submit", "bob", "x").stdout.strip()
    assert "requested" in run(db_url, "cancel", job_id).stdout
    assert_one_line_error(run(db_url, "cancel", str(uuid.uuid4()), check=False), "unknown job")


def test_an_adjustment_moves_the_balance_through_the_ledger(db_url: str):
    """`adjust` is the operator's manual correction, never a raw UPDATE."""
    run(db_url, "grant", "carol", "5")
    assert "balance 3" in run(db_url, "adjust", "carol", "-2", "--note", "chargeback").stdout
    assert_one_line_error(
        run(db_url, "adjust", "carol", "-9", "--note", "too much", check=False),
        "IntegrityViolation",
    )
    assert "audit clean" in run(db_url, "audit").stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("submit", "ghost", "boo"), ("unknown user ghost",)),
        (("status", "not-a-uuid"), ("not a job id",)),
        (("grant", "dave", "-5"), ("credits must be positive",)),
        (("grant", "dave", "lots"), ("not a whole number",)),
        (("grant", "dave", "5", "--plan", "platinum"), ("unknown plan",)),
        (("submit", "dave", "x", "--params", "[1, 2]"), ("JSON object",)),
        (("submit", "dave", "x", "--params", "{nope"), ("not valid JSON",)),
        (("status", "00000000-0000-0000-0000-000000000000"), ("unknown job",)),
    ],
)
def test_bad_input_is_a_clear_one_line_error(
    db_url: str, args: tuple[str, ...], fragments: tuple[str, ...]
):
    """Bad input gets a message that says what is wrong, never a traceback."""
    assert_one_line_error(run(db_url, *args, check=False), *fragments)


def test_audit_exits_1_and_names_the_violation(db_url: str):
    """A corrupted balance makes `orchestrator audit` fail loudly."""
    run(db_url, "grant", "erin", "5")
    pg.fetch_sync(db_url, "UPDATE orchestrator.accounts SET balance = 50 WHERE user_id = 'erin'")
    result = run(db_url, "audit", check=False)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "every balance equals the sum of its ledger rows" in result.stdout
    assert "audit FAILED" in result.stdout


def test_commands_refuse_a_database_without_the_schema(server_url: str):
    """Without `migrate`, commands say what to do instead of failing on a missing table."""
    name = f"orch_empty_{uuid.uuid4().hex[:8]}"
    pg.fetch_sync(server_url, f"CREATE DATABASE {name}")
    try:
        url = pg.with_database(server_url, name)
        assert_one_line_error(run(url, "jobs", check=False), "orchestrator migrate")
        assert "current" in run(url, "migrate").stdout
        assert run(url, "jobs").returncode == 0
    finally:
        pg.fetch_sync(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_an_unreachable_database_is_a_one_line_error():
    """A wrong DATABASE_URL is reported, not dumped as a traceback."""
    result = run("postgresql://nobody@127.0.0.1:1/none", "jobs", check=False)
    assert_one_line_error(result, "DbUnavailable")


def test_the_daemon_reports_a_busy_http_port_in_one_line(db_url: str):
    """Start-up failures name what to change instead of dumping a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            "ORCHESTRATOR_HTTP_PORT": str(port),
            "REPLICATE_API_BASE": "http://127.0.0.1:9",
        }
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "run"],
            env={**os.environ, "DATABASE_URL": db_url, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_webhooks_without_a_secret_refuse_to_start_unless_unsigned_is_explicit(db_url: str):
    """A forgeable webhook endpoint is never opened by accident."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "ORCHESTRATOR_PUBLIC_URL": "https://orchestrator.example",
        "ORCHESTRATOR_HTTP_PORT": "0",
        "REPLICATE_API_BASE": "http://127.0.0.1:9",
    }
    env.pop("ORCHESTRATOR_WEBHOOK_SECRET", None)
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "ORCHESTRATOR_WEBHOOK_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("not-a-secret", "whsec_"),
        ("whsec_" + base64.b64encode(b"short-but-valid").decode(), "it holds 15"),
        ("whsec_!!!not base64!!!", "not base64"),
        ("whsec_", "it holds 0"),
    ],
)
def test_a_weak_or_malformed_webhook_secret_refuses_to_start_in_one_line(
    db_url: str, secret: str, why: str
):
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "ORCHESTRATOR_PUBLIC_URL": "https://orchestrator.example",
        "ORCHESTRATOR_HTTP_PORT": "0",
        "ORCHESTRATOR_WEBHOOK_SECRET": secret,
        "REPLICATE_API_BASE": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "ORCHESTRATOR_WEBHOOK_SECRET" in line
    assert why in line
    if len(secret) > len("whsec_"):
        assert secret.removeprefix("whsec_") not in line


def test_a_secret_of_24_random_bytes_is_accepted():
    secret = "whsec_" + base64.b64encode(b"\x01" * 24).decode()
    assert from_env({"ORCHESTRATOR_WEBHOOK_SECRET": secret}).webhook_secret == secret


def test_every_simulator_knob_is_a_documented_flag_with_the_configs_default():
    """`simulate-provider` flags come from `SimulatorConfig`: none missing, none without help."""
    import attrs  # noqa: PLC0415

    from orchestrator.cli import build_parser  # noqa: PLC0415
    from orchestrator.simulator import SimulatorConfig, simulator_config  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(["simulate-provider"])
    assert simulator_config(args) == SimulatorConfig()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    flags = {action.dest: action for action in sub.choices["simulate-provider"]._actions}
    for field in attrs.fields(SimulatorConfig):
        assert field.name in flags, field.name
        assert flags[field.name].help, field.name
        assert "default" in flags[field.name].help
    chosen = parser.parse_args(
        ["simulate-provider", "--latency", "1", "2", "--hang-rate", "0.5", "--api", "kie"]
    )
    config = simulator_config(chosen)
    assert (config.latency, config.hang_rate, config.api) == ((1.0, 2.0), 0.5, "kie")
    shown = run("postgresql://unused", "simulate-provider", "--help").stdout
    assert "--webhook-failure-rate" in shown
    assert "Share of delivery attempts dropped" in shown


def test_every_argument_of_every_command_says_what_it_is_for():
    """`--help` is the manual: no subcommand, positional or flag goes without help text."""
    import argparse  # noqa: PLC0415

    from orchestrator.cli import build_parser  # noqa: PLC0415

    missing = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions}
                for name, child in action.choices.items():
                    if name not in helped:
                        missing.append((*path, name))
                    walk(child, (*path, name))
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append((*path, action.dest))

    walk(build_parser(), ())
    assert missing == []
    assert len(build_parser()._actions) > 2


def _results(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_submit_file_prints_one_result_per_line_and_fails_if_any_did(db_url: str, tmp_path):
    """JSON lines in, one JSON result out per job line, in order; exit 3 when one was refused."""
    run(db_url, "grant", "kim", "5")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"user_id": "kim", "prompt": "a lamp", "idempotency_key": "a"}\n'
        "\n"
        '{"user_id": "nobody", "prompt": "a lamp"}\n'
        "{not json\n"
        '{"user_id": "kim", "prompt": "a desk", "num_outputs": 2}\n'
        '{"user_id": "kim", "prompt": "a nul \\u0000"}\n'
        '{"user_id": "kim", "prompt": "half \\udcff"}\n'
        '{"user_id": "kim", "prompt": "a rug"}\n'
    )
    result = run(db_url, "submit", "--file", str(jobs), check=False)
    assert result.returncode == 3, result.stderr
    lines = _results(result.stdout)
    assert [line["line"] for line in lines] == [1, 3, 4, 5, 6, 7, 8]
    assert [line.get("error") for line in lines] == [
        None,
        "UnknownUser",
        "InvalidRequest",
        None,
        "InvalidRequest",
        "InvalidRequest",
        None,
    ]
    assert "NUL" in str(lines[4]["message"])
    assert "unknown user nobody" in str(lines[1]["message"])
    first, desk = str(lines[0]["job_id"]), str(lines[3]["job_id"])
    status = json.loads(run(db_url, "status", desk, "--json").stdout)
    assert (status["status"], status["num_outputs"], status["retry_of"]) == ("queued", 2, None)

    good = '{"user_id": "kim", "prompt": "a lamp", "idempotency_key": "a"}\n'
    env = {**os.environ, "DATABASE_URL": db_url, "NO_COLOR": "1"}
    again = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "submit", "--file", "-"],
        input=good * 2,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert [line["job_id"] for line in _results(again.stdout)] == [first, first]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("submit",), ("USER and PROMPT are required", "--file")),
        (("submit", "kim"), ("USER and PROMPT are required",)),
        (("submit", "kim", "x", "--file", "-"), ("cannot be given with it", "USER, PROMPT")),
        (("submit", "--file", "-", "--wait"), ("--wait cannot be given with it",)),
        (("submit", "--file", "/nonexistent/jobs.jsonl"), ("not a readable file",)),
        (("retry", "not-a-uuid"), ("not a job id",)),
        (("retry", "00000000-0000-0000-0000-000000000000"), ("unknown job",)),
    ],
)
def test_submit_and_retry_refuse_bad_arguments_in_one_line(
    db_url: str, args: tuple[str, ...], fragments: tuple[str, ...]
):
    assert_one_line_error(run(db_url, *args, check=False), *fragments)


def test_retry_makes_one_linked_job_and_refuses_what_did_not_fail(db_url: str):
    """A double retry prints the same id; --again a new one; a queued job is refused clearly."""
    run(db_url, "grant", "lee", "5")
    queued = run(db_url, "submit", "lee", "a vase").stdout.strip()
    refused = run(db_url, "retry", queued, check=False)
    assert_one_line_error(refused, "is queued: only a failed or timed-out job can be retried")
    failed = uuid.UUID(run(db_url, "submit", "lee", "a jug").stdout.strip())
    pg.fetch_sync(db_url, "SELECT * FROM orchestrator.admit_job_v3($1, 60, NULL, NULL)", failed)
    pg.fetch_sync(
        db_url,
        "SELECT * FROM orchestrator.finish_job_v4($1, 'failed', 'UPSTREAM_ERROR', 'x',"
        " NULL, NULL, NULL)",
        failed,
    )

    new = run(db_url, "retry", str(failed)).stdout.strip()
    assert run(db_url, "retry", str(failed)).stdout.strip() == new
    again = run(db_url, "retry", str(failed), "--again").stdout.strip()
    assert again not in {new, str(failed)}
    status = json.loads(run(db_url, "status", new, "--json").stdout)
    assert (status["status"], status["retry_of"]) == ("queued", str(failed))
    shown = run(db_url, "status", new).stdout.splitlines()
    assert any("retry_of" in line and str(failed) in line for line in shown)
    both = run(db_url, "retry", str(failed), "--again", "--idempotency-key", "k", check=False)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
