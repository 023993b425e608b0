"""The agent loop's steps, as activities the runners serve: list the tools,
call the model, call a tool. Each runs one attempt the workflow asked for
(temporal/loop.py keeps #19's attempt policy per step) and is never run
again once it completed.

Each attempt runs as an agent's does (runner/activity.py ``run_attempt``):
heartbeated, and answering a shutdown, a cancellation or a failure with
its checkpoint and what it used, so the workflow tells disruptions from
failures and bills every request. The model is called through the chat
agent's request code (its providers file, keys, proxy and CA, streaming
with the stall timeout, re-sends, failure classes); the tools through the
MCP servers the Agent names (runner/tools.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from temporalio import activity

from agentexec.runner import tools
from agentexec.runner.activity import run_attempt
from agentexec.runner.answers import Completion
from agentexec.runner.api import AgentContext
from agentexec.runner.chat import ChatAgent, build_chat_call
from agentexec.runner.tools import McpServers
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


def build_model_body(request: ModelCallRequest) -> tuple[str | None, dict[str, Any]]:
    """The provider's name and the Chat Completions body of one model step."""
    spec = request.agent_spec
    call = build_chat_call(
        AgentRequest(agent=spec.type, message="", parameters=spec.parameters, agent_spec=spec),
        request.messages,
    )
    body = call.body
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


def build_model_result(answer: Completion) -> ModelCallResult:
    """The step's result: the assistant's message as the conversation keeps it."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = [dict(c) for c in answer.tool_calls]
    return ModelCallResult(message=message, usage=answer.usage, finish_reason=answer.finish_reason)


class StepActivities:
    """The loop's activities on a runner: ``chat`` holds the providers file,
    ``servers`` the MCP servers file (servers configured on the runners)."""

    def __init__(self, chat: ChatAgent | None = None, servers: McpServers | None = None) -> None:
        self.chat = chat or ChatAgent()
        self.servers = servers or McpServers()
        # Paid here, before the runner polls, not on the loop of its first
        # tool call (tools.preload_client says why).
        tools.preload_client()

    @classmethod
    def from_settings(cls, settings: Settings) -> StepActivities:
        chat = ChatAgent(settings.providers_file)
        chat.proxies = settings.proxy
        return cls(chat, McpServers(settings.mcp_servers_file, settings.proxy))

    def all(self) -> list[Callable[..., Any]]:
        return [self.list_tools, self.model_call, self.tool_call]

    @activity.defn(name=LIST_TOOLS_ACTIVITY)
    async def list_tools(self, request: ListToolsRequest) -> ListToolsResult:
        async def work() -> ListToolsResult:
            found: list[Tool] = []
            for server in request.servers:
                found.extend(await tools.list_tools(self.servers.resolve(server)))
            return ListToolsResult(tools=found)

        return await run_attempt(AgentContext(activity.info()), work)

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def model_call(self, request: ModelCallRequest) -> ModelCallResult:
        # An attempt after one that had sent its request (its checkpoint
        # says so) sends it again: billed as a re-sent request.
        ctx = AgentContext(activity.info(), resume_from=request.resume_from)

        async def work() -> ModelCallResult:
            name, body = build_model_body(request)
            return build_model_result(await self.chat.send(name, body))

        return await run_attempt(ctx, work)

    @activity.defn(name=TOOL_CALL_ACTIVITY)
    async def tool_call(self, request: ToolCallRequest) -> ToolCallResult:
        ref = request.execution
        key = f"{ref.namespace}/{ref.name}/{ref.uid}/{request.step}/{request.call_id}"

        async def work() -> ToolCallResult:
            server = self.servers.resolve(request.server)
            return await tools.call_tool(server, request.tool, request.arguments, key)

        return await run_attempt(AgentContext(activity.info()), work)
