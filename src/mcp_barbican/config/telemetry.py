"""OpenTelemetry traces (`server.telemetry`) and the access log switch."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr

from mcp_barbican.config.fields import HttpUrl, Model, NonEmptyStr, check_header_name, no_control_chars

__all__ = ["TelemetryConfig"]


def _check_header_value(value: SecretStr) -> SecretStr:
    no_control_chars(value.get_secret_value())
    return value


class TelemetryConfig(Model):
    """Spans exported over OTLP/HTTP (needs the `otel` extra); absent: no tracing at all.

    `otlp_endpoint` without a path gets `/v1/traces` appended (a collector's base URL); with a
    path it is used as it is. `headers` (an API key, say) are masked wherever the config is shown.
    """

    otlp_endpoint: HttpUrl
    service_name: NonEmptyStr = "mcp-barbican"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    headers: dict[
        Annotated[str, AfterValidator(check_header_name)], Annotated[SecretStr, AfterValidator(_check_header_value)]
    ] = Field(default_factory=dict)
