import os
import shutil

import pytest

from appliance.testing.demo import DEMO_PHONES, demo_flow_text

from .sipkit import Box, Phone

# Tests never talk to anything but 127.0.0.1 and never read the machine's site settings.
os.environ.pop("CENTRALKA_CONFIG", None)

needs_tools = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")),
    reason="espeak-ng and sox are installed by `make test`",
)


def pytest_collection_modifyitems(config, items):
    """The longest tests first: the parallel workers take tests in this order, and a long one
    picked up last would finish the run alone while the other workers sit idle."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


@pytest.fixture
def staff(workdir):
    """The clinic's staff phones: one process answering as operator, rejestracja, poradnia, 555."""
    phone = Phone(workdir, "staff", answer_after=0.5, say=DEMO_PHONES)
    yield phone
    phone.stop()


@pytest.fixture
def caller(workdir):
    phone = Phone(workdir, "caller", answer_after=-1)
    yield phone
    phone.stop()


@pytest.fixture
def make_box(workdir):
    boxes = []

    def make(
        flow_text=None, *, staff=None, env=None, settings="", raise_at=None, clock_at=None, hang_at=None, fault_args=()
    ):
        if flow_text is None:
            flow_text = demo_flow_text(f"127.0.0.1:{staff.port}")
        box = Box(
            workdir,
            flow_text,
            env=env,
            settings=settings,
            raise_at=raise_at,
            clock_at=clock_at,
            hang_at=hang_at,
            fault_args=fault_args,
        )
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        rc = box.stop()
        log = box.log()
        assert "Traceback" not in log or "InjectedFault" in log, log
        assert "Assertion" not in log, log
        assert rc == 0, f"box exited with {rc}\n{log}"


@pytest.fixture
def box(make_box, staff):
    return make_box(staff=staff)
