"""Installs never cross (issue #22): queue names and poller identities, pure."""

from __future__ import annotations

import pytest

from agentexec.settings import Settings, SettingsError, load_settings
from agentexec.temporal.queues import (
    ACTIVITY,
    WORKFLOW,
    Foreign,
    build_foreign,
    owned_by,
    queues_to_check,
    worker_identity,
)


def test_the_default_install_keeps_the_names_every_release_before_used() -> None:
    settings = load_settings({})
    assert (settings.install, settings.task_queue, settings.runner_task_queue) == (
        "agentexec",
        "agentexec-executions",
        "agentexec-runner",
    )
    assert Settings().task_queue == "agentexec-executions"


def test_queues_derive_from_the_install_unless_named() -> None:
    settings = load_settings({"AGENTEXEC_INSTALL": "team-a.aex"})
    assert (settings.task_queue, settings.runner_task_queue) == (
        "team-a.aex-executions",
        "team-a.aex-runner",
    )
    named = load_settings({"AGENTEXEC_INSTALL": "team-a.aex", "AGENTEXEC_TASK_QUEUE": "mine"})
    assert (named.task_queue, named.runner_task_queue) == ("mine", "team-a.aex-runner")
    drain = load_settings({"AGENTEXEC_DRAIN_TASK_QUEUES": "agentexec-executions, old"})
    assert drain.drain_task_queues == ("agentexec-executions", "old")


@pytest.mark.parametrize("value", ["a:b", "a/b", "has space", "-lead", "x" * 152])
def test_an_install_name_that_would_break_identities_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="AGENTEXEC_INSTALL: must be 1 to 151"):
        load_settings({"AGENTEXEC_INSTALL": value})


def test_pollers_are_ours_when_their_identity_starts_with_the_install() -> None:
    settings = load_settings({"AGENTEXEC_INSTALL": "ns.rel"})
    mine = worker_identity(settings, "runner", "pod-1:7")
    assert mine == "ns.rel:runner:pod-1:7"
    assert owned_by(mine, "ns.rel")
    # A prefix of another install's name is not ours.
    assert not owned_by("ns.rel2:runner:pod:1", "ns.rel")
    assert not owned_by("1234@host", "ns.rel")


def test_foreign_pollers_are_listed_per_queue_and_kind() -> None:
    seen = {
        ("q", WORKFLOW): ["ns.rel:operator:a", "ns.rel:operator:b"],
        ("q", ACTIVITY): ["ns.rel:operator:a", "other.rel:operator:x", "other.rel:operator:x"],
        ("r", ACTIVITY): ["99@laptop"],
    }
    assert build_foreign("ns.rel", seen) == [
        Foreign("q", ACTIVITY, ("other.rel:operator:x",)),
        Foreign("r", ACTIVITY, ("99@laptop",)),
    ]


def test_the_operator_checks_its_workflow_queue_and_its_runner_queue() -> None:
    settings = load_settings({"AGENTEXEC_INSTALL": "ns.rel"})
    assert queues_to_check(settings) == [
        ("ns.rel-executions", WORKFLOW),
        ("ns.rel-executions", ACTIVITY),
        ("ns.rel-runner", ACTIVITY),
    ]
