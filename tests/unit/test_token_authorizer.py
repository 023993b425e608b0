"""TokenAuthorizer's decisions and cache (the real API server's reviews:
tests/e2e/test_secure_metrics.py)."""

from __future__ import annotations

from typing import Any

from agentexec.kube import Kube, KubeError, TokenAuthorizer

USER = {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u1",
        "groups": ["system:serviceaccounts"]}  # fmt: skip


class Reviews:
    """What the API server would answer, and how often it was asked."""

    def __init__(self, authenticated: bool = True, allowed: bool = True) -> None:
        self.authenticated, self.allowed = authenticated, allowed
        self.token_reviews: list[str] = []
        self.access_reviews: list[tuple[str, str]] = []
        self.down = False

    async def create_token_review(self, token: str) -> dict[str, Any]:
        if self.down:
            raise KubeError(503, "unavailable")
        self.token_reviews.append(token)
        return {"authenticated": self.authenticated, "user": USER}

    async def create_access_review(
        self, user: dict[str, Any], verb: str, path: str
    ) -> dict[str, Any]:
        self.access_reviews.append((verb, path))
        return {"allowed": self.allowed}


def authorizer(reviews: Reviews, ttl: float = 10.0) -> TokenAuthorizer:
    fake: Kube = reviews  # type: ignore[assignment]
    return TokenAuthorizer(fake, ttl=ttl)


async def test_allowed_then_cached_per_token_and_path() -> None:
    reviews = Reviews()
    check = authorizer(reviews)
    assert await check("t1", "/metrics") == (200, "allowed")
    assert await check("t1", "/metrics") == (200, "allowed")
    assert reviews.token_reviews == ["t1"]
    assert await check("t1", "/statusz") == (200, "allowed")
    assert reviews.access_reviews == [("get", "/metrics"), ("get", "/statusz")]
    assert all("t1" not in str(key) for key in check._cache)  # a hash, never the token


async def test_unknown_tokens_are_401_and_the_unauthorized_403_naming_who() -> None:
    assert await authorizer(Reviews(authenticated=False))("t", "/metrics") == (
        401, "the token is not valid",
    )  # fmt: skip
    code, why = await authorizer(Reviews(allowed=False))("t", "/statusz")
    assert (code, why) == (403, f"{USER['username']} may not get /statusz")


async def test_an_api_server_that_cannot_answer_is_503_and_not_remembered() -> None:
    reviews = Reviews()
    reviews.down = True
    check = authorizer(reviews)
    assert (await check("t", "/metrics"))[0] == 503
    reviews.down = False
    assert await check("t", "/metrics") == (200, "allowed")


async def test_answers_expire() -> None:
    reviews = Reviews()
    check = authorizer(reviews, ttl=0.0)
    await check("t", "/metrics")
    await check("t", "/metrics")
    assert len(reviews.token_reviews) == 2
