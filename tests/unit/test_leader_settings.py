"""Leader-election settings: read from the environment, timings checked at start, the Lease's namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from slipway.clients.leader import LeaseConfig, default_identity, micro_now
from slipway.settings import Settings


def test_election_is_off_without_a_lease_name() -> None:
    assert Settings.from_env({}).leader_election_lease == ""


def test_the_chart_environment_is_read() -> None:
    s = Settings.from_env(
        {
            "SLIPWAY_LEADER_ELECTION_LEASE": "r-slipway",
            "SLIPWAY_LEADER_ELECTION_NAMESPACE": "ops",
            "SLIPWAY_LEASE_DURATION_SECONDS": "20",
            "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": "12",
            "SLIPWAY_LEASE_RETRY_PERIOD_SECONDS": "3",
            "SLIPWAY_POD_NAME": "r-slipway-7d9-abcde",
        }
    )
    assert (s.leader_election_lease, s.lease_namespace(), s.lease_duration_seconds) == ("r-slipway", "ops", 20)
    assert (s.lease_renew_deadline_seconds, s.lease_retry_period_seconds, s.pod_name) == (12, 3, "r-slipway-7d9-abcde")


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"), [("10", "10", "2"), ("15", "20", "2"), ("15", "10", "9"), ("15", "2.3", "2")]
)
def test_timings_that_could_give_two_leaders_are_refused(duration: str, deadline: str, retry: str) -> None:
    env = {
        "SLIPWAY_LEASE_DURATION_SECONDS": duration,
        "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": deadline,
        "SLIPWAY_LEASE_RETRY_PERIOD_SECONDS": retry,
    }
    with pytest.raises(ValidationError, match="lease timings"):
        Settings.from_env(env)
    with pytest.raises(ValueError, match="leaseDuration > renewDeadline"):
        LeaseConfig("l", "ns", "me", float(duration), float(deadline), float(retry))


def test_the_lease_namespace_falls_back_to_the_pod_then_the_service_account(tmp_path: Path) -> None:
    assert Settings.from_env({"SLIPWAY_POD_NAMESPACE": "slipway-system"}).lease_namespace(str(tmp_path)) == (
        "slipway-system"
    )
    assert Settings.from_env({}).lease_namespace(str(tmp_path)) == "default"
    (tmp_path / "namespace").write_text("from-token\n")
    assert Settings.from_env({}).lease_namespace(str(tmp_path)) == "from-token"


def test_identities_differ_per_process_and_times_carry_microseconds() -> None:
    a, b = default_identity("pod-1"), default_identity("pod-1")
    assert a != b and a.startswith("pod-1_") and b.startswith("pod-1_")
    assert micro_now().microsecond > 0
