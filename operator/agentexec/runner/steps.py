"""The agent loop's steps, as activities the runners serve: list the tools,
call the model, call a tool. Each is retried on its own by the workflow, and
never run again once it completed (temporal/loop.py).

The model is called through the chat agent's providers (its providers file,
keys and error classes); the tools through the MCP servers the Agent names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity

from agentexec.runner import tools
from agentexec.runner.activity import agent_failure
from agentexec.runner.api import HEARTBEAT_EVERY, AgentFailed
from agentexec.runner.chat import (
    ChatAgent,
    build_chat_call,
    build_completion,
    request_chat,
    usage_of,
)
from agentexec.runner.providers import Provider
from agentexec.temporal.steps import (
    LIST_TOOLS_ACTIVITY,
    MODEL_CALL_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    ListToolsRequest,
    ListToolsResult,
    ModelCallRequest,
    ModelCallResult,
    Tool,
    ToolCallRequest,
    ToolCallResult,
)
from agentexec.temporal.types import AgentRequest

if TYPE_CHECKING:
    from agentexec.settings import Settings

T = TypeVar("T")


def build_model_body(request: ModelCallRequest) -> tuple[str | None, dict[str, Any]]:
    """The provider's name and the Chat Completions body of one model step."""
    spec = request.agent_spec
    call = build_chat_call(
        AgentRequest(agent=spec.type, message="", parameters=spec.parameters, agent_spec=spec),
        request.messages,
    )
    body = call.body
    body.pop("tool_choice", None)
    if request.tools:
        body["tools"] = [build_function(t) for t in request.tools]
        choice = build_tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if request.max_tokens is not None:
        body["max_tokens"] = min(request.max_tokens, body.get("max_tokens") or request.max_tokens)
    return call.provider, body


def build_function(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters or {"type": "object", "properties": {}},
        },
    }


def build_tool_choice(choice: Any) -> Any:
    """``parameters.toolChoice`` as the API takes it: auto, required and none
    as they are, a tool's name as the function to call."""
    if choice is None or choice in ("auto", "required", "none") or isinstance(choice, dict):
        return choice
    return {"type": "function", "function": {"name": str(choice)}}


def build_model_result(
    provider: Provider,
    status: int,
    raw: bytes,
    retry_after: str | None = None,
    time_left: float | None = None,
) -> ModelCallResult:
    data = build_completion(provider, status, raw, retry_after, time_left)
    choice = data["choices"][0]
    message = choice["message"]
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        kept["tool_calls"] = [
            {
                "id": str(c.get("id") or f"call-{i}"),
                "type": "function",
                "function": {
                    "name": str((c.get("function") or {}).get("name", "")),
                    "arguments": _arguments_text((c.get("function") or {}).get("arguments")),
                },
            }
            for i, c in enumerate(calls)
            if isinstance(c, dict)
        ]
    finish = choice.get("finish_reason")
    return ModelCallResult(
        message=kept,
        usage=usage_of(data.get("usage")),
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _arguments_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {})


class StepActivities:
    """The loop's activities on a runner. ``chat`` holds the providers file."""

    def __init__(self, chat: ChatAgent | None = None) -> None:
        self.chat = chat or ChatAgent()

    @classmethod
    def from_settings(cls, settings: Settings) -> StepActivities:
        return cls(ChatAgent(settings.providers_file))

    def all(self) -> list[Callable[..., Any]]:
        return [self.list_tools, self.model_call, self.tool_call]

    @activity.defn(name=LIST_TOOLS_ACTIVITY)
    async def list_tools(self, request: ListToolsRequest) -> ListToolsResult:
        found: list[Tool] = []
        for server in request.servers:
            found.extend(await _beating(tools.list_tools(server)))
        return ListToolsResult(tools=found)

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def model_call(self, request: ModelCallRequest) -> ModelCallResult:
        try:
            name, body = build_model_body(request)
            provider, api_key = self.chat.provider_for(name)
        except AgentFailed as exc:
            raise agent_failure(exc) from None
        return await _beating(request_chat(provider, api_key, body, build_model_result))

    @activity.defn(name=TOOL_CALL_ACTIVITY)
    async def tool_call(self, request: ToolCallRequest) -> ToolCallResult:
        ref = request.execution
        key = f"{ref.namespace}/{ref.name}/{ref.uid}/{request.step}/{request.call_id}"
        return await _beating(tools.call_tool(request.server, request.tool, request.arguments, key))


async def _beating(work: Awaitable[T]) -> T:
    """``work``, heartbeating meanwhile: a runner that dies is noticed within
    the heartbeat timeout, and the step retried elsewhere."""
    info = activity.info()
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 0.0
    every = max(0.1, min(HEARTBEAT_EVERY, timeout / 3)) if timeout > 0 else HEARTBEAT_EVERY

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    beating = asyncio.create_task(beat())
    try:
        return await work
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
