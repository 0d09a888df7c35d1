from openeas.server.frontends.metrics import _HostSampler


def test_host_metrics_refresh_at_most_once_per_interval():
    slow = _HostSampler(interval_s=3600)
    first = slow.sample()
    assert slow.sample() is first  # within the interval: the same sample
    assert first[1] > 0 and 0 <= first[2] <= first[1] and 0.0 <= first[0] <= 1.0

    fast = _HostSampler(interval_s=0)
    assert fast.sample() is not fast.sample()
