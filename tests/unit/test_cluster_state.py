import pytest

from pcocc.cluster.state import ALLOWED, ClusterLifecycle, ClusterState, StateError

S = ClusterState


def test_normal_life_records_every_state():
    seen = []
    lc = ClusterLifecycle(on_change=seen.append)
    for s in (S.ALLOCATING, S.BOOTING, S.RUNNING):
        lc.to(s)
    assert lc.finish() is S.DONE
    assert seen == [S.ALLOCATING, S.BOOTING, S.RUNNING, S.TEARING_DOWN, S.DONE]


def test_failure_while_booting_tears_down_then_fails():
    seen = []
    lc = ClusterLifecycle(on_change=seen.append)
    lc.to(S.BOOTING)
    lc.fail("vm1 failed")
    lc.fail("a later error is not kept")
    assert lc.finish() is S.FAILED
    assert lc.error == "vm1 failed"
    assert seen == [S.BOOTING, S.TEARING_DOWN, S.FAILED]


@pytest.mark.parametrize(
    "path",
    [
        (S.RUNNING,),
        (S.BOOTING, S.ALLOCATING),
        (S.BOOTING, S.RUNNING, S.BOOTING),
        (S.BOOTING, S.DONE),
    ],
)
def test_forbidden_transitions(path):
    lc = ClusterLifecycle()
    with pytest.raises(StateError) as exc:
        for s in path:
            lc.to(s)
    assert "cannot go from" in str(exc.value)


def test_final_states_allow_nothing_and_teardown_is_idempotent():
    assert not ALLOWED[S.DONE] and not ALLOWED[S.FAILED]
    lc = ClusterLifecycle()
    lc.to(S.BOOTING)
    lc.tear_down()
    lc.tear_down()
    assert lc.state is S.TEARING_DOWN
    assert lc.finish() is S.DONE
    assert lc.finish() is S.DONE
    with pytest.raises(StateError):
        lc.to(S.TEARING_DOWN)
