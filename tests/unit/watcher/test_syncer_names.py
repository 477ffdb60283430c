"""The Syncer compares names as the data plane does (issue 18 finding 5: a case swap emptied an upstream)."""

from tests.unit.watcher import test_syncer

fake, make, ups = test_syncer.fake, test_syncer.make, test_syncer.ups   # the fixtures and helper of test_syncer


def requests(fake):
    return [(request.method, request.path) for request in fake.requests if request.method != "GET"]


def test_a_case_swap_posts_the_new_spelling_and_never_deletes_the_old(make, fake):
    """Services Web and web, Web deregistered: POST /upstream/web then DELETE /upstream/Web, which a
    case-insensitive interface applied to what it had just received."""
    syncer, _clock = make()
    assert syncer.sync({"Web": ups("Web", "10.0.0.1:80")}).ok
    fake.clear_requests()
    report = syncer.sync({"web": ups("web", "10.0.0.2:80")})
    assert report.ok and report.posted == ["web"] and report.deleted == []
    assert requests(fake) == [("POST", "/upstream/web")]
    assert not syncer.has_pending and list(syncer.applied) == ["web"]


def test_the_repair_finds_the_applied_upstream_under_the_interfaces_spelling(make, fake):
    syncer, _clock = make()
    assert syncer.sync({"web": ups("web", "10.0.0.1:80")}).ok
    fake.state.upstreams["WEB"] = fake.state.upstreams.pop("web")   # what another spelling's POST leaves
    fake.clear_requests()
    report = syncer.repair()
    assert report.posted == [] and report.deleted == [] and requests(fake) == []
