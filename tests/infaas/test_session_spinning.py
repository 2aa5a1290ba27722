"""Sessions never spin-wait between runs: many share a worker's cores (``runtime.session_options``)."""

from __future__ import annotations

import pytest

from infaas.runtime import session_options


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_intra_op_threads_do_not_spin(threads: int) -> None:
    options = session_options(threads)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == threads
