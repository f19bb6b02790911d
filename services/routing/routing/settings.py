"""Routing settings (environment variables of the same name, upper case)."""

from __future__ import annotations

from complaints_shared.settings import ServiceSettings


class RoutingSettings(ServiceSettings):
    service_name: str = "routing"
