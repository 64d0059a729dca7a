"""Exchange.finish fills the RequestRecord: every field must land in its place."""

from __future__ import annotations

from truckllm.observe.access_log import access_fields
from truckllm.pipeline.record import Exchange, RequestRecord, UpstreamFailure
from truckllm.usage import Usage


def test_finish_puts_every_value_in_its_field() -> None:
    exchange = Exchange("req-1", "POST", "/v1/chat/completions")
    failure = UpstreamFailure("openai", "k0", "429")
    values = dict(key_id="team-a", alias="fast", provider_id="openai", upstream_model="gpt-x",
                  ttft_s=0.5, usage=Usage(1, 2), attempts=2, cost_usd=0.25, error_reason="oops",
                  stream=True, upstream_key_id="k1", cost_lines=(), usage_estimated=True)
    for name, value in values.items():
        setattr(exchange, name, value)
    exchange.upstream_failures.append(failure)
    record = exchange.finish(201)
    assert type(record) is RequestRecord
    assert {name: getattr(record, name) for name in values} == values
    assert (record.request_id, record.method, record.path, record.status) == (
        "req-1", "POST", "/v1/chat/completions", 201)
    assert record.upstream_failures == (failure,)
    assert record.timestamp == exchange.started_wall
    assert record.latency_s >= record.overhead_s >= 0.0


def test_access_line_timings_are_milliseconds_to_the_microsecond() -> None:
    exchange = Exchange("req-2", "POST", "/v1/chat/completions")
    for seconds in (0.0, 0.0006162345, 0.0006165, 1.2345675, 61.0000004, 3599.9999996):
        record = exchange.finish(200)
        record.latency_s, record.overhead_s, record.ttft_s = seconds, seconds / 3, seconds / 2
        fields = access_fields(record)
        for name, exact in (("latency_ms", seconds), ("overhead_ms", seconds / 3),
                            ("ttft_ms", seconds / 2)):
            logged = fields[name]
            assert abs(logged - exact * 1000) <= 0.0005 + 1e-9, (name, seconds, logged)
            assert logged == round(logged, 3)          # no more than three decimals
