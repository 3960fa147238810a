"""agent.runtime: the catalog reads lifecycle's experiments again only when the state moved."""

from __future__ import annotations

from types import SimpleNamespace

from agent.runtime import ServiceCatalog


class CountingService:
    """A stand-in for ExperimentService: a state version and a list() that counts its reads."""

    def __init__(self) -> None:
        self.state = 1
        self.lists = 0
        self.share = 10.0

    def version(self) -> int:
        return self.state

    def list(self) -> list[SimpleNamespace]:
        self.lists += 1
        arm = SimpleNamespace(model="ctr_v42", weight=50.0)
        return [
            SimpleNamespace(
                id="879",
                name="Ranker",
                owner="ads",
                exposure_pct=self.share,
                arms={"control": SimpleNamespace(model="ctr_v41", weight=50.0), "test": arm},
                control="control",
            )
        ]


def test_experiments_are_read_once_per_state_version() -> None:
    service = CountingService()
    catalog = ServiceCatalog(service, "ctr_v41")
    first = catalog.experiments()
    assert catalog.experiments() == first
    assert catalog.views()[0].id == "879"
    assert service.lists == 1
    assert first["879"].traffic_share == 0.1

    # A ramp (any audited change) moves the version: the next read sees the new share.
    service.state, service.share = 2, 25.0
    assert catalog.experiments()["879"].traffic_share == 0.25
    assert service.lists == 2


def test_a_caller_changing_its_copy_does_not_change_the_cache() -> None:
    catalog = ServiceCatalog(CountingService(), None)
    catalog.experiments().clear()
    catalog.views().clear()
    assert list(catalog.experiments()) == ["879"]
    assert len(catalog.views()) == 1
