"""The kit's typed application state: what the app factory and its lifespan set up."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette

from service_kit.db import Database
from service_kit.metrics import Metrics
from service_kit.migrate import MigrationTree


@dataclass
class KitState:
    """One per app, on `app.state.kit`; read it through `kit_state(app)`, never by name."""

    trees: tuple[MigrationTree, ...]
    # None when METRICS_PORT is not set: then nothing imports prometheus_client.
    metrics: Metrics | None = None
    tree_heads: dict[str, tuple[str, ...]] = field(init=False)
    tree_graphs: dict[str, dict[str, tuple[str, ...]]] = field(init=False)
    _database: Database | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tree_heads = {tree.name: tree.heads() for tree in self.trees}
        self.tree_graphs = {tree.name: tree.graph() for tree in self.trees}

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("the app has not started: its lifespan opens the database")
        return self._database

    @database.setter
    def database(self, value: Database | None) -> None:
        self._database = value


def kit_state(app: Starlette) -> KitState:
    state: KitState = app.state.kit
    return state
