"""The one place the server turns an integration id into the :class:`~pipeline.app.App`
that acts on it, and the webhook's lifecycle actions on integrations.

Every request is served by ``App(data, integration_id=<the token's integration>)``, so
scoping is the App's (its own index, files and records), not each route's: a token of one
integration reaches nothing of another by construction. An integration that is not
registered has nothing to show: 404.
"""

from __future__ import annotations

import logging
import threading

from ..app import App, adopt_legacy_folders
from ..config import DataSettings
from ..database import IntegrationState, Store
from ..errors import IntegrationChoiceError
from ._runs import RunCoordinator

log = logging.getLogger(__name__)


class Tenancy:
    def __init__(self, data: DataSettings, runs: RunCoordinator) -> None:
        self.data = data
        self.runs = runs
        # The server's own store of the whole database: tokens, the registry, metrics.
        # ``serve`` writes, so a data directory from before is brought forward here.
        self.store = Store(data.database_url)
        self.store.ensure_schema()
        adopt_legacy_folders(data, self.store)
        self._apps: dict[str, App] = {}
        self._lock = threading.Lock()

    def app_for(self, integration_id: str) -> App:
        """The App of one integration, made once and kept (its database and index open
        lazily; a search opens the index's newest state each time)."""
        from ._api import ApiError

        with self._lock:
            app = self._apps.get(integration_id)
        if app is not None:
            return app
        app = App(self.data, integration_id=integration_id)
        try:
            # Resolved now (an unknown id is "not there"), and what requests share opened
            # once here rather than raced for by the first requests' threads.
            app.integration  # noqa: B018
            app.reader  # noqa: B018
            app.index  # noqa: B018
        except IntegrationChoiceError:
            app.close()
            raise ApiError(
                404, "not_found", f"integration {integration_id} is not registered here"
            ) from None
        with self._lock:
            kept = self._apps.setdefault(integration_id, app)
        if kept is not app:
            app.close()
        return kept

    def integration_ids(self) -> list[str]:
        return [i.integration_id for i in self.store.integrations()]

    def forget_app(self, integration_id: str) -> None:
        with self._lock:
            app = self._apps.pop(integration_id, None)
        if app is not None:
            app.close()

    # -- the webhook's lifecycle actions (pipeline.server._webhooks.Lifecycle) -----------------

    def registered(self, integration_id: str) -> bool:
        return self.store.integration(integration_id) is not None

    def request_run(self, integration_id: str) -> str:
        found = self.store.integration(integration_id)
        if found is not None and found.state == IntegrationState.PAUSED:
            log.info("integration %s is paused (%s): no run", integration_id, found.paused_reason)
            return "paused"
        return self.runs.request(integration_id)

    def state_changed(self, integration_id: str, state: str) -> None:
        with App(self.data) as app:
            app.integration_state_changed(integration_id, state)
        log.info("integration %s: Kombo reports it %s", integration_id, state)

    def deleted(self, integration_id: str) -> None:
        with App(self.data) as app:
            app.integration_deleted(integration_id)
        log.warning("integration %s was deleted at Kombo: paused, erased after the grace period",
                    integration_id)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            apps, self._apps = list(self._apps.values()), {}
        for app in apps:
            app.close()
        self.store.close()


__all__ = ["Tenancy"]
