"""The hook on kopf's listings (handlers.hook_listings): a re-list after 410 Gone
replaces the caches. kopf has no public hook, so these tests also fail if a
kopf upgrade moves what the hook relies on."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.clients import watching as kopf_watching
from kopf._cogs.structs.references import Resource

from agentexec import handlers
from agentexec.kube import GROUP, LIST_CHUNK, PLURAL, VERSION


def test_kopf_still_lists_through_the_function_the_hook_wraps() -> None:
    assert kopf_watching.Bookmark.LISTED
    # infinite_watch looks continuous_watch up as a module global at each
    # (re-)listing: replacing the module attribute is what the hook does.
    assert "continuous_watch" in kopf_watching.infinite_watch.__code__.co_names


async def test_each_listing_is_reported_complete_with_its_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def obj(name: str, uid: str) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": name, "uid": uid}}

    async def listing_then_events(**_: Any) -> AsyncIterator[Any]:
        yield {"type": None, "object": obj("a", "u1")}
        yield {"type": None, "object": obj("b", "u2")}
        yield kopf_watching.Bookmark.LISTED
        yield {"type": "ADDED", "object": obj("c", "u3")}  # after the listing: not in it

    monkeypatch.setattr(kopf_watching, "continuous_watch", listing_then_events)
    seen: list[tuple[str, str | None, dict[tuple[str, str], str]]] = []
    undo = handlers.hook_listings(lambda *args: seen.append(args))
    try:
        ours = Resource(GROUP, VERSION, PLURAL)
        items = [i async for i in kopf_watching.continuous_watch(resource=ours, namespace="ns")]
        theirs = Resource("", "v1", "pods")
        [i async for i in kopf_watching.continuous_watch(resource=theirs, namespace="ns")]
    finally:
        undo()
    assert len(items) == 4  # every item still reaches kopf
    assert seen == [(PLURAL, "ns", {("ns", "a"): "u1", ("ns", "b"): "u2"})]
    assert kopf_watching.continuous_watch is listing_then_events


async def test_listings_are_paginated_the_first_and_every_re_listing() -> None:
    # kopf lists in pages of settings.watching.chunk_size (None: one unchunked
    # LIST of every object), at start-up and after each 410 Gone alike:
    # both go through fetch_objs from continuous_watch.
    from kopf._cogs.clients import fetching

    settings = kopf.OperatorSettings()
    await handlers.configure(settings=settings)
    assert settings.watching.chunk_size == LIST_CHUNK
    assert "fetch_objs" in kopf_watching.continuous_watch.__code__.co_names
    assert "chunk_size" in inspect.getsource(fetching.fetch_objs)


async def test_a_paged_listing_that_outlived_its_continue_token_lists_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kopf raises a 410 Gone on a stale continue token from its listing, and
    # that stops the whole operator; a 410 on the watch after it is kopf's.
    def gone() -> kopf_errors.APIClientError:
        return kopf_errors.APIClientError("too old", status=410, headers={})

    async def listing_cut_short(**_: Any) -> AsyncIterator[Any]:
        yield {"type": None, "object": {"metadata": {"namespace": "ns", "name": "a", "uid": "u"}}}
        raise gone()

    async def watch_then_gone(**_: Any) -> AsyncIterator[Any]:
        yield kopf_watching.Bookmark.LISTED
        raise gone()

    seen: list[Any] = []
    ours = Resource(GROUP, VERSION, PLURAL)
    for original, raises in ((listing_cut_short, False), (watch_then_gone, True)):
        monkeypatch.setattr(kopf_watching, "continuous_watch", original)
        undo = handlers.hook_listings(lambda *args: seen.append(args))
        try:
            stream = kopf_watching.continuous_watch(resource=ours, namespace="ns")
            if raises:
                with pytest.raises(kopf_errors.APIClientError):
                    [i async for i in stream]
            else:
                assert len([i async for i in stream]) == 1  # ends: infinite_watch lists again
        finally:
            undo()
    assert seen == [(PLURAL, "ns", {})]  # the half listing replaced nothing


async def test_kopf_builds_no_diff_base_for_each_event() -> None:
    # kopf deep-copies every object for a diff base on each event, used by
    # changing handlers only (there are none): the storage builds nothing.
    from kopf._core.reactor import processing

    settings = kopf.OperatorSettings()
    await handlers.configure(settings=settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, handlers.NoDiffBase)
    assert "diffbase_storage" in inspect.getsource(processing._detect_causes)
    body = kopf.Body({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"o": "x" * 4096}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    assert registry_has_no_changing_handlers()


def registry_has_no_changing_handlers() -> bool:
    """What makes the no-op storage and the unremembered memories safe."""
    registry = handlers.registry
    return not any(
        registry._changing.has_handlers(resource=r) or registry._spawning.has_handlers(resource=r)
        for r in (
            Resource(GROUP, VERSION, plural)
            for plural in (PLURAL, *handlers.LISTED_PLURALS, "executionpolicies")
        )
    )
