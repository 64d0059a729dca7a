"""End to end: an OpenAI Agents SDK (`openai-agents`) agent with a function tool, on its
default Responses API model, against TruckLLM in front of the fake Anthropic, Gemini and
Azure (native Responses API) upstreams: the agent calls the tool, gets its output back
through the next request, and answers.

Turned off in the SDK for the test: tracing (`set_tracing_disabled`), which would
otherwise export spans to api.openai.com."""

from __future__ import annotations

import pytest

from tests.harness import Stack, make_openai_client


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_agent_calls_its_tool_and_answers(stack: Stack, alias: str) -> None:
    # Imported here: the SDK takes a second to import, which every test worker would pay
    # while collecting, though one of them runs these tests.
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    model = OpenAIResponsesModel(model=alias, openai_client=make_openai_client(stack))
    agent = Agent(name="weather", instructions="Answer with the tool.",
                  tools=[function_tool(get_weather)], model=model)
    result = await Runner.run(agent, "What is the weather in Paris?")
    assert "sunny in Paris" in str(result.final_output)
    calls = [item for item in result.new_items if item.type == "tool_call_item"]
    outputs = [item for item in result.new_items if item.type == "tool_call_output_item"]
    assert len(calls) == 1 and len(outputs) == 1
