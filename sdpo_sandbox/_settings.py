"""The sandbox's settings (`SandboxSettings`: one declaration per `SDPO_SANDBOX_*` variable)
and its error (`SandboxError`: it cannot run code, or a setting is bad)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The environment `make setup` builds for untrusted code (numpy, sortedcontainers, ...).
PROJECT_SANDBOX_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sandbox/bin/python3"
Mode = Literal["namespaces", "unsafe-local"]
CgroupMode = Literal["auto", "required", "off"]


class SandboxError(RuntimeError):
    """The sandbox cannot run code (e.g. namespaces unavailable and no opt-in)."""


def _default_python() -> str:
    if PROJECT_SANDBOX_PYTHON.exists():
        return str(PROJECT_SANDBOX_PYTHON)
    return "/usr/bin/python3"


class SandboxSettings(BaseSettings):
    """Operator settings, one declaration per variable: `SDPO_SANDBOX_<FIELD>` (the mode is
    `SDPO_SANDBOX`), or a `.env` file in the working directory; docs/verifiers.md lists them.
    Arguments given in code win over the environment. The service's Settings nests these
    (`settings.sandbox`), and the worker configures its sandbox with them."""

    model_config = SettingsConfigDict(
        env_prefix="SDPO_SANDBOX_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    mode: Mode = Field("namespaces", validation_alias=AliasChoices("mode", "SDPO_SANDBOX"))
    slots: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1)
    uid_base: int = Field(61000, ge=1)  # slots take free uids from [uid_base, + uid_range)
    uid_range: int = Field(1000, ge=1)
    python: str = Field(default_factory=_default_python)  # its prefix is bound read-only
    max_output_bytes: int = Field(8 * 1024 * 1024, ge=1)  # per stream; more: Output Limit
    nproc: int = Field(64, ge=1)
    nofile: int = Field(256, ge=16)
    fsize_mb: int = Field(64, ge=1)
    tmpfs_mb: int = Field(64, ge=1)
    lock_dir: str = "/run/sdpo-sandbox"
    cgroup: CgroupMode = "auto"  # auto: use a cgroup per slot when possible, else warn
    cgroup_root: str | None = None  # cgroup v2 only: parent of the slots' cgroups
    # modules the fork server imports once (each fork pays for them); comma separated
    preload: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("preload", mode="before")
    @classmethod
    def _split_preload(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field -> the environment variable that sets it."""
        prefix = cls.model_config["env_prefix"]
        return {
            name: "SDPO_SANDBOX" if name == "mode" else f"{prefix}{name.upper()}"
            for name in cls.model_fields
        }

    @classmethod
    def from_env(cls) -> SandboxSettings:
        """The environment's (and `.env`'s) settings; SandboxError names a bad variable."""
        try:
            return cls()
        except ValidationError as exc:
            names = cls.env_names()
            bad = "; ".join(
                f"{names.get(str(e['loc'][0]), e['loc'][0])}={e.get('input')!r}: {e['msg']}"
                for e in exc.errors()
            )
            raise SandboxError(bad) from None
