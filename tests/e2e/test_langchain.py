"""LangChain-style clients: `langchain-openai`'s ChatOpenAI and OpenAIEmbeddings with only
`base_url` and the client key changed, through TruckLLM to fake Anthropic, Gemini and Azure
upstreams — a plain answer, a stream, a bound tool and embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.harness import CLIENT_KEY, Stack

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

# LangChain is imported inside the tests: it takes most of a second to import, which every
# test worker would pay while collecting, though one of them runs these tests.


def chat(stack: Stack, alias: str) -> ChatOpenAI:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=stack.url, api_key=CLIENT_KEY, model=alias, max_retries=0,
                      timeout=10)


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_invoke_and_stream(stack: Stack, alias: str) -> None:
    from langchain_core.messages import HumanMessage

    model = chat(stack, alias)
    answer = await model.ainvoke([HumanMessage("hello there")])
    assert answer.content == "Fake reply to: hello there"
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] > 0
    parts = [chunk.content async for chunk in model.astream("hello again")]
    assert len(parts) > 1 and "".join(str(part) for part in parts) == "Fake reply to: hello again"


@pytest.mark.parametrize("alias", ["claude", "gem", "az"])
async def test_a_bound_tool_comes_back_as_a_tool_call(stack: Stack, alias: str) -> None:
    from langchain_core.tools import tool

    model = chat(stack, alias).bind_tools([tool(get_weather)], tool_choice="get_weather")
    answer = await model.ainvoke("What is the weather in Paris?")
    assert [call["name"] for call in answer.tool_calls] == ["get_weather"]
    assert isinstance(answer.tool_calls[0]["args"], dict)


@pytest.mark.parametrize("alias", ["gem-embed", "az-embed"])
async def test_embeddings(stack: Stack, alias: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain would otherwise fetch tiktoken's
    # encoding files from the internet to split long inputs, which these tests cannot.
    embeddings = OpenAIEmbeddings(base_url=stack.url, api_key=CLIENT_KEY, model=alias,
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = await embeddings.aembed_documents(["a road", "a truck"])
    assert len(vectors) == 2 and len(vectors[0]) > 0 and vectors[0] != vectors[1]
