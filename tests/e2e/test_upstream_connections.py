"""Upstream connections of a provider that a reload removed are closed once no request on
them can still run (the provider's `timeout_s`), not kept until shutdown."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.fakes.openai_fake import OpenAIFake
from tests.harness import CLIENT_KEY, make_config, make_gateway, wait_until

pytestmark = pytest.mark.asyncio
ADMIN_KEY = "admin-key-for-sessions-test"


def connections_to(port: int) -> int:
    """Established IPv4 connections whose far end is 127.0.0.1:`port` (the gateway's side
    of its connections to the fake upstream), from the kernel's table."""
    count = 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == "01":       # 01: ESTABLISHED
                count += 1
    return count


async def test_a_removed_providers_connections_are_closed(tmp_path: Path,
                                                           openai_fake: OpenAIFake) -> None:
    config = make_config(openai_fake.url, server={"log_level": "error", "watch": False,
                                                  "admin_api_key": ADMIN_KEY})
    config["providers"][1]["timeout_s"] = 0.5
    path = tmp_path / "gateway.yaml"
    fake_port = int(openai_fake.url.split(":")[2].split("/")[0])
    async with make_gateway(config, directory=tmp_path, name=path.name) as gateway, \
            aiohttp.ClientSession(gateway.root) as http:
        chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
        response = await http.post("/v1/chat/completions", json=chat,
                                   headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert response.status == 200
        assert connections_to(fake_port) >= 1                  # kept alive in the pool

        config["providers"] = config["providers"][:1]
        config["models"] = config["models"][:1]
        path.write_text(yaml.safe_dump(config))
        response = await http.post("/admin/v1/reload",
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert (await response.json())["reloaded"] is True
        await wait_until(lambda: connections_to(fake_port) == 0, limit_s=5)

