"""SQLAlchemy tables: the schema the Alembic migrations create.

Times are stored as float seconds since the epoch: the same on SQLite and
PostgreSQL, and cheap to compare.  Free-form documents (facts, labels, specs)
are JSON columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class HostRow(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(16), default="ready")  # ready | down: what heartbeats say
    availability: Mapped[str] = mapped_column(String(16), default="active")  # active | cordoned | draining
    platform: Mapped[str] = mapped_column(String(64), default="")
    engine_platform: Mapped[str] = mapped_column(String(64), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    token_hash: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    subnet: Mapped[str | None] = mapped_column(String(43), nullable=True, unique=True, index=True)  # its slice of the cluster CIDR
    next_address: Mapped[int] = mapped_column(Integer, default=0)  # where the next instance address is sought
    overlay: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the agent's overlay report


class ServiceRow(Base):
    __tablename__ = "services"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    replicas: Mapped[int] = mapped_column(Integer)
    pending_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the image as resolved from its registry (corral.images.ResolvedImage.to_dict()),
    # pinned for the life of the service so that scaling never mixes versions
    resolution: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    stack: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    # every spec change (an update or a rollback) is a new version; instances record theirs
    version: Mapped[int] = mapped_column(Integer, default=1)
    previous_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # for a rollback
    update_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # rolling update progress


class InstanceRow(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    platform: Mapped[str] = mapped_column(String(64), default="")
    emulated: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    container_id: Mapped[str] = mapped_column(String(80), default="")
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    since: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    spec_version: Mapped[int] = mapped_column(Integer, default=1)
    health: Mapped[str] = mapped_column(String(16), default="")  # "", starting, healthy, unhealthy
    address: Mapped[str] = mapped_column(String(45), default="")  # on its host's overlay subnet; "" without one


class EventRow(Base):
    """The event log: hosts, services and instances; ``corral events`` reads it."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    type: Mapped[str] = mapped_column(String(16))  # host | service | instance
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))  # the host's or service's name
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TokenRow(Base):
    """Admin and join tokens (host credentials live on their host row)."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class SettingRow(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RegistryCredentialRow(Base):
    """Credentials an admin stored for a registry; the API never returns the password."""

    __tablename__ = "registry_credentials"

    # `registry` is taken by SQLAlchemy's declarative base; the column keeps that name
    host: Mapped[str] = mapped_column("registry", String(255), primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    password: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class ClusterStateRow(Base):
    """One row (id 1): the revision of everything placement depends on."""

    __tablename__ = "cluster_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
