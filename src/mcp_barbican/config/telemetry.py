"""OpenTelemetry traces (`server.telemetry`) and the access log switch."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from mcp_barbican.config.fields import HttpUrl, Model, NonEmptyStr, SecretHeaderValue, check_header_name

__all__ = ["TelemetryConfig"]


class TelemetryConfig(Model):
    """Spans exported over OTLP/HTTP (needs the `otel` extra); absent: no tracing at all.

    `otlp_endpoint` without a path gets `/v1/traces` appended (a collector's base URL); with a
    path it is used as it is. `headers` (an API key, say) are masked wherever the config is shown.
    """

    otlp_endpoint: HttpUrl
    service_name: NonEmptyStr = "mcp-barbican"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    headers: dict[Annotated[str, AfterValidator(check_header_name)], SecretHeaderValue] = Field(default_factory=dict)
