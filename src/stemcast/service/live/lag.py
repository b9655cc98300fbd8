"""How far each consumer of the runs is behind: every data client, every live writer.

A consumer's lag is measured against what the service has read of the runs (the catalog),
when Prometheus scrapes: the frames it has not had, their bytes, and how long the oldest of
them has been readable. Measured then, it keeps growing while the consumer stalls, whatever
the follower does meanwhile; and a consumer that has gone (a client forgotten, a conversion
ended) is simply not there any more.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from stemcast.service.live.dataserver import DataServer
from stemcast.service.metrics import ConsumerLag

__all__ = ["consumer_lags"]


def consumer_lags(
    data: DataServer, writers: Iterable[tuple[str, Sequence[str], int]]
) -> list[ConsumerLag]:
    """Return the lag of every data client and of every output written live.

    Callable from any thread (a scrape).

    Parameters
    ----------
    data
        The data channel, with its clients and the catalog of series.
    writers
        The live conversions running: the series each converts, its targets, and the frames
        its worker has written (as last reported). The targets of one conversion are written
        together: each gets the conversion's lag, named ``<series>/<target>``.

    Returns
    -------
    list of ConsumerLag
        ``client`` lags named by client id, then ``writer`` lags.
    """
    now = time.monotonic()
    lags = [
        ConsumerLag("client", client, behind.frames, behind.nbytes, behind.seconds(now))
        for client, behind in data.behind().items()
    ]
    for series, targets, written in writers:
        entry = data.catalog.find(series)
        if entry is None:
            continue
        behind = entry.behind(written)
        lags.extend(
            ConsumerLag(
                "writer", f"{series}/{target}", behind.frames, behind.nbytes, behind.seconds(now)
            )
            for target in targets
        )
    return lags
