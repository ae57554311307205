"""The one place the server turns an integration id into the :class:`~pipeline.app.App`
that acts on it (and the webhook's lifecycle actions on integrations).

Every request is served by the App of its token's integration, so scoping is the App's
(one index, one set of records per integration), not each route's.
"""

from __future__ import annotations

import logging
import threading

from ..app import App
from ..config import DataSettings
from ..database import Store
from ._runs import RunCoordinator

log = logging.getLogger(__name__)


class Tenancy:
    def __init__(self, data: DataSettings, runs: RunCoordinator) -> None:
        self.data = data
        self.runs = runs
        # The server's own writing store: tokens (last used) and the registry.
        self.store = Store(data.database_url)
        self.store.ensure_schema()
        self._apps: dict[str, App] = {}
        self._lock = threading.Lock()

    def app_for(self, integration_id: str) -> App:
        """The App of one integration, made once and kept (its database and index open
        lazily; a search opens the index's newest state each time)."""
        self._guard(integration_id)
        with self._lock:
            app = self._apps.get(integration_id)
            if app is None:
                app = App(self.data)
                self._apps[integration_id] = app
            return app

    def _guard(self, integration_id: str) -> None:
        """Until the App acts on one integration of several (the integrations registry),
        a data directory holds one integration's world: a token of any other integration
        sees nothing of it."""
        from ._api import ApiError

        on_record = self.store.integration_ids_on_record()
        if on_record and on_record != {integration_id}:
            raise ApiError(404, "not_found", f"integration {integration_id} has no data here")

    def integration_ids(self) -> list[str]:
        found = self.store.integration_ids_on_record()
        found |= {t.integration_id for t in self.store.api_tokens()}
        return sorted(found)

    def forget_app(self, integration_id: str) -> None:
        with self._lock:
            app = self._apps.pop(integration_id, None)
        if app is not None:
            app.close()

    # -- the webhook's lifecycle actions (pipeline.server._webhooks.Lifecycle) -----------------

    def registered(self, integration_id: str) -> bool:
        return integration_id in self.integration_ids()

    def request_run(self, integration_id: str) -> str:
        return self.runs.request(integration_id)

    def paused(self, integration_id: str, reason: str) -> None:
        log.warning("integration %s: %s (pausing needs the integrations registry)",
                    integration_id, reason)  # fmt: skip

    def resumed(self, integration_id: str) -> None:
        log.info("integration %s is active again at Kombo", integration_id)

    def deleted(self, integration_id: str) -> None:
        log.warning("integration %s was deleted at Kombo (erasure needs the registry)",
                    integration_id)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            apps, self._apps = list(self._apps.values()), {}
        for app in apps:
            app.close()
        self.store.close()


__all__ = ["Tenancy"]
