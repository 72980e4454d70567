"""Everything a request handler needs, built once per server process."""

from __future__ import annotations

from dataclasses import dataclass

from corral.controllers.hosts import HostMonitor
from corral.controllers.services import ImageResolver, ServiceController
from corral.server.channels import LogBroker, Notifier
from corral.api.cache import ListingCache
from corral.server.hostauth import HostAuthCache
from corral.server.overlay import Overlay
from corral.store.store import Store


@dataclass
class ServerState:
    store: Store
    notifier: Notifier
    logs: LogBroker
    services: ServiceController
    monitor: HostMonitor
    images: ImageResolver
    ca_pem: str
    ca_fingerprint: str
    heartbeat_interval: float
    poll_wait: float
    public_url: str
    agent_image: str
    host_auth: HostAuthCache
    listings: ListingCache
    overlay: Overlay

    @classmethod
    def build(cls, store: Store, images: ImageResolver, *, ca_pem: str, ca_fingerprint: str,
              heartbeat_interval: float, down_after: float, public_url: str, agent_image: str,
              reschedule_after: float = 30.0, poll_wait: float = 55.0) -> ServerState:
        notifier = Notifier()
        return cls(
            store=store,
            notifier=notifier,
            logs=LogBroker(notifier),
            services=ServiceController(store, notifier.notify, images, down_after=down_after,
                                       reschedule_after=reschedule_after),
            monitor=HostMonitor(store, down_after),
            images=images,
            ca_pem=ca_pem,
            ca_fingerprint=ca_fingerprint,
            heartbeat_interval=heartbeat_interval,
            poll_wait=poll_wait,
            public_url=public_url,
            agent_image=agent_image,
            host_auth=HostAuthCache(),
            listings=ListingCache(),
            overlay=Overlay(store, notifier.notify),
        )
